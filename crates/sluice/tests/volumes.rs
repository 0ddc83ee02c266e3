//! The volume store under SIGKILL: a real `sluice serve` killed at exact steps of the commit
//! and compaction protocols (the `SLUICE_FAILPOINT` crash points), then restarted on the same
//! data: nothing acknowledged is lost, nothing unacknowledged is served, and the interrupted
//! work finishes by itself.

mod common;

use std::time::Duration;

use common::{Served, curl, get, wait_for};

const WAIT: Duration = Duration::from_secs(30);

/// Small volumes, compaction checked every 100 ms.
const CONFIG: &str =
    "volume_size = \"64KiB\"\nvolume_max_file = \"32KiB\"\ncompact_interval = \"100ms\"\n";

fn body(i: u32) -> Vec<u8> {
    (0..5000u32).map(|k| ((k * 31) ^ (i * 7)) as u8).collect()
}

fn config(dir: &std::path::Path) -> String {
    let path = dir.join("sluice.toml");
    std::fs::write(&path, CONFIG).unwrap();
    path.display().to_string()
}

/// Uploads `data`; `None` when the server gave no 201 (it died on the way).
fn upload(url: &str, data: &[u8]) -> Option<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("f");
    std::fs::write(&file, data).unwrap();
    let out = curl(&[
        "-sS",
        "-f",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{url}/v1/files"),
    ]);
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["fileid"].as_str().map(str::to_owned)
}

/// Deletes `fileid`; false when the server did not confirm it (it died on the way).
fn delete(url: &str, fileid: &str) -> bool {
    curl(&[
        "-sS",
        "-f",
        "-X",
        "DELETE",
        &format!("{url}/v1/files/{fileid}"),
    ])
    .status
    .success()
}

fn metric(url: &str, name: &str) -> u64 {
    common::metric(url, name).unwrap_or_else(|| panic!("{name} in the metrics of {url}"))
}

fn volume_files(data: &std::path::Path) -> usize {
    sluice_blob::volume_paths(data).map_or(0, |p| p.len())
}

#[test]
fn a_kill_between_the_volume_append_and_the_index_commit_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cfg = config(dir.path());
    // The 21st batch reaches the disk, and the process dies before its index commit.
    let mut served = Served::start_with_env(
        &data,
        &["--config", &cfg],
        &[("SLUICE_FAILPOINT", "volume-appended@21")],
    );
    let mut acked = Vec::new();
    for i in 0..20 {
        let id = upload(&served.url, &body(i)).expect("the first 20 uploads succeed");
        acked.push((id, body(i)));
    }
    assert_eq!(
        upload(&served.url, &body(20)),
        None,
        "the 21st is never acknowledged"
    );
    let status = served.wait_exit(WAIT);
    assert!(!status.success(), "killed: {status:?}");
    let on_disk: u64 = sluice_blob::volume_paths(&data)
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    let served = Served::start(&data, &["--config", &cfg]);
    assert_eq!(metric(&served.url, "sluice_store_files"), 20);
    for (id, data) in &acked {
        let (status, _, got) = get(&format!("{}/v1/files/{id}", served.url), &[]);
        assert_eq!(status, "200", "{id}");
        assert!(got == *data, "{id} differs");
    }
    let after: u64 = sluice_blob::volume_paths(&data)
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(
        after < on_disk,
        "the record the index never committed was cut ({after} of {on_disk} bytes)"
    );
    assert_eq!(metric(&served.url, "sluice_volume_bytes"), after);
    // And the store goes on.
    let next = upload(&served.url, &body(99)).expect("uploads after the restart");
    assert_eq!(
        get(&format!("{}/v1/files/{next}", served.url), &[]).2,
        body(99)
    );
}

/// Fills sealed volumes, deletes half their files, and lets compaction run into the
/// failpoint; then restarts without it and checks every step's leftovers are dealt with.
fn compaction_killed_at(point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let cfg = config(dir.path());
    let mut served =
        Served::start_with_env(&data, &["--config", &cfg], &[("SLUICE_FAILPOINT", point)]);
    let mut files = Vec::new();
    for i in 0..40 {
        let id = upload(&served.url, &body(i)).expect("uploads before compaction");
        files.push((id, body(i)));
    }
    // Deleting makes volumes half dead, and compaction (every 100 ms) starts on the first
    // one while later deletes go on, until it reaches the failpoint. A delete the dying
    // server did not confirm may or may not have happened; a confirmed one must stick, and
    // files never deleted must all be there.
    let mut gone = Vec::new();
    let mut kept = Vec::new();
    let mut unsure = None;
    for (i, (id, data)) in files.into_iter().enumerate() {
        if i % 2 == 1 || i >= 30 || unsure.is_some() {
            kept.push((id, data));
        } else if delete(&served.url, &id) {
            gone.push(id);
        } else {
            unsure = Some(id);
        }
    }
    let status = served.wait_exit(WAIT);
    assert!(
        !status.success(),
        "{point}: the process was killed ({status:?})"
    );
    let files_at_kill = volume_files(&data);

    let served = Served::start(&data, &["--config", &cfg]);
    if point == "compaction-dropped" {
        assert!(
            volume_files(&data) < files_at_kill,
            "the open removed the volume the index had dropped"
        );
    }
    let check = |served: &Served| {
        for (id, data) in &kept {
            let (status, _, got) = get(&format!("{}/v1/files/{id}", served.url), &[]);
            assert_eq!(status, "200", "{point}: {id}");
            assert!(got == *data, "{point}: {id} differs");
        }
        for id in &gone {
            assert_eq!(
                get(&format!("{}/v1/files/{id}", served.url), &[]).0,
                "404",
                "{point}: {id}"
            );
        }
    };
    check(&served);
    // The interrupted compaction is finished by the next passes: no half-dead sealed volume
    // is left, and no volume file the index does not know.
    // (After "compaction-dropped" the volume is already out of the index: the open removes
    // its file, and there is nothing left to compact.)
    let redo = point != "compaction-dropped";
    // (The volumes the index knows, and perhaps the active one, new since the restart and
    // without a committed batch yet.)
    wait_for(&format!("{point}: compaction to finish"), WAIT, || {
        let (files, known) = (
            volume_files(&data) as u64,
            metric(&served.url, "sluice_volumes"),
        );
        (!redo || metric(&served.url, "sluice_volume_compactions_total") >= 1)
            && (known..=known + 1).contains(&files)
    });
    check(&served);
    let unsure_kept =
        unsure.is_some_and(|id| get(&format!("{}/v1/files/{id}", served.url), &[]).0 == "200");
    assert_eq!(
        metric(&served.url, "sluice_store_files"),
        kept.len() as u64 + u64::from(unsure_kept)
    );
}

#[test]
fn a_kill_while_compaction_copies_loses_nothing() {
    compaction_killed_at("compaction-copied");
}

#[test]
fn a_kill_after_compaction_moved_every_record_loses_nothing() {
    compaction_killed_at("compaction-moved");
}

#[test]
fn a_kill_after_compaction_dropped_the_volume_from_the_index_leaves_no_stray_file() {
    compaction_killed_at("compaction-dropped");
}
