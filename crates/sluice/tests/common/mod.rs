//! Runs the real `sluice` binary as a child process.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A `sluice serve` child on an ephemeral port.
pub struct Served {
    pub child: Child,
    pub url: String,
    /// `rtmp://host:port` when the role listens for RTMP.
    pub rtmp: Option<String>,
    pub log: mpsc::Receiver<String>,
    /// What it logged up to and including its ready line.
    pub startup_log: Vec<String>,
}

impl Served {
    /// `sluice serve` on DATA, listening on an ephemeral port.
    pub fn start(data: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data, extra, &[])
    }

    /// `sluice serve` on DATA with ENV set (secrets, say).
    pub fn start_with_env(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec![
            "serve",
            "--data",
            data.to_str().expect("utf-8 path"),
            "--http",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args, env)
    }

    /// `sluice tracker` on DATA, listening on an ephemeral port; EXTRA flags follow.
    pub fn tracker(data: &Path, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut args = vec![
            "tracker",
            "--http",
            "127.0.0.1:0",
            "--data",
            data.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        Self::spawn(&args, env)
    }

    /// `sluice storage` in GROUP on DATA, on an ephemeral port, heartbeating every 100 ms
    /// to each of TRACKERS (their URLs); EXTRA flags follow.
    pub fn storage(
        data: &Path,
        group: &str,
        trackers: &[&str],
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::storage_at(data, group, trackers, "127.0.0.1:0", extra, env)
    }

    /// [`Self::storage`] listening on LISTEN (a port a test chose, to restart it there).
    pub fn storage_at(
        data: &Path,
        group: &str,
        trackers: &[&str],
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let mut args = vec![
            "storage",
            "--group",
            group,
            "--http",
            listen,
            "--data",
            data.to_str().expect("utf-8 path"),
            "--heartbeat-interval-ms",
            "100",
        ];
        for url in trackers {
            args.extend_from_slice(&["--tracker", url]);
        }
        args.extend_from_slice(extra);
        Self::spawn(&args, env)
    }

    /// Any role of the binary; waits for the `http=` address in its ready line.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sluice serve");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let field = |line: &str, name: &str| {
            line.split(name).nth(1).map(|rest| {
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        };
        let mut startup_log = Vec::new();
        let (url, rtmp) = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .expect("sluice serve logs its address within 30 s");
            startup_log.push(line.clone());
            if let Some(url) = field(&line, "http=") {
                let rtmp = field(&line, "rtmp=").filter(|r| r.starts_with("rtmp://"));
                break (url, rtmp);
            }
        };
        Self {
            child,
            url,
            rtmp,
            log: rx,
            startup_log,
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the child to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut status = None;
        wait_for("the process to exit", timeout, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.expect("exited")
    }

    /// Log lines printed so far.
    pub fn drain_log(&self) -> Vec<String> {
        self.log.try_iter().collect()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How often a test re-checks a condition it waits for.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it holds; panics naming `what` after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Runs curl (a real third-party client) with `args`.
pub fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(args)
        .output()
        .expect("curl is installed (scripts/test.sh installs it)")
}

/// Runs curl, asserts it succeeded, and returns what it printed.
pub fn curl_ok(args: &[&str]) -> Vec<u8> {
    let out = curl(args);
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs the CLI with ENV set, asserts it succeeded, and returns its stdout, trimmed.
pub fn sluice_env_ok(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run sluice");
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .trim()
        .to_owned()
}

/// Runs the CLI, asserts it succeeded, and returns its stdout.
pub fn sluice_ok(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn sluice(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run sluice")
}

pub fn data_files(root: &Path) -> usize {
    sluice_blob::data_file_paths(root).map_or(0, |p| p.len())
}

/// Flips the byte `at` bytes into the first block of file `fileid` as stored under a node's
/// data directory (its data file, or its record in a volume): damage a read must catch.
/// Flipping the same byte again undoes it.
pub fn flip_stored_byte(data_dir: &Path, fileid: &str, at: u64) {
    use std::os::unix::fs::FileExt;
    let key = fileid
        .split('/')
        .nth(1)
        .and_then(|k| sluice_proto::BlobKey::parse(k).ok())
        .expect("a file id");
    let place = sluice_blob::locate(data_dir, &key)
        .unwrap()
        .expect("the node holds the file");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&place.path)
        .unwrap();
    let mut byte = [0u8];
    file.read_exact_at(&mut byte, place.first_block + at)
        .unwrap();
    file.write_all_at(&[byte[0] ^ 0xff], place.first_block + at)
        .unwrap();
}

/// Runs curl with `-D -`, dropping the body; returns the status lines and headers of every
/// answer (redirects included, when `-L` is in `args`).
pub fn curl_head(args: &[&str]) -> String {
    let mut all = vec!["-sS", "-D", "-", "-o", "/dev/null"];
    all.extend_from_slice(args);
    String::from_utf8_lossy(&curl_ok(&all)).into_owned()
}

/// A GET of `url` with curl (redirects followed only when `-L` is in `extra`): the status of
/// the last answer, that answer's head (status line and headers), and the body.
pub fn get(url: &str, extra: &[&str]) -> (String, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("b");
    let mut args = vec!["-sS", "-D", "-", "-o", body.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.push(url);
    let heads = String::from_utf8_lossy(&curl_ok(&args)).into_owned();
    let last = heads
        .rfind("HTTP/1.1 ")
        .map_or(heads.as_str(), |at| &heads[at..]);
    (
        status(last),
        last.to_owned(),
        std::fs::read(body).unwrap_or_default(),
    )
}

/// The body of a GET of `url`, which must succeed (curl `-f`).
pub fn get_ok(url: &str) -> Vec<u8> {
    curl_ok(&["-sS", "-f", url])
}

/// A GET of `url` (which must succeed) whose answer is JSON.
pub fn get_json(url: &str) -> serde_json::Value {
    let body = get_ok(url);
    serde_json::from_slice(&body).unwrap_or_else(|e| {
        panic!(
            "GET {url} is not JSON: {e}: {}",
            String::from_utf8_lossy(&body)
        )
    })
}

/// `name`'s value in `{url}/metrics`; None when the server does not answer or lacks it.
pub fn metric(url: &str, name: &str) -> Option<u64> {
    let out = curl(&["-sS", "-f", &format!("{url}/metrics")]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
}

/// The value of header `name` in the last answer of `head` (after redirects).
pub fn header(head: &str, name: &str) -> Option<String> {
    let last = head.rsplit("HTTP/1.1 ").next()?;
    last.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// The status code of the last answer of `head` (after redirects).
pub fn status(head: &str) -> String {
    head.rsplit("HTTP/1.1 ")
        .next()
        .unwrap_or_default()
        .chars()
        .take(3)
        .collect()
}

/// ffmpeg publishing a generated H.264 + AAC stream (320x240, 25 fps, a keyframe a second) in
/// real time for `secs` seconds.
pub fn publish(url: &str, secs: u32) -> Child {
    Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
        ])
        .args(["-g", "25", "-pix_fmt", "yuv420p", "-c:a", "aac"])
        .args(["-t", &secs.to_string(), "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg is installed (scripts/test.sh installs it)")
}
