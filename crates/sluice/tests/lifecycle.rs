//! `sluice serve` as a process: clean shutdown, restarts, and SIGKILL while uploads stream in.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Served, data_files, wait_for};

/// Half of a 3 MB upload, sent to `served` and taken in hand: the server's temp file exists
/// (more than the 1 MiB it buffers has arrived). The rest is the caller's to send, or not.
fn upload_half_sent(served: &Served, data: &std::path::Path) -> TcpStream {
    let mut s = TcpStream::connect(served.url.trim_start_matches("http://")).unwrap();
    s.write_all(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\nConnection: close\r\n\r\n").unwrap();
    s.write_all(&vec![9u8; 1_500_000]).unwrap();
    wait_for(
        "the upload to reach the server",
        Duration::from_secs(10),
        || {
            !sluice_blob::temp_file_paths(data)
                .unwrap_or_default()
                .is_empty()
        },
    );
    s
}

#[test]
fn sigterm_lets_an_upload_in_flight_finish() {
    let data = tempfile::tempdir().unwrap();
    let mut served = Served::start(data.path(), &[]);
    let mut s = upload_half_sent(&served, data.path());
    served.signal("TERM");
    s.write_all(&vec![9u8; 1_500_000]).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let status = served.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let fileid = serde_json::from_str::<serde_json::Value>(body).unwrap()["fileid"]
        .as_str()
        .unwrap()
        .to_owned();

    let served = Served::start(data.path(), &[]);
    let got = http::blocking_get(&format!("{}/v1/files/{fileid}", served.url));
    assert_eq!(got, vec![9u8; 3_000_000]);
}

/// An upload that outlasts the shutdown grace is cut off: the process exits soon after the
/// grace, the upload leaves nothing behind, and the store is closed cleanly (no crash
/// recovery on the next start).
#[test]
fn sigterm_cuts_off_what_outlasts_the_grace_and_still_closes_cleanly() {
    let data = tempfile::tempdir().unwrap();
    let config = data.path().join("sluice.toml");
    std::fs::write(&config, "shutdown_grace = \"1s\"\n").unwrap();
    let store = data.path().join("d");
    let mut served = Served::start(&store, &["--config", config.to_str().unwrap()]);
    let s = upload_half_sent(&served, &store);
    // The client goes quiet mid-body and never finishes.
    served.signal("TERM");
    let status = served.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
    assert!(store.join("CLEAN").exists(), "the store was closed cleanly");
    assert_eq!(data_files(&store), 0);
    assert!(
        sluice_blob::temp_file_paths(&store)
            .unwrap_or_default()
            .is_empty(),
        "the cut-off upload left a temp file"
    );
    drop(s);
}

/// A second SIGTERM exits at once, whatever is still running.
#[test]
fn a_second_sigterm_exits_at_once() {
    let data = tempfile::tempdir().unwrap();
    let mut served = Served::start(data.path(), &[]);
    let s = upload_half_sent(&served, data.path());
    served.signal("TERM");
    wait_for("the shutdown to begin", Duration::from_secs(10), || {
        served
            .drain_log()
            .iter()
            .any(|l| l.contains("finishing requests in flight"))
    });
    served.signal("TERM");
    // The default grace is 30 s: well before it, the process is gone.
    let status = served.wait_exit(Duration::from_secs(10));
    assert!(!status.success(), "{status:?}");
    drop(s);
}

#[test]
fn sigkill_loses_no_acknowledged_file_and_leaves_no_leftovers() {
    let data = tempfile::tempdir().unwrap();
    let mut served = Served::start(data.path(), &[]);
    let acked: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..6u8 {
        let url = served.url.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                // Mix small photos and larger clips so the kill lands in every phase.
                let len = if i % 5 == 0 {
                    3_000_000
                } else {
                    5_000 + (i as usize * 977) % 200_000
                };
                let body: Vec<u8> = (0..len)
                    .map(|k| (k as u32 ^ i ^ u32::from(w) << 8) as u8)
                    .collect();
                match http::blocking_post(&url, &body) {
                    Some(fileid) => {
                        acked.lock().unwrap().insert(fileid, body);
                    }
                    None => return,
                }
            }
        }));
    }
    wait_for("150 acknowledged uploads", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 150
    });
    served.child.kill().unwrap();
    served.child.wait().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let served = Served::start(data.path(), &[]);
    for (fileid, body) in &acked {
        let got = http::blocking_get(&format!("{}/v1/files/{fileid}", served.url));
        assert!(got == *body, "{fileid} differs after SIGKILL");
    }
    // Once the sweep has run, data files and index agree and no temp file is left: every
    // file the index holds is a live volume record or has its one data file.
    wait_for(
        "no orphan and no temp file left",
        Duration::from_secs(30),
        || {
            let indexed = http::metric(&served.url, "sluice_store_files");
            let in_volumes = http::metric(&served.url, "sluice_volume_records");
            assert!(indexed >= acked.len() as u64);
            assert!(in_volumes > 0, "small files went to volumes");
            indexed == data_files(data.path()) as u64 + in_volumes
                && sluice_blob::temp_file_paths(data.path())
                    .unwrap_or_default()
                    .is_empty()
        },
    );
}

/// Tiny blocking HTTP helpers over std, so the uploader threads need no runtime.
mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn exchange(url: &str, head: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
        let addr = url.trim_start_matches("http://");
        let mut s = TcpStream::connect(addr).ok()?;
        s.write_all(head.as_bytes()).ok()?;
        s.write_all(body).ok()?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).ok()?;
        let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
        let status = std::str::from_utf8(&answer[9..12]).ok()?.parse().ok()?;
        Some((status, answer[split + 4..].to_vec()))
    }

    /// Uploads; `Some(fileid)` only for a 201 (an acknowledged file).
    pub fn blocking_post(url: &str, body: &[u8]) -> Option<String> {
        let head = format!(
            "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let (status, answer) = exchange(url, &head, body)?;
        if status != 201 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&answer).ok()?;
        v["fileid"].as_str().map(str::to_owned)
    }

    pub fn blocking_get(url: &str) -> Vec<u8> {
        let (base, path) = url.trim_start_matches("http://").split_once('/').unwrap();
        let head = format!("GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (status, body) = exchange(base, &head, b"").expect("GET answered");
        assert_eq!(status, 200, "GET {url}");
        body
    }

    pub fn metric(url: &str, name: &str) -> u64 {
        let text = String::from_utf8(blocking_get(&format!("{url}/metrics"))).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} not in /metrics"))
    }
}
