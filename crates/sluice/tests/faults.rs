//! Faults survived (issue 11): each test injects one (a node SIGKILLed under load, a bad file
//! in a peer's log, damage deep in a file, a crash right after an upload's last byte, a full
//! disk) into real processes and checks that nothing a client was promised is lost or cut.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Served, curl, curl_ok, get_json, get_ok, wait_for};
use sluice_testkit::small_disk::SmallDisk;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "faults-s3cret";
const ENV: [(&str, &str); 1] = [("SLUICE_CLUSTER_SECRET", SECRET)];

fn cluster_view(tracker: &Served) -> serde_json::Value {
    get_json(&format!("{}/v1/cluster", tracker.url))
}

/// (url, state, files) of every node, as the tracker sees them.
fn nodes(tracker: &Served) -> Vec<(String, String, u64)> {
    let view = cluster_view(tracker);
    let mut out: Vec<(String, String, u64)> = view["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["nodes"].as_array().unwrap().iter())
        .map(|n| {
            (
                n["url"].as_str().unwrap().to_owned(),
                n["state"].as_str().unwrap().to_owned(),
                n["files"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn upload(node: &Served, body: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, body).unwrap();
    let out = curl_ok(&[
        "-sS",
        "-f",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{}/v1/files", node.url),
    ]);
    serde_json::from_slice::<serde_json::Value>(&out).unwrap()["fileid"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn body_of(i: usize) -> Vec<u8> {
    (0..20_000 + i * 37).map(|j| (j * 7 + i) as u8).collect()
}

/// A tracker and a two-node group g1 on DIRS[0..3], once both nodes are active.
fn group_of_two(dirs: &[tempfile::TempDir]) -> (Served, Served, Served) {
    let tracker = Served::tracker(dirs[0].path(), &[], &ENV);
    let a = Served::storage(dirs[1].path(), "g1", &[&tracker.url], &[], &ENV);
    let b = Served::storage(dirs[2].path(), "g1", &[&tracker.url], &[], &ENV);
    wait_for("both nodes active", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    (tracker, a, b)
}

/// N files uploaded to NODE (bodies `body_of(i)`), once every node holds them.
fn uploaded_to_all(tracker: &Served, node: &Served, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| upload(node, &body_of(i))).collect();
    wait_for("every node to hold every file", WAIT, || {
        nodes(tracker).iter().all(|node| node.2 == n as u64)
    });
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_trackers_fail_over_when_a_node_dies_under_load() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The tracker's own offline time is left at its default (6 s): failing over must not wait
    // for it.
    let (tracker, a, mut b) = group_of_two(&dirs);
    let ids = uploaded_to_all(&tracker, &a, 40);

    let client = Arc::new(
        sluice_client::cluster::Endpoint::new(None, std::slice::from_ref(&tracker.url), None)
            .unwrap(),
    );
    let ids = Arc::new(ids);
    let (done, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let readers: Vec<_> = (0..8)
        .map(|w| {
            let (client, ids, done, failed) =
                (client.clone(), ids.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let mut i = w;
                while done.load(Ordering::SeqCst) < 1500 {
                    let n = i % ids.len();
                    match client.download_bytes(&ids[n]).await {
                        Ok(got) if got == body_of(n) => {}
                        Ok(_) => panic!("wrong bytes for file {n}"),
                        Err(e) => {
                            eprintln!("read failed: {e}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    i += 7;
                }
            })
        })
        .collect();
    // A third of the way in, b dies.
    tokio::task::spawn_blocking({
        let done = done.clone();
        move || {
            wait_for("reads to be under way", WAIT, || {
                done.load(Ordering::SeqCst) >= 500
            });
            b.child.kill().unwrap();
            b.child.wait().unwrap();
        }
    })
    .await
    .unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let (done, failed) = (done.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(done >= 1500);
    assert_eq!(failed, 0, "{failed} of {done} reads failed");
    // The tracker stopped routing to b at once (a client's report, checked by a probe), long
    // before its heartbeats would have run out.
    assert!(
        nodes(&tracker)
            .iter()
            .any(|n| n.1 == "offline" && n.0 != a.url)
    );
    // And the CLI fails over the same way.
    let out = tempfile::tempdir().unwrap();
    for n in 0..5 {
        let path = out.path().join(format!("{n}"));
        common::sluice_ok(&[
            "download",
            &ids[n],
            "--tracker",
            &tracker.url,
            "-o",
            path.to_str().unwrap(),
        ]);
        assert_eq!(std::fs::read(&path).unwrap(), body_of(n));
    }
}

/// A free port on 127.0.0.1 (bound and let go: the next bind of it wins).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `sluice storage` of g1 on DATA listening on PORT, with CONFIG lines and EXTRA flags.
fn storage_on(
    data: &std::path::Path,
    tracker: &Served,
    port: u16,
    config: &str,
    extra: &[&str],
) -> Served {
    let config_file = data.with_extension("toml");
    std::fs::write(&config_file, config).unwrap();
    let mut args = vec!["--config", config_file.to_str().unwrap()];
    args.extend_from_slice(extra);
    let listen = format!("127.0.0.1:{port}");
    Served::storage_at(data, "g1", &[&tracker.url], &listen, &args, &ENV)
}

fn data_file(data_dir: &std::path::Path, fileid: &str) -> std::path::PathBuf {
    let key = fileid.split('/').nth(1).unwrap();
    sluice_blob::data_file_paths(data_dir)
        .unwrap()
        .into_iter()
        .find(|p| p.file_name().unwrap() == key)
        .expect("the node holds the file")
}

fn metric(node: &Served, name: &str) -> u64 {
    common::metric(&node.url, name)
        .unwrap_or_else(|| panic!("{name} in the metrics of {}", node.url))
}

/// The body of file `fileid` on `node`, which must serve it.
fn body_from(node: &Served, fileid: &str) -> Vec<u8> {
    get_ok(&format!("{}/v1/files/{fileid}", node.url))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catch_up_goes_past_a_bad_file_and_takes_files_of_any_size() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tracker = Served::tracker(dirs[0].path(), &["--offline-after-ms", "1000"], &ENV);
    // a is reached through a slow link, and both nodes give peers 200 ms per replica: a
    // big file can only be caught up by streaming (an idle timeout, not a total one).
    let a_port = free_port();
    let link = sluice_testkit::link::Link::start(&format!("http://127.0.0.1:{a_port}")).await;
    let quick = "replication_timeout_ms = 200\n";
    let a = storage_on(
        &dirs[1].path().join("a"),
        &tracker,
        a_port,
        quick,
        &["--advertise", &link.url],
    );
    let b_dir = dirs[2].path().join("b");
    let b_port = free_port();
    let mut b = storage_on(&b_dir, &tracker, b_port, quick, &[]);
    wait_for("both nodes active", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    wait_for("b offline", WAIT, || {
        nodes(&tracker).iter().any(|n| n.1 == "offline")
    });
    // While b is down: small files, a big one, and one small file damaged on a.
    let small: Vec<String> = (0..20).map(|i| upload(&a, &body_of(i))).collect();
    let big_body: Vec<u8> = (0..6_000_000u32).map(|i| (i % 253) as u8).collect();
    let big = upload(&a, &big_body);
    let bad = &small[7];
    let a_dir = dirs[1].path().join("a");
    common::flip_stored_byte(&a_dir, bad, 84);
    link.set_rate(2_000_000);

    let b = storage_on(&b_dir, &tracker, b_port, quick, &[]);
    // b goes past the bad file: everything else arrives, the big file included (3 s at the
    // link's rate, against 200 ms per replica), and b says one file is still to come.
    wait_for(
        "b to fetch all but the bad file",
        Duration::from_secs(60),
        || metric(&b, "sluice_store_files") == 20,
    );
    assert_eq!(body_from(&b, &big), big_body);
    for (i, id) in small.iter().enumerate().filter(|(_, id)| *id != bad) {
        assert_eq!(body_from(&b, id), body_of(i));
    }
    wait_for("b to report the file set aside", WAIT, || {
        metric(&b, "sluice_catch_up_pending") == 1
            && nodes(&tracker)
                .iter()
                .any(|n| n.0 == b.url && n.1 == "syncing")
    });
    let view = cluster_view(&tracker);
    let b_view = view["groups"][0]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["url"] == b.url.as_str())
        .unwrap()
        .clone();
    assert_eq!(b_view["catch_up_pending"], 1, "{b_view}");
    let table = common::sluice_ok(&["cluster", "--tracker", &tracker.url]);
    assert!(table.contains("PENDING"), "{table}");
    assert!(
        table.contains("MiB") || table.contains("GiB"),
        "sizes for people: {table}"
    );
    assert!(metric(&b, "sluice_catch_up_failures_total") >= 1);
    // b answers a read of it "not here yet" (503), not "no such file".
    let out = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        &format!("{}/v1/files/{bad}", b.url),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.ends_with("\n503") && text.contains("catch-up"),
        "{text}"
    );
    // Once a's copy is good again, b's next try (with a back-off) takes it, and b is level.
    common::flip_stored_byte(&a_dir, bad, 84);
    link.set_rate(0);
    wait_for(
        "b to fetch the file set aside and turn active",
        Duration::from_secs(60),
        || {
            metric(&b, "sluice_catch_up_pending") == 0
                && nodes(&tracker).iter().all(|n| n.1 == "active")
        },
    );
    assert_eq!(body_from(&b, bad), body_of(7));
    assert_eq!(metric(&b, "sluice_store_files"), 21);
}

#[test]
fn damage_deep_in_a_file_is_repaired_during_the_read_that_meets_it() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (tracker, a, _b) = group_of_two(&dirs);
    // 3 MB: its first read (512 KiB) is long past when the damage is met.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let id = upload(&a, &body);
    wait_for("b to hold it", WAIT, || {
        nodes(&tracker).iter().all(|n| n.2 == 1)
    });
    let path = data_file(dirs[1].path(), &id);
    let mut raw = std::fs::read(&path).unwrap();
    let deep = raw.len() * 4 / 5;
    raw[deep] ^= 0xff;
    std::fs::write(&path, raw).unwrap();
    // The read that meets the damage gets every byte right, and a's copy is good again.
    assert_eq!(body_from(&a, &id), body);
    assert_eq!(metric(&a, "sluice_repairs_total"), 1);
    assert_eq!(body_from(&a, &id), body);
    // A range that starts past the first read and crosses the damage, likewise.
    let path = data_file(dirs[1].path(), &id);
    let mut raw = std::fs::read(&path).unwrap();
    raw[deep] ^= 0xff;
    std::fs::write(&path, raw).unwrap();
    let range = curl_ok(&[
        "-sS",
        "-f",
        "-r",
        "1000000-2999999",
        &format!("{}/v1/files/{id}", a.url),
    ]);
    assert_eq!(range, &body[1_000_000..3_000_000]);
    assert_eq!(metric(&a, "sluice_repairs_total"), 2);
}

#[test]
fn a_node_whose_index_disk_fills_refuses_uploads_says_why_and_recovers_by_itself() {
    // The node's index on a small disk of its own, which another process then fills: the
    // index's commits are what fail (its data files beside it have room).
    let disk = SmallDisk::mount("8m");
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let data = dirs[1].path();
    std::fs::write(data.join("FORMAT"), "sluice-blob 1\n").unwrap();
    std::os::unix::fs::symlink(disk.path().join("index.redb"), data.join("index.redb")).unwrap();
    let tracker = Served::tracker(dirs[0].path(), &[], &ENV);
    let node = Served::storage(data, "g1", &[&tracker.url], &[], &ENV);
    let peer = Served::storage(dirs[2].path(), "g1", &[&tracker.url], &[], &ENV);
    wait_for("both nodes to join", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    let mut acknowledged = vec![(upload(&node, b"before"), b"before".to_vec())];
    let hog = disk.fill("hog");
    // Uploads go on (into the room the index had left) until one is refused.
    let refusal = loop {
        let i = acknowledged.len();
        let body = format!("file {i} of the uploads that fill the index").into_bytes();
        let out = curl(&[
            "-sS",
            "-w",
            "\n%{http_code}",
            "--data-binary",
            &String::from_utf8_lossy(&body),
            &format!("{}/v1/files", node.url),
        ]);
        let text = String::from_utf8(out.stdout).unwrap();
        let (json, status) = text.rsplit_once('\n').unwrap();
        let json: serde_json::Value = serde_json::from_str(json).unwrap();
        match status {
            "201" | "200" => {
                let id = json["fileid"].as_str().unwrap().to_owned();
                acknowledged.push((id, body));
            }
            _ => break (status.to_owned(), json),
        }
        assert!(i < 20_000, "the index's disk never filled");
    };
    assert_eq!(refusal.0, "507", "{refusal:?}");
    assert!(
        refusal.1["error"].as_str().unwrap().contains("full"),
        "{refusal:?}"
    );
    // It says why, and the trackers stop sending it uploads; reads go on.
    let health = || -> serde_json::Value {
        serde_json::from_slice(&curl_ok(&["-sS", &format!("{}/healthz", node.url)])).unwrap()
    };
    let h = health();
    assert_eq!(h["writable"], false, "{h}");
    assert!(h["reason"].as_str().unwrap().contains("full"), "{h}");
    wait_for("the tracker to see it unwritable", WAIT, || {
        cluster_view(&tracker)["groups"][0]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["url"] == node.url.as_str() && n["writable"] == false)
    });
    for (id, body) in &acknowledged {
        assert_eq!(&body_from(&node, id), body);
    }
    // A file only its peer holds: fetching it here is refused for the full disk, not
    // answered as if the file did not exist.
    let elsewhere = upload(&peer, b"only on the peer");
    let out = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        &format!("{}/v1/files/{elsewhere}", node.url),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.ends_with("\n507"), "{text}");
    // Room again: it takes uploads again without a restart.
    std::fs::remove_file(&hog).unwrap();
    wait_for("writable again", WAIT, || health()["writable"] == true);
    let id = upload(&node, b"after");
    assert_eq!(body_from(&node, &id), b"after");
    assert_eq!(body_from(&node, &elsewhere), b"only on the peer");
    for (id, body) in &acknowledged {
        assert_eq!(&body_from(&node, id), body);
    }
}

#[test]
fn a_missing_or_cut_short_data_file_is_put_back_by_the_read_that_meets_it_or_the_scrub() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tracker = Served::tracker(dirs[0].path(), &[], &ENV);
    let a_dir = dirs[1].path().join("a");
    let a = storage_on(
        &a_dir,
        &tracker,
        free_port(),
        // Data files, each its own: volume records have their own test below.
        "scrub_interval_secs = 1\nvolume_max_file = 0\n",
        &[],
    );
    let _b = Served::storage(dirs[2].path(), "g1", &[&tracker.url], &[], &ENV);
    wait_for("both nodes active", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    let bodies: Vec<Vec<u8>> = (0..3).map(|i| body_of(i * 1000)).collect();
    let ids: Vec<String> = bodies.iter().map(|b| upload(&a, b)).collect();
    wait_for("b to hold them", WAIT, || {
        nodes(&tracker).iter().all(|n| n.2 == 3)
    });
    // On a: one data file gone, one cut short, one gone where only the scrub will see it.
    std::fs::remove_file(data_file(&a_dir, &ids[0])).unwrap();
    let cut = data_file(&a_dir, &ids[1]);
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len - 5000)
        .unwrap();
    let unread = data_file(&a_dir, &ids[2]);
    std::fs::remove_file(&unread).unwrap();
    assert_eq!(body_from(&a, &ids[0]), bodies[0]);
    assert_eq!(body_from(&a, &ids[1]), bodies[1]);
    wait_for("the scrub to put the third back", WAIT, || {
        unread.exists() && metric(&a, "sluice_repairs_total") == 3
    });
    assert_eq!(body_from(&a, &ids[2]), bodies[2]);
    for (id, body) in ids.iter().zip(&bodies) {
        assert_eq!(&body_from(&a, id), body);
    }
}

#[test]
fn sluice_storage_enforces_its_connection_limit_and_request_head_deadline() {
    use std::io::{Read, Write};
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let tracker = Served::tracker(dirs[0].path(), &[], &ENV);
    let node = storage_on(
        &dirs[1].path().join("a"),
        &tracker,
        free_port(),
        "max_connections = 2\nheader_read_timeout_secs = 1\n",
        &[],
    );
    let addr = node.url.trim_start_matches("http://").to_owned();
    // A half-sent request head is cut off after the deadline, not held open.
    let mut slow = std::net::TcpStream::connect(&addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    slow.read_to_end(&mut answer)
        .expect("closed by the server, not by our read timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Two quiet connections take both places: a third waits until one goes.
    let held_at = std::time::Instant::now();
    let held: Vec<std::net::TcpStream> = (0..2)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
            s
        })
        .collect();
    let third = std::thread::spawn({
        let url = node.url.clone();
        move || curl(&["-sS", "-m", "20", &format!("{url}/healthz")])
    });
    // The held ones are cut off at the head deadline (1 s); only then is the third served.
    let out = third.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        held_at.elapsed() >= Duration::from_millis(900),
        "a third connection was served past the limit of 2"
    );
    drop(held);
}

#[test]
fn deletes_through_trackers_fail_over_when_a_node_dies() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (tracker, a, mut b) = group_of_two(&dirs);
    let ids = uploaded_to_all(&tracker, &a, 10);
    // b dies; the tracker still calls it active (its heartbeats have not run out), and sends
    // every other delete there.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    for id in &ids {
        common::sluice_ok(&["delete", id, "--tracker", &tracker.url]);
    }
    for id in &ids {
        let out = curl(&[
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{}/v1/files/{id}", a.url),
        ]);
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "404",
            "{id} is gone from a"
        );
    }
}

/// (state, last_seen_ms) of the node at URL, as the tracker sees it.
fn node_state(tracker: &Served, url: &str) -> Option<(String, u64)> {
    cluster_view(tracker)["groups"][0]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["url"] == url)
        .map(|n| {
            (
                n["state"].as_str().unwrap_or_default().to_owned(),
                n["last_seen_ms"].as_u64().unwrap_or(u64::MAX),
            )
        })
}

#[test]
fn a_node_back_while_the_peer_that_took_its_writes_is_down_stays_syncing_until_it_returns() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tracker = Served::tracker(dirs[0].path(), &["--offline-after-ms", "1000"], &ENV);
    let quick = "catch_up_interval_ms = 100\n";
    let (a_dir, b_dir) = (dirs[1].path().join("a"), dirs[2].path().join("b"));
    let (a_port, b_port) = (free_port(), free_port());
    let mut a = storage_on(&a_dir, &tracker, a_port, quick, &[]);
    let mut b = storage_on(&b_dir, &tracker, b_port, quick, &[]);
    wait_for("both nodes active", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    let old = upload(&a, b"on both");
    let doomed = upload(&a, b"deleted while b is away");
    wait_for("b to hold both", WAIT, || {
        nodes(&tracker).iter().all(|n| n.2 == 2)
    });
    // b goes away; a takes writes and a delete that only it knows of; then a goes away too.
    b.child.kill().unwrap();
    b.child.wait().unwrap();
    wait_for("b offline", WAIT, || {
        node_state(&tracker, &b.url).is_some_and(|s| s.0 == "offline")
    });
    let missed = upload(&a, b"taken while b was away");
    curl_ok(&[
        "-sS",
        "-f",
        "-X",
        "DELETE",
        &format!("{}/v1/files/{doomed}", a.url),
    ]);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_for("a offline", WAIT, || {
        node_state(&tracker, &a.url).is_some_and(|s| s.0 == "offline")
    });
    // b comes back: it cannot know what a took meanwhile, so it is not `active`, heartbeat
    // after heartbeat (catch-up runs every 100 ms).
    let b = storage_on(&b_dir, &tracker, b_port, quick, &[]);
    let (mut heartbeats, mut previous) = (0, u64::MAX);
    wait_for("ten heartbeats of b", WAIT, || {
        if let Some((state, last_seen)) = node_state(&tracker, &b.url) {
            assert_ne!(state, "active", "b called itself active while a was down");
            // A fresh heartbeat shows as the time since the last one going down.
            if state == "syncing" && last_seen < previous {
                heartbeats += 1;
            }
            previous = last_seen;
        }
        heartbeats >= 10
    });
    // Reads go to it meanwhile (the group has no active node): what it holds is served, and
    // what it lacks is "not here yet", not "no such file".
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("old");
    common::sluice_ok(&[
        "download",
        &old,
        "--tracker",
        &tracker.url,
        "-o",
        path.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&path).unwrap(), b"on both");
    let answer = curl(&[
        "-sS",
        "-w",
        "\n%{http_code}",
        &format!("{}/v1/files/{missed}", b.url),
    ]);
    let text = String::from_utf8(answer.stdout).unwrap();
    assert!(text.ends_with("\n503"), "{text}");
    // a returns: b takes what it missed, applies the delete, and turns active.
    let a = storage_on(&a_dir, &tracker, a_port, quick, &[]);
    wait_for("both active again", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    assert_eq!(body_from(&b, &missed), b"taken while b was away");
    let answer = curl(&[
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("{}/v1/files/{doomed}", b.url),
    ]);
    assert_eq!(String::from_utf8(answer.stdout).unwrap(), "404");
    drop(a);
}

#[test]
fn damage_in_an_incomplete_file_is_repaired_during_the_read_that_meets_it() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tracker = Served::tracker(dirs[0].path(), &[], &ENV);
    let a_dir = dirs[1].path().join("a");
    let a = storage_on(&a_dir, &tracker, free_port(), "", &[]);
    let _b = Served::storage(dirs[2].path(), "g1", &[&tracker.url], &[], &ENV);
    wait_for("both nodes active", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    // A progressive upload of 3 MB that stops after 2 MB and is ended: both nodes keep what
    // arrived, an incomplete (abandoned) file.
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let arrived = 2_000_000;
    let files = tempfile::tempdir().unwrap();
    let first = files.path().join("first");
    std::fs::write(&first, &body[..arrived]).unwrap();
    let meta = sluice_proto::tus::encode_metadata([("content-type", "video/mp4"), ("q", "0.5")]);
    let created = String::from_utf8(
        curl(&[
            "-sS",
            "-i",
            "-X",
            "POST",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            &format!("Upload-Length: {}", body.len()),
            "-H",
            &format!("Upload-Metadata: {meta}"),
            &format!("{}/v1/uploads", a.url),
        ])
        .stdout,
    )
    .unwrap();
    let header = |head: &str, name: &str| -> String {
        head.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| panic!("{name} in {head}"))
    };
    let location = header(&created, "location");
    let upload = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", a.url)
    };
    let patched = String::from_utf8(
        curl(&[
            "-sS",
            "-i",
            "-X",
            "PATCH",
            "-H",
            "Tus-Resumable: 1.0.0",
            "-H",
            "Upload-Offset: 0",
            "-H",
            "Content-Type: application/offset+octet-stream",
            "--data-binary",
            &format!("@{}", first.display()),
            &upload,
        ])
        .stdout,
    )
    .unwrap();
    let id = header(&patched, "sluice-file-id");
    curl_ok(&[
        "-sS",
        "-f",
        "-X",
        "DELETE",
        "-H",
        "Tus-Resumable: 1.0.0",
        &upload,
    ]);
    wait_for("both nodes to hold what arrived", WAIT, || {
        nodes(&tracker).iter().all(|n| n.2 == 1) && body_from(&a, &id).len() == arrived
    });
    // One byte deep inside a's copy (block 20 of 64 KiB blocks, each with its checksum).
    let key = id.split('/').nth(1).unwrap();
    let shard = sluice_blob::data_file_paths(&a_dir).unwrap_or_default();
    assert!(shard.is_empty(), "only the incomplete file: {shard:?}");
    let part = std::fs::read_dir(a_dir.join("blobs"))
        .unwrap()
        .flat_map(|l1| std::fs::read_dir(l1.unwrap().path()).unwrap())
        .flat_map(|l2| std::fs::read_dir(l2.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .find(|p| {
            p.to_str()
                .unwrap()
                .ends_with(&format!("{key}.{arrived}.part"))
        })
        .expect("a's incomplete data file");
    let mut raw = std::fs::read(&part).unwrap();
    raw[16 + 20 * (65_536 + 4) + 9] ^= 0x01;
    std::fs::write(&part, raw).unwrap();
    assert!(
        body_from(&a, &id) == body[..arrived],
        "every byte that arrived, right"
    );
    assert_eq!(metric(&a, "sluice_repairs_total"), 1);
    assert!(body_from(&a, &id) == body[..arrived]);
}
