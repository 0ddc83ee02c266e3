//! Faults survived (issue 11): each test injects one (a node SIGKILLed under load, a bad file
//! in a peer's log, damage deep in a file, a crash right after an upload's last byte, a full
//! disk) into real processes and checks that nothing a client was promised is lost or cut.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Served, curl_ok, wait_for};

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "faults-s3cret";
const ENV: [(&str, &str); 1] = [("SLUICE_CLUSTER_SECRET", SECRET)];

fn cluster_view(tracker: &Served) -> serde_json::Value {
    serde_json::from_slice(&curl_ok(&["-sS", &format!("{}/v1/cluster", tracker.url)])).unwrap()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_through_trackers_fail_over_when_a_node_dies_under_load() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The tracker's own offline time is left at its default (6 s): failing over must not wait
    // for it.
    let tracker = Served::tracker(dirs[0].path(), &[], &ENV);
    let a = Served::storage(dirs[1].path(), "g1", &[&tracker.url], &[], &ENV);
    let mut b = Served::storage(dirs[2].path(), "g1", &[&tracker.url], &[], &ENV);
    wait_for("both nodes active", WAIT, || {
        nodes(&tracker).iter().filter(|n| n.1 == "active").count() == 2
    });
    let ids: Vec<String> = (0..40).map(|i| upload(&a, &body_of(i))).collect();
    wait_for("b to hold every file", WAIT, || {
        nodes(&tracker).iter().all(|n| n.2 == 40)
    });

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
