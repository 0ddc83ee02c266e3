//! Trackers and storage nodes as separate processes: registration, heartbeats, offline
//! detection, placement over groups, redirects, and the cluster secret.

mod common;

use std::time::Duration;

use common::{Served, curl, get, get_json, sluice, sluice_ok, wait_for};

const WAIT: Duration = Duration::from_secs(20);

const SECRET: &str = "s3cret-for-tests";

fn tracker(data: &std::path::Path) -> Served {
    Served::tracker(
        data,
        &["--offline-after-ms", "1000"],
        &[("SLUICE_CLUSTER_SECRET", SECRET)],
    )
}

fn storage(
    data: &std::path::Path,
    group: &str,
    trackers: &[&Served],
    secret: Option<&str>,
) -> Served {
    let urls: Vec<&str> = trackers.iter().map(|t| t.url.as_str()).collect();
    let env: Vec<(&str, &str)> = secret
        .map(|s| ("SLUICE_CLUSTER_SECRET", s))
        .into_iter()
        .collect();
    Served::storage(data, group, &urls, &[], &env)
}

/// Node states by node URL, as a tracker sees them.
fn states(tracker: &Served) -> Vec<(String, String, String)> {
    let view = get_json(&format!("{}/v1/cluster", tracker.url));
    let mut out = Vec::new();
    for g in view["groups"].as_array().unwrap() {
        for n in g["nodes"].as_array().unwrap() {
            out.push((
                g["name"].as_str().unwrap().to_owned(),
                n["url"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn nodes_register_with_every_tracker_and_go_offline_when_killed() {
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let t1 = tracker(dirs[0].path());
    let t2 = tracker(dirs[1].path());
    let g1 = storage(dirs[2].path(), "g1", &[&t1, &t2], Some(SECRET));
    let mut g2 = storage(dirs[3].path(), "g2", &[&t1, &t2], Some(SECRET));
    // A node with a wrong secret is refused: it never appears.
    let stranger = storage(dirs[4].path(), "g3", &[&t1, &t2], Some("not-the-secret"));

    for t in [&t1, &t2] {
        wait_for("both nodes active on every tracker", WAIT, || {
            states(t)
                == vec![
                    ("g1".into(), g1.url.clone(), "active".into()),
                    ("g2".into(), g2.url.clone(), "active".into()),
                ]
        });
    }
    assert!(!states(&t1).iter().any(|(_, url, _)| *url == stranger.url));

    // Placement spreads uploads over the two groups (equal free space: a tie, taken in turn).
    let groups: std::collections::BTreeSet<String> = (0..6)
        .map(|_| {
            get_json(&format!("{}/v1/assign", t1.url))["group"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(groups.len(), 2, "{groups:?}");

    // An upload through a tracker (307 to a node) and a read through the other (302).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clip.mp4");
    std::fs::write(&file, vec![5u8; 100_000]).unwrap();
    let data = format!("@{}", file.display());
    let out = curl(&[
        "-sS",
        "-f",
        "-L",
        "--post301",
        "--post302",
        "--post303",
        "--data-binary",
        &data,
        &format!("{}/v1/files", t1.url),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fileid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["fileid"]
        .as_str()
        .unwrap()
        .to_owned();
    let back = curl(&["-sS", "-f", "-L", &format!("{}/v1/files/{fileid}", t2.url)]);
    assert_eq!(back.stdout, vec![5u8; 100_000]);

    // The table.
    let table = sluice_ok(&[
        "cluster",
        "--tracker",
        "http://127.0.0.1:1",
        "--tracker",
        &t1.url,
    ]);
    assert!(
        table.contains("g1")
            && table.contains("g2")
            && table.contains("active")
            && table.contains("LAG"),
        "{table}"
    );

    // Kill g2: both trackers mark it offline, and no upload is placed there any more.
    g2.child.kill().unwrap();
    g2.child.wait().unwrap();
    for t in [&t1, &t2] {
        wait_for("g2 offline", WAIT, || {
            states(t)
                .iter()
                .any(|(g, _, s)| g == "g2" && s == "offline")
        });
    }
    for _ in 0..6 {
        assert_eq!(get_json(&format!("{}/v1/assign", t1.url))["group"], "g1");
    }
    drop(g1);
}

#[test]
fn heartbeats_without_the_secret_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let t = tracker(dir.path());
    let body = r#"{"node_id":"x","group":"g1","url":"http://127.0.0.1:9","state":"active","files":0,"bytes":0,"free_bytes":0,"writable":true}"#;
    let url = format!("{}/v1/cluster/heartbeat", t.url);
    let status = |secret: Option<&str>| {
        let header = secret.map(|s| format!("sluice-cluster-secret: {s}"));
        let mut args = vec![
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ];
        if let Some(h) = &header {
            args.extend(["-H", h.as_str()]);
        }
        args.push(&url);
        String::from_utf8(curl(&args).stdout).unwrap()
    };
    assert_eq!(status(None), "403");
    assert_eq!(status(Some("wrong")), "403");
    // The secret alone is not enough: nothing at that URL says it is node x.
    assert_eq!(status(Some(SECRET)), "409");
    assert!(states(&t).is_empty());
}

/// Asks the tracker where to upload and sends it there, asking again when the node chosen is
/// unreachable (a node just killed looks alive to the tracker until it misses heartbeats).
fn upload_via(tracker: &Served, body: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, body).unwrap();
    let mut fileid = None;
    wait_for("an upload to succeed", WAIT, || {
        // 503 while no node of any group is writable (a moment after a kill): ask again.
        let assign = curl(&["-sS", "-f", &format!("{}/v1/assign", tracker.url)]);
        let Ok(assign) = serde_json::from_slice::<serde_json::Value>(&assign.stdout) else {
            return false;
        };
        let out = curl(&[
            "-sS",
            "-f",
            "--data-binary",
            &format!("@{}", file.display()),
            assign["url"].as_str().unwrap_or_default(),
        ]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            fileid = v["fileid"].as_str().map(str::to_owned);
        }
        fileid.is_some()
    });
    fileid.unwrap()
}

/// The status and body of a GET straight to one node.
fn get_from(node: &Served, fileid: &str) -> (String, Vec<u8>) {
    let (status, _, body) = get(&format!("{}/v1/files/{fileid}", node.url), &[]);
    (status, body)
}

fn node_files(node: &Served) -> u64 {
    metric(node, "sluice_store_files ")
}

#[test]
fn a_group_replicates_catches_up_and_forgets_deletes() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = tracker(dirs[0].path());
    let a = storage(dirs[1].path(), "g1", &[&t], Some(SECRET));
    let mut b = storage(dirs[2].path(), "g1", &[&t], Some(SECRET));
    wait_for("a and b active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });

    // Read-after-write from either node, at once.
    let body = |i: u32| -> Vec<u8> { (0..20_000 + i * 1000).map(|k| (k ^ i) as u8).collect() };
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = upload_via(&t, &body(i));
        for node in [&a, &b] {
            assert_eq!(
                get_from(node, &id),
                ("200".into(), body(i)),
                "{id} on {}",
                node.url
            );
        }
        ids.push(id);
    }

    // b goes down hard; uploads go on (one copy is the minimum) and a delete happens.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    for i in 10..15 {
        ids.push(upload_via(&t, &body(i)));
    }
    let deleted = ids.remove(0);
    let out = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "DELETE",
        &format!("{}/v1/files/{deleted}", a.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "204");

    // b returns on its old data directory, catches up by itself, and says so.
    let b = storage(dirs[2].path(), "g1", &[&t], Some(SECRET));
    wait_for("b caught up", WAIT, || {
        node_files(&b) == 14 && states(&t).iter().all(|(_, _, s)| s == "active")
    });
    for (i, id) in ids.iter().enumerate() {
        let i = i as u32 + 1;
        assert_eq!(
            get_from(&b, id),
            ("200".into(), body(i)),
            "{id} on the returned node"
        );
    }
    assert_eq!(
        get_from(&b, &deleted).0,
        "404",
        "a delete made while b was down reached it"
    );

    // A new node joins the group and receives every file.
    let c = storage(dirs[3].path(), "g1", &[&t], Some(SECRET));
    wait_for("c filled in", WAIT, || node_files(&c) == 14);
    assert_eq!(get_from(&c, &deleted).0, "404");
    drop(a);
}

#[test]
fn the_cli_survives_a_dead_tracker_and_a_node_killed_mid_uploads() {
    let dirs: Vec<tempfile::TempDir> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut t1 = tracker(dirs[0].path());
    let t2 = tracker(dirs[1].path());
    let mut a = storage(dirs[2].path(), "g1", &[&t1, &t2], Some(SECRET));
    let b = storage(dirs[3].path(), "g1", &[&t1, &t2], Some(SECRET));
    let c = storage(dirs[4].path(), "g2", &[&t1, &t2], Some(SECRET));
    for t in [&t1, &t2] {
        wait_for("three active nodes", WAIT, || {
            states(t).iter().filter(|(_, _, s)| s == "active").count() == 3
        });
    }
    let work = tempfile::tempdir().unwrap();
    let upload = |i: u32, trackers: &[&Served]| -> Option<(String, Vec<u8>)> {
        let body: Vec<u8> = (0..30_000u32).map(|k| ((k * 7) ^ i) as u8).collect();
        let path = work.path().join(format!("f{i}.bin"));
        std::fs::write(&path, &body).unwrap();
        let mut args = vec!["upload".to_string(), path.display().to_string()];
        for t in trackers {
            args.extend(["--tracker".to_string(), t.url.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = sluice(&args);
        out.status.success().then(|| {
            (
                String::from_utf8(out.stdout).unwrap().trim().to_owned(),
                body,
            )
        })
    };

    // Kill node a while uploads stream in: every acknowledged upload must stay readable.
    let mut acked = Vec::new();
    for i in 0..40 {
        if i == 15 {
            a.child.kill().unwrap();
            a.child.wait().unwrap();
        }
        // The CLI retries on another node; with a killed node it must still succeed.
        let (id, body) = upload(i, &[&t1, &t2]).expect("upload acknowledged despite a dead node");
        acked.push((id, body));
    }

    // Kill tracker 1: the CLI, told t1 first, falls over to t2 for uploads and downloads.
    t1.child.kill().unwrap();
    t1.child.wait().unwrap();
    acked.push(upload(99, &[&t1, &t2]).expect("upload with the first tracker dead"));
    for (id, body) in &acked {
        let out_path = work.path().join("out.bin");
        let out = sluice(&[
            "download",
            id,
            "--tracker",
            &t1.url,
            "--tracker",
            &t2.url,
            "-o",
            out_path.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(&std::fs::read(&out_path).unwrap(), body, "{id}");
    }

    // Node a comes back and catches up with everything g1 took while it was away.
    let a = storage(dirs[2].path(), "g1", &[&t2], Some(SECRET));
    wait_for("a caught up with b", WAIT, || {
        node_files(&a) == node_files(&b) && node_files(&b) > 0
    });
    drop(c);
}

/// `name` in a node's metrics; 0 while the node does not say.
fn metric(node: &Served, name: &str) -> u64 {
    common::metric(&node.url, name).unwrap_or(0)
}

/// Flips one byte of a file's data on a node's disk.
fn damage(data_dir: &std::path::Path, fileid: &str) {
    common::flip_stored_byte(data_dir, fileid, 84);
}

#[test]
fn damaged_copies_are_repaired_from_a_peer_on_read_and_by_the_scrub() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = tracker(dirs[0].path());
    let a = storage(dirs[1].path(), "g1", &[&t], Some(SECRET));
    let b = storage_with(
        dirs[2].path(),
        &t,
        "scrub_interval_secs = 1\nscrub_bytes_per_sec = \"1GiB\"\n",
    );
    wait_for("a and b active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });
    let one: Vec<u8> = (0..20_000u32).map(|k| k as u8).collect();
    let two: Vec<u8> = (0..30_000u32).map(|k| (k / 3) as u8).collect();
    let id1 = upload_via(&t, &one);
    let id2 = upload_via(&t, &two);
    wait_for("both files on b", WAIT, || node_files(&b) == 2);

    // Damage met on read: repaired from a, and served whole.
    damage(dirs[2].path(), &id1);
    assert_eq!(get_from(&b, &id1), ("200".into(), one));
    assert!(metric(&b, "sluice_repairs_total") >= 1);

    // Damage nobody reads: the scrub finds and repairs it.
    damage(dirs[2].path(), &id2);
    wait_for("the scrub to repair the second file", WAIT, || {
        metric(&b, "sluice_scrub_damaged_total") >= 1 && metric(&b, "sluice_repairs_total") >= 2
    });
    drop(a); // b must now serve it from its own, repaired copy
    assert_eq!(get_from(&b, &id2), ("200".into(), two));
}

#[test]
fn a_node_is_retired_for_good_once_its_files_live_elsewhere() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = tracker(dirs[0].path());
    let a = storage(dirs[1].path(), "g1", &[&t], Some(SECRET));
    let mut b = storage(dirs[2].path(), "g1", &[&t], Some(SECRET));
    wait_for("a and b active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });
    for i in 0..3u8 {
        upload_via(&t, &[i; 1000]);
    }
    wait_for("a holds every file", WAIT, || {
        node_files(&a) == 3 && node_files(&b) == 3
    });
    let view = get_json(&format!("{}/v1/cluster", t.url));
    let b_id = view["groups"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["url"] == b.url.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let remove = |extra: &[&str]| {
        let mut args = vec!["cluster", "remove", &b_id, "--tracker", &t.url];
        args.extend_from_slice(extra);
        std::process::Command::new(common::BIN)
            .args(&args)
            .env("SLUICE_CLUSTER_SECRET", SECRET)
            .output()
            .unwrap()
    };
    let out = remove(&[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("still up"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    b.child.kill().unwrap();
    b.child.wait().unwrap();
    // Once the tracker sees b down and a (with every file) active, the removal goes through.
    wait_for("b retired", WAIT, || remove(&[]).status.success());
    assert!(states(&t).iter().all(|(_, url, _)| *url != b.url));

    // It stays out even when it comes back.
    let b = storage(dirs[2].path(), "g1", &[&t], Some(SECRET));
    wait_for("b refused", WAIT, || {
        b.drain_log().iter().any(|l| l.contains("retired"))
    });
    assert_eq!(states(&t).len(), 1);
}

/// A storage node of g1 with extra config lines.
fn storage_with(data: &std::path::Path, tracker: &Served, config_lines: &str) -> Served {
    let config = data.with_extension("toml");
    std::fs::write(&config, config_lines).unwrap();
    Served::storage(
        data,
        "g1",
        &[&tracker.url],
        &["--config", config.to_str().unwrap()],
        &[("SLUICE_CLUSTER_SECRET", SECRET)],
    )
}

#[test]
fn a_frozen_peer_does_not_stall_uploads_and_too_few_copies_are_refused() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = tracker(dirs[0].path());
    let a = storage_with(
        &dirs[1].path().join("a"),
        &t,
        "replication_timeout_ms = 300\n",
    );
    let b = storage(dirs[2].path(), "g1", &[&t], Some(SECRET));
    wait_for("a and b active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });

    // b stops answering without closing anything (SIGSTOP): a acknowledges after its
    // replication timeout with its own copy, and b, once thawed, catches up.
    b.signal("STOP");
    let out = curl(&[
        "-sS",
        "-f",
        "--data-binary",
        "frozen-peer",
        &format!("{}/v1/files", a.url),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["fileid"]
        .as_str()
        .unwrap()
        .to_owned();
    b.signal("CONT");
    wait_for("b to catch up", WAIT, || {
        get_from(&b, &id) == ("200".to_string(), b"frozen-peer".to_vec())
    });

    // A node whose write rule asks for more copies than its group can make refuses, storing
    // nothing (g1 has three nodes now; it wants four).
    let lone = storage_with(&dirs[0].path().join("lone"), &t, "min_copies = 4\n");
    wait_for("lone active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 3
    });
    let before = node_files(&lone);
    let out = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-binary",
        "x",
        &format!("{}/v1/files", lone.url),
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "503");
    assert_eq!(node_files(&lone), before);
    drop(a);
}

#[test]
fn trackers_enforce_the_same_access_rules_as_nodes() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [
        ("SLUICE_CLUSTER_SECRET", SECRET),
        ("SLUICE_URL_SECRET", "url-key"),
        ("SLUICE_API_TOKEN", "api-token"),
    ];
    let t = Served::tracker(dirs[0].path(), &[], &env);
    let node = Served::storage(dirs[1].path(), "g1", &[&t.url], &[], &env);
    wait_for("node active", WAIT, || {
        states(&t).iter().any(|(_, _, s)| s == "active")
    });
    let code = |args: &[&str]| {
        let mut all = vec!["-sS", "-o", "/dev/null", "-w", "%{http_code}"];
        all.extend_from_slice(args);
        String::from_utf8(curl(&all).stdout).unwrap()
    };
    // Writes through the tracker need the token too (no bypass by going round the node). curl
    // must be told to keep the token across the redirect to another host.
    assert_eq!(
        code(&["--data-binary", "x", &format!("{}/v1/files", t.url)]),
        "401"
    );
    let out = curl(&[
        "-sS",
        "-f",
        "--location-trusted",
        "--post301",
        "--post302",
        "--post303",
        "-H",
        "Authorization: Bearer api-token",
        "--data-binary",
        "hello",
        &format!("{}/v1/files", t.url),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fileid = serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["fileid"]
        .as_str()
        .unwrap()
        .to_owned();
    // Reads through the tracker need a signed link, which survives the redirect.
    let path = format!("/v1/files/{fileid}");
    assert_eq!(code(&[&format!("{}{path}", t.url)]), "403");
    let signed = std::process::Command::new(common::BIN)
        .args(["sign", &path, "--ttl", "60"])
        .env("SLUICE_URL_SECRET", "url-key")
        .output()
        .unwrap();
    let signed = String::from_utf8(signed.stdout).unwrap().trim().to_owned();
    let body = curl(&["-sS", "-f", "-L", &format!("{}{signed}", t.url)]);
    assert_eq!(body.stdout, b"hello");
    drop(node);
}

/// Small uploads arriving together reach the peer in batches (one request for many files), and
/// each 201 still means the file is on both nodes: the peer serves it the moment the upload
/// is acknowledged.
#[test]
fn concurrent_small_uploads_reach_the_peer_in_batches_and_every_201_is_on_both() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = tracker(dirs[0].path());
    let a = storage(dirs[1].path(), "g1", &[&t], Some(SECRET));
    let b = storage(dirs[2].path(), "g1", &[&t], Some(SECRET));
    wait_for("a and b active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });
    let files = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16u32)
        .map(|w| {
            let (a_url, b_url, files) = (a.url.clone(), b.url.clone(), files.clone());
            std::thread::spawn(move || {
                let dir = tempfile::tempdir().unwrap();
                for i in 0..12u32 {
                    let body: Vec<u8> = (0..5000u32)
                        .map(|k| ((k * 7) ^ (w << 4) ^ i) as u8)
                        .collect();
                    let file = dir.path().join(format!("{i}"));
                    std::fs::write(&file, &body).unwrap();
                    let out = curl(&[
                        "-sS",
                        "-f",
                        "--data-binary",
                        &format!("@{}", file.display()),
                        &format!("{a_url}/v1/files"),
                    ]);
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                    let id = v["fileid"].as_str().unwrap().to_owned();
                    // b's own copy (the public route would fetch it from a).
                    let (status, _, got) = get(
                        &format!("{b_url}/v1/internal/blobs/{id}"),
                        &["-H", &format!("sluice-cluster-secret: {SECRET}")],
                    );
                    assert_eq!(status, "200", "{id} acknowledged but not on the peer");
                    assert!(got == body, "{id} differs on the peer");
                    files.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(files.lock().unwrap().len(), 192);
    assert_eq!(node_files(&b), 192);
    let batches = metric(
        &b,
        "sluice_http_requests_total{route=\"/v1/internal/replicas\",method=\"POST\",status=\"200\"}",
    );
    let singles = metric(
        &b,
        "sluice_http_requests_total{route=\"/v1/internal/blobs/{*fileid}\",method=\"PUT\",status=\"201\"}",
    );
    assert_eq!(singles, 0, "small replicas went one by one");
    assert!(
        (1..192).contains(&batches),
        "{batches} batch requests for 192 replicas"
    );
    // And the peer stored them in shared volume appends.
    let appends = metric(&b, "sluice_volume_batches_total");
    assert!(appends < 192, "{appends} appends for 192 replicas");
}

/// `n` concurrent uploads of `size` bytes to `url`: each one's status and seconds taken.
fn concurrent_uploads(url: &str, n: usize, size: usize) -> Vec<(String, f64)> {
    let dir = tempfile::tempdir().unwrap();
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let file = dir.path().join(format!("{i}"));
            let mut body = vec![(i % 251) as u8; size];
            body[..8].copy_from_slice(&(i as u64).to_le_bytes());
            std::fs::write(&file, body).unwrap();
            let url = url.to_owned();
            std::thread::spawn(move || {
                let started = std::time::Instant::now();
                let out = curl(&[
                    "-sS",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "120",
                    "--data-binary",
                    &format!("@{}", file.display()),
                    &format!("{url}/v1/files"),
                ]);
                (
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    started.elapsed().as_secs_f64(),
                )
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// A frozen peer (SIGSTOP: the kernel takes connections, nothing answers) costs each upload at
/// most about one `replication_timeout`, however many batches queue for it: a replica's
/// deadline counts from when it is queued, not from when its batch leaves.
#[test]
fn a_frozen_peer_holds_small_uploads_no_longer_than_the_replication_timeout() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = tracker(dirs[0].path());
    let a = storage_with(dirs[1].path(), &t, "replication_timeout = \"3s\"\n");
    let b = storage(dirs[2].path(), "g1", &[&t], Some(SECRET));
    wait_for("a and b active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });
    // 1 MB files: 8 to a batch, so 48 uploads make 6 batches, two waves of the 4 a peer may
    // have under way. Counted from the batch's departure, the second wave would wait two
    // timeouts.
    let well = concurrent_uploads(&a.url, 48, 1_000_000);
    assert!(well.iter().all(|(s, _)| s == "201"), "{well:?}");
    let well_max = well.iter().map(|r| r.1).fold(0.0, f64::max);
    b.signal("STOP");
    let frozen = concurrent_uploads(&a.url, 48, 1_000_000);
    b.signal("CONT");
    assert!(frozen.iter().all(|(s, _)| s == "201"), "{frozen:?}");
    let frozen_max = frozen.iter().map(|r| r.1).fold(0.0, f64::max);
    assert!(
        frozen_max < well_max + 3.0 + 1.5,
        "with a 3 s replication_timeout an upload took {frozen_max:.1} s while the peer was frozen ({well_max:.1} s at most with it well)"
    );
}

/// Something that answers 404 at a peer's address for a while (another role on its port, an
/// older build) turns batching off for that peer only for a few seconds: once the peer is
/// back, its small replicas go in batches again.
#[test]
fn batching_resumes_after_a_peer_address_answered_404_for_a_while() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let t = tracker(dirs[0].path());
    let a = storage(dirs[1].path(), "g1", &[&t], Some(SECRET));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let env = [("SLUICE_CLUSTER_SECRET", SECRET)];
    let b = Served::storage_at(dirs[2].path(), "g1", &[&t.url], &listen, &[], &env);
    wait_for("a and b active", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });
    drop(b);
    // A tracker at b's address answers 404 to the batch route.
    let stand_in = Served::spawn(
        &[
            "tracker",
            "--http",
            &listen,
            "--data",
            dirs[3].path().to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(concurrent_uploads(&a.url, 1, 5000)[0].0, "201");
    drop(stand_in);
    let b = Served::storage_at(dirs[2].path(), "g1", &[&t.url], &listen, &[], &env);
    wait_for("a and b active again", WAIT, || {
        states(&t).iter().filter(|(_, _, s)| s == "active").count() == 2
    });
    wait_for("small replicas to reach b in batches again", WAIT, || {
        assert!(
            concurrent_uploads(&a.url, 4, 5000)
                .iter()
                .all(|(s, _)| s == "201")
        );
        metric(
            &b,
            "sluice_http_requests_total{route=\"/v1/internal/replicas\",method=\"POST\",status=\"200\"}",
        ) > 0
    });
}
