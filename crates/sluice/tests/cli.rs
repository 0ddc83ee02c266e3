//! The CLI against a real `sluice serve` child process.

mod common;

use common::{Served, curl, sluice, sluice_ok};

fn stderr_line(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    assert_eq!(text.lines().count(), 1, "errors are one line: {text:?}");
    text
}

#[test]
fn upload_download_stat_delete() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &[]);
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a.jpg");
    let b = work.path().join("b.mp4");
    std::fs::write(&a, vec![1u8; 10_000]).unwrap();
    std::fs::write(&b, (0..300_000u32).map(|i| i as u8).collect::<Vec<_>>()).unwrap();

    let stdout = sluice_ok(&[
        "upload",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--server",
        &served.url,
    ]);
    let ids: Vec<&str> = stdout.lines().collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.iter().all(|id| id.starts_with("g1/")));

    // Argument order: the second id is the 300 KB video.
    let got = work.path().join("got.mp4");
    let out = sluice(&[
        "download",
        ids[1],
        "--server",
        &served.url,
        "-o",
        got.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(&got).unwrap(), std::fs::read(&b).unwrap());

    let out = sluice(&["download", ids[0], "--server", &served.url, "-o", "-"]);
    assert_eq!(out.stdout, vec![1u8; 10_000]);

    let out = sluice(&["stat", ids[0], "--server", &served.url]);
    assert!(out.status.success());
    let stat: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stat["size"], 10_000);
    assert_eq!(stat["content_type"], "image/jpeg");

    let out = sluice(&["delete", ids[0], "--server", &served.url]);
    assert!(out.status.success());
    let out = sluice(&["stat", ids[0], "--server", &served.url]);
    assert!(!out.status.success());
    assert!(stderr_line(&out).contains("404"));
}

#[test]
fn errors_are_one_line_and_nonzero() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &[]);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "download",
                "g1/aaaaaaaaaaaaaaaaaaaaaaaaaa",
                "--server",
                &served.url,
                "-o",
                "/tmp/never-written",
            ],
            "404",
        ),
        (
            vec!["download", "not-an-id", "--server", &served.url],
            "file id",
        ),
        (
            vec!["upload", "/definitely/missing.jpg", "--server", &served.url],
            "missing.jpg",
        ),
        (
            vec!["upload", "/etc/hostname", "--server", "http://127.0.0.1:1"],
            "127.0.0.1:1",
        ),
        (
            vec![
                "stat",
                "g1/aaaaaaaaaaaaaaaaaaaaaaaaaa",
                "--server",
                "ftp://x",
            ],
            "bad server URL",
        ),
        (
            vec![
                "delete",
                "g1/aaaaaaaaaaaaaaaaaaaaaaaaaa",
                "--server",
                &served.url,
            ],
            "404",
        ),
        (
            vec!["bench", "upload", "--server", &served.url, "-c", "0"],
            "-c",
        ),
    ];
    for (args, want) in cases {
        let out = sluice(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        let line = stderr_line(&out);
        assert!(line.starts_with("sluice: "), "{line}");
        assert!(line.contains(want), "{args:?}: {line}");
    }
    assert!(!std::path::Path::new("/tmp/never-written").exists());
    assert!(!std::path::Path::new("/tmp/never-written.part").exists());
}

#[test]
fn bench_reports_rates_and_percentiles() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &[]);
    for mode in ["upload", "download"] {
        let out = sluice(&[
            "bench",
            mode,
            "--server",
            &served.url,
            "-c",
            "4",
            "-n",
            "200",
            "--size",
            "5KB",
            "--files",
            "20",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(r["completed"], 200);
        assert_eq!(r["failed"], 0);
        assert!(r["requests_per_sec"].as_f64().unwrap() > 0.0);
        assert!(r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap());
    }
    let out = sluice(&[
        "bench",
        "upload",
        "--server",
        &served.url,
        "-n",
        "10",
        "--size",
        "1KiB",
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["requests/s", "MB/s", "p50", "p90", "p99"] {
        assert!(text.contains(want), "{text}");
    }
}

#[test]
fn serve_answers_cluster_and_assign_for_its_one_node() {
    let data = tempfile::tempdir().unwrap();
    let served = Served::start(data.path(), &["--heartbeat-interval-ms", "50"]);
    let get = |path: &str| {
        let out = curl(&["-sS", "-f", &format!("{}{path}", served.url)]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    common::wait_for(
        "the embedded node to register",
        std::time::Duration::from_secs(10),
        || get("/v1/cluster").is_some_and(|v| v["groups"][0]["nodes"][0]["state"] == "active"),
    );
    let view = get("/v1/cluster").unwrap();
    assert_eq!(view["groups"][0]["name"], "g1");
    assert_eq!(view["groups"][0]["nodes"][0]["url"], served.url);
    let assign = get("/v1/assign").unwrap();
    assert_eq!(assign["url"], format!("{}/v1/files", served.url));
}

/// The README's Python signer, run for real: an IM backend copying it gets the same links.
const PYTHON_SIGNER: &str = r#"
import base64, hashlib, hmac, sys

def sign(secret: str, path: str, expires: int) -> str:
    mac = hmac.new(secret.encode(), f"{path}?expires={expires}".encode(), hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    return f"{path}?expires={expires}&sig={sig}"

print(sign(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"#;

#[test]
fn sign_matches_the_readme_python_and_needs_its_secret() {
    let path = "/v1/files/g1/aaaaaaaaaaaaaaaaaaaaaaaaaa";
    let out = std::process::Command::new(common::BIN)
        .args(["sign", path, "--ttl", "600"])
        .env("SLUICE_URL_SECRET", "first,second")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let expires = ours
        .split("expires=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap();
    let python = std::process::Command::new("python3")
        .args(["-c", PYTHON_SIGNER, "first", path, expires])
        .output()
        .expect("python3 runs");
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    assert_eq!(String::from_utf8(python.stdout).unwrap().trim(), ours);

    let out = sluice(&["sign", path, "--ttl", "60"]);
    assert!(!out.status.success());
    assert!(stderr_line(&out).contains("SLUICE_URL_SECRET"));
    let out = sluice(&["sign", "no-slash", "--ttl", "60"]);
    assert!(!out.status.success());
}

#[test]
fn with_a_url_secret_the_cli_signs_its_own_reads() {
    let data = tempfile::tempdir().unwrap();
    let secret = [("SLUICE_URL_SECRET", "cli-url-s3cret")];
    let served = Served::start_with_env(data.path(), &[], &secret);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("v.ogg");
    std::fs::write(&file, b"private voice note").unwrap();
    let id = sluice_ok(&["upload", file.to_str().unwrap(), "--server", &served.url])
        .trim()
        .to_owned();
    let got = work.path().join("got");
    let download = [
        "download",
        &id,
        "--server",
        &served.url,
        "-o",
        got.to_str().unwrap(),
    ];
    // Without the secret the server refuses (403); with it the CLI signs and reads.
    let out = sluice(&download);
    assert!(!out.status.success());
    assert!(stderr_line(&out).contains("403"));
    common::sluice_env_ok(&download, &secret);
    assert_eq!(std::fs::read(&got).unwrap(), b"private voice note");
    let stat = common::sluice_env_ok(&["stat", &id, "--server", &served.url], &secret);
    assert!(
        stat.contains("\"size\":18") || stat.contains("\"size\": 18"),
        "{stat}"
    );
}

/// A config file for every role at once: each role reads its section, flags win over it, and
/// a misspelt key stops the role with one line naming it.
#[test]
fn every_role_takes_its_section_of_one_config_file_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let config = dir.path().join("sluice.toml");
    // Port 1 cannot be bound here: a role that starts took the flag's address instead.
    std::fs::write(
        &config,
        format!(
            "[tracker]\nhttp = \"127.0.0.1:0\"\ndata = {tracker:?}\noffline_after = \"1s\"\n\
             [edge]\norigin = \"http://127.0.0.1:9\"\nhttp = \"127.0.0.1:1\"\ncache = {cache:?}\n\
             [live]\nhttp = \"127.0.0.1:0\"\nrtmp = \"127.0.0.1:0\"\n",
            tracker = path("tracker"),
            cache = path("cache"),
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let open = ("SLUICE_CLUSTER_SECRET", "s3cret");

    let tracker = Served::spawn(&["tracker", "--config", config], &[open]);
    assert!(std::path::Path::new(&path("tracker")).is_dir());
    let edge = Served::spawn(
        &["edge", "--config", config, "--http", "127.0.0.1:0"],
        &[open],
    );
    let live = Served::spawn(&["live", "--config", config], &[open]);
    assert!(live.rtmp.is_some());
    for role in [&tracker, &edge, &live] {
        let health = curl(&["-sf", &format!("{}/healthz", role.url)]);
        assert!(health.status.success(), "{}", role.url);
    }

    // `sluice storage` finds its trackers in `[storage]`.
    let node_config = dir.path().join("node.toml");
    std::fs::write(
        &node_config,
        format!(
            "group = \"g7\"\n[storage]\ntrackers = [{:?}]\nheartbeat_interval = \"100ms\"\n",
            tracker.url
        ),
    )
    .unwrap();
    let _node = Served::spawn(
        &[
            "storage",
            "--config",
            node_config.to_str().unwrap(),
            "--data",
            &path("node"),
            "--http",
            "127.0.0.1:0",
        ],
        &[open],
    );
    common::wait_for(
        "the node to register",
        std::time::Duration::from_secs(20),
        || {
            common::get_json(&format!("{}/v1/cluster", tracker.url))
                .to_string()
                .contains("\"g7\"")
        },
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[edge]\norigin = \"http://x\"\ncache_sise = \"1GiB\"\n",
    )
    .unwrap();
    for role in ["edge", "tracker", "live", "serve"] {
        let out = sluice(&[role, "--config", bad.to_str().unwrap()]);
        assert!(!out.status.success(), "{role} started with a misspelt key");
        let line = stderr_line(&out);
        assert!(line.contains("cache_sise"), "{role}: {line}");
    }
}
