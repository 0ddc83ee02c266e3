//! The volume map under faults: damaged records, damaged logs, full disks on either side,
//! deletes racing compaction, each followed by crashes and restarts. (Found by an outside
//! review of the map; each failed before its fix.)

mod common;

use std::path::Path;

use bytes::Bytes;
use common::{crash_copy, index_logs, pattern, put, read_range};
use sluice_blob::record::Location;
use sluice_blob::{BlobError, BlobStore, BlobStoreOptions};
use sluice_proto::BlobKey;
use sluice_testkit::small_disk::SmallDisk;

fn options(checkpoint_entries: u64, volume_size: u64) -> BlobStoreOptions {
    let mut o = common::with_volumes(1024, volume_size);
    if let Some(v) = o.volumes.as_mut() {
        v.checkpoint_entries = checkpoint_entries;
    }
    o
}

async fn read(store: &BlobStore, key: BlobKey) -> Result<Vec<u8>, BlobError> {
    read_range(store, key, 0, u64::MAX).await
}

/// A flipped byte in the first entry of the newest volume's log.
fn damage_last_log(root: &Path) {
    let log = index_logs(root).pop().unwrap();
    let mut raw = std::fs::read(&log).unwrap();
    raw[20] ^= 0x10;
    std::fs::write(&log, raw).unwrap();
}

fn damage_log(root: &Path) {
    let log = index_logs(root).remove(0);
    let mut raw = std::fs::read(&log).unwrap();
    raw[20] ^= 0x10;
    std::fs::write(&log, raw).unwrap();
}

fn place(store: &BlobStore, key: BlobKey) -> (u64, u64) {
    match store.stat(key).unwrap().unwrap().location {
        Location::Volume { volume, offset, .. } => (volume, offset),
        Location::DataFile => panic!("{key} has a data file"),
    }
}

fn flip(root: &Path, volume: u64, at: u64) {
    let path = root.join("volumes").join(format!("{volume:016x}.vol"));
    let mut raw = std::fs::read(&path).unwrap();
    raw[at as usize] ^= 0x01;
    std::fs::write(&path, raw).unwrap();
}

/// `dir/volumes` on a filesystem of its own (a symlink to `disk`), the rest of the store
/// beside it.
fn volumes_on(root: &Path, disk: &Path) {
    let volumes = root.join("volumes");
    if volumes.exists() {
        std::fs::remove_dir_all(&volumes).unwrap();
    }
    std::os::unix::fs::symlink(disk, &volumes).unwrap();
}

/// Damaged bytes among the records a load replays cost the files in them, not the ones after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_header_past_the_checkpoint_costs_only_its_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1_000_000, 1 << 30)).unwrap();
    let mut files = Vec::new();
    for i in 0..10u8 {
        let data = pattern(3000, i);
        files.push((put(&store, &data).await, data));
    }
    let (volume, offset) = place(&store, files[2].0);
    let copy = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), copy.path());
    store.close().await;
    flip(copy.path(), volume, offset + 10);
    let store = BlobStore::open(copy.path(), options(1_000_000, 1 << 30)).unwrap();
    for (i, (key, data)) in files.iter().enumerate() {
        if i == 2 {
            continue;
        }
        assert_eq!(&read(&store, *key).await.unwrap(), data, "file {i}");
    }
    store.close().await;
}

/// A record whose header was damaged is repaired (a copy naming it); a full rebuild later
/// still finds the copy, and every other file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rebuild_keeps_a_repaired_copy_of_a_damaged_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let store = BlobStore::open(dir.path(), options(4, 1 << 30)).unwrap();
    for i in 0..10u8 {
        let data = pattern(3000, i);
        files.push((put(&store, &data).await, data));
    }
    let (volume, offset) = place(&store, files[3].0);
    store.close().await;
    flip(dir.path(), volume, offset + 10);
    let store = BlobStore::open(dir.path(), options(4, 1 << 30)).unwrap();
    let key = files[3].0;
    assert!(read(&store, key).await.is_err());
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(files[3].1.clone())).await.unwrap();
    w.commit().await.unwrap();
    store.close().await;
    damage_log(dir.path());
    let store = BlobStore::open(dir.path(), options(4, 1 << 30)).unwrap();
    assert!(store.volume_map_load().unwrap().rebuilt);
    for (i, (key, data)) in files.iter().enumerate() {
        assert_eq!(&read(&store, *key).await.unwrap(), data, "file {i}");
    }
    store.close().await;
}

/// A damaged record header repaired into a data file (volumes take no file that large any
/// more) takes the peer copy's type and digest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_header_repaired_into_a_data_file_keeps_type_and_digest() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(20_000, 3);
    let store = BlobStore::open(dir.path(), options(1_000_000, 1 << 30)).unwrap();
    let key = put(&store, &data).await;
    let before = store.stat(key).unwrap().unwrap();
    let (volume, offset) = place(&store, key);
    store.close().await;
    flip(dir.path(), volume, offset + 10);
    let mut lowered = options(1_000_000, 1 << 30);
    lowered.volumes.as_mut().unwrap().max_file = 8 << 10;
    let store = BlobStore::open(dir.path(), lowered).unwrap();
    assert!(read(&store, key).await.is_err());
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(data.clone())).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(read(&store, key).await.unwrap(), data);
    let after = store.stat(key).unwrap().unwrap();
    assert_eq!(after.location, Location::DataFile);
    assert_eq!(
        (&after.content_type, after.sha256),
        (&before.content_type, before.sha256)
    );
    store.close().await;
}

/// The volumes' disk full (the index has room): deletes go in without a delete record, the
/// logs cannot be written, and no checkpoint works. Still no acknowledged delete comes back,
/// after a crash or a clean restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_on_a_full_volumes_disk_stay_deleted_across_restarts() {
    let disk = SmallDisk::mount("2m");
    let root = tempfile::tempdir().unwrap();
    BlobStore::open(root.path(), options(1_000_000, 1 << 30))
        .unwrap()
        .close()
        .await;
    volumes_on(root.path(), disk.path());
    let store = BlobStore::open(root.path(), options(1_000_000, 1 << 30)).unwrap();
    let mut keys = Vec::new();
    for i in 0..150u8 {
        keys.push(put(&store, &pattern(3000, i)).await);
    }
    store.close().await;
    let store = BlobStore::open(root.path(), options(1_000_000, 1 << 30)).unwrap();
    let hog = disk.fill_leaving("hog", 0);
    let mut deleted = Vec::new();
    for key in keys.iter().take(100) {
        if let Ok(true) = store.delete(*key).await {
            deleted.push(*key);
        }
    }
    assert!(deleted.len() > 50, "deletes make room: {}", deleted.len());
    let copy = tempfile::tempdir().unwrap();
    crash_copy(root.path(), copy.path());
    std::fs::remove_file(copy.path().join("volumes").join("hog")).unwrap();
    std::fs::remove_file(hog).unwrap();
    store.close().await;
    for reopened in [copy.path(), root.path()] {
        let store = BlobStore::open(reopened, options(1_000_000, 1 << 30)).unwrap();
        for key in &deleted {
            assert!(store.stat(*key).unwrap().is_none(), "{key} came back");
        }
        let listed = store.keys_after(None, 1000).unwrap().len() as u64;
        assert_eq!(listed, store.files());
        store.close().await;
    }
}

/// The index's disk full (the volumes have room): puts and deletes are refused; after the
/// disk has room again and later batches commit, a restart applies none of the refused ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_batches_stay_refused_after_a_restart() {
    let disk = SmallDisk::mount("4m");
    let root = disk.path().join("store");
    let volumes = tempfile::tempdir().unwrap();
    BlobStore::open(&root, options(1_000_000, 1 << 30))
        .unwrap()
        .close()
        .await;
    volumes_on(&root, volumes.path());
    let store = BlobStore::open(&root, options(1_000_000, 1 << 30)).unwrap();
    let mut keys = Vec::new();
    for i in 0..20u8 {
        keys.push(put(&store, &pattern(3000, i)).await);
    }
    let hog = disk.fill_leaving("hog", 0);
    // A refused delete leaves the index refusing writes until it finds room: the puts after
    // it are refused too.
    let mut refused_deletes = Vec::new();
    for key in keys.iter().take(3) {
        if store.delete(*key).await.is_err() {
            refused_deletes.push(*key);
        }
    }
    let mut refused_puts = Vec::new();
    for i in 0..5u8 {
        let key = store.new_key().unwrap();
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::from(pattern(3000, 200 + i))).await.unwrap();
        if w.commit().await.is_err() {
            refused_puts.push(key);
        }
    }
    assert!(
        !refused_puts.is_empty() && !refused_deletes.is_empty(),
        "{} puts and {} deletes refused",
        refused_puts.len(),
        refused_deletes.len()
    );
    std::fs::remove_file(hog).unwrap();
    // The index writer finds room again by itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let key = store.new_key().unwrap();
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::from(pattern(3000, 77))).await.unwrap();
        if w.commit().await.is_ok() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "writes never resumed");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let copy = tempfile::tempdir().unwrap();
    crash_copy(&root, copy.path());
    store.close().await;
    let store = BlobStore::open(copy.path(), options(1_000_000, 1 << 30)).unwrap();
    for key in &refused_puts {
        assert!(
            store.stat(*key).unwrap().is_none(),
            "a refused put is there"
        );
    }
    for key in &refused_deletes {
        assert!(
            store.stat(*key).unwrap().is_some(),
            "a refused delete took effect"
        );
    }
    store.close().await;
}

/// Deletes while compaction runs over and over and readers read, then crash copies,
/// reopens with and without checkpoints, and a full rebuild: no wrong bytes, no deleted file
/// back, and the counters agree with the map.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deletes_racing_compaction_survive_crashes_and_rebuilds() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |checkpoints| {
        let mut o = options(checkpoints, 40_000);
        o.volumes.as_mut().unwrap().compact_threshold = 0.05;
        o
    };
    let store = BlobStore::open(dir.path(), opts(5)).unwrap();
    let mut files = Vec::new();
    for i in 0..240u32 {
        let data = pattern(2000 + (i as usize * 37) % 3000, i as u8);
        files.push((put(&store, &data).await, data));
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let compactor = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                store.compact_now().unwrap();
            }
        })
    };
    let readers: Vec<_> = (0..2)
        .map(|r| {
            let (store, files, stop) = (store.clone(), files.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = r;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (key, data) = &files[i % files.len()];
                    if let Ok(got) = read(&store, *key).await {
                        assert_eq!(&got, data, "wrong bytes");
                    }
                    i += 7;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let (mut kept, mut deleted) = (Vec::new(), Vec::new());
    for (i, (key, data)) in files.iter().enumerate() {
        if i % 3 == 0 {
            kept.push((*key, data.clone()));
        } else {
            assert!(store.delete(*key).await.unwrap());
            deleted.push(*key);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    compactor.await.unwrap();
    for r in readers {
        r.await.unwrap();
    }
    let check = |store: &BlobStore| {
        for key in &deleted {
            assert!(
                store.stat(*key).unwrap().is_none(),
                "a deleted file came back"
            );
        }
        let listed = store.keys_after(None, 100_000).unwrap().len() as u64;
        assert_eq!(listed, store.files());
        assert_eq!(store.volume_stats().unwrap().live_records, store.files());
    };
    check(&store);
    let copy = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), copy.path());
    store.close().await;
    for (round, checkpoints) in [(0, 3), (1, 1_000_000), (2, 3)] {
        let store = BlobStore::open(copy.path(), opts(checkpoints)).unwrap();
        check(&store);
        for (key, data) in &kept {
            assert_eq!(&read(&store, *key).await.unwrap(), data, "round {round}");
        }
        if round == 1 {
            common::compact(&store).await;
        }
        store.close().await;
    }
    damage_log(copy.path());
    let store = BlobStore::open(copy.path(), opts(3)).unwrap();
    assert!(store.volume_map_load().unwrap().rebuilt);
    check(&store);
    for (key, data) in &kept {
        assert_eq!(&read(&store, *key).await.unwrap(), data, "rebuilt");
    }
    store.close().await;
}

fn volume_path(root: &Path, id: u64) -> std::path::PathBuf {
    root.join("volumes").join(format!("{id:016x}.vol"))
}

/// A volume that cannot be read while the map is rebuilt (missing for a while) is read from
/// its start once it is back: its files are not forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_missing_during_a_rebuild_is_read_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1_000_000, 20_000)).unwrap();
    let mut files = Vec::new();
    for i in 0..12u8 {
        let data = pattern(3000, i);
        files.push((put(&store, &data).await, data));
    }
    let in_first: Vec<_> = files
        .iter()
        .filter(|(key, _)| place(&store, *key).0 == 1)
        .cloned()
        .collect();
    assert!(!in_first.is_empty());
    store.close().await;
    let aside = dir.path().join("v1.aside");
    std::fs::rename(volume_path(dir.path(), 1), &aside).unwrap();
    damage_last_log(dir.path());
    let store = BlobStore::open(dir.path(), options(1_000_000, 20_000)).unwrap();
    assert!(store.volume_map_load().unwrap().rebuilt);
    store.close().await;
    std::fs::rename(&aside, volume_path(dir.path(), 1)).unwrap();
    let store = BlobStore::open(dir.path(), options(1_000_000, 20_000)).unwrap();
    for (key, data) in &in_first {
        assert_eq!(&read(&store, *key).await.unwrap(), data);
    }
    assert_eq!(store.volume_stats().unwrap().live_records, store.files());
    store.close().await;
}

/// A record damaged in its body is repaired (a copy), the copy's volume compacted away (a
/// copy of the copy); a full rebuild then finds the damaged original first, and must still
/// end at the newest copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_rebuild_follows_a_repair_through_a_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1_000_000, 20_000)).unwrap();
    let mut files = Vec::new();
    for i in 0..6u8 {
        let data = pattern(3000, i);
        files.push((put(&store, &data).await, data));
    }
    while place(&store, files.last().unwrap().0).0 == 1 {
        let data = pattern(3000, 9);
        files.push((put(&store, &data).await, data));
    }
    let (key, data) = files[1].clone();
    let record = store.stat(key).unwrap().unwrap();
    let Location::Volume {
        volume,
        offset,
        body,
    } = record.location
    else {
        panic!("{key} has a data file");
    };
    store.close().await;
    flip(dir.path(), volume, offset + u64::from(body) + 100);
    let store = BlobStore::open(dir.path(), options(1_000_000, 20_000)).unwrap();
    assert!(read(&store, key).await.is_err());
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(data.clone())).await.unwrap();
    w.commit().await.unwrap();
    let repaired_in = place(&store, key).0;
    assert_ne!(repaired_in, volume);
    // The copy's volume fills with files that die, seals, and is compacted away.
    let mut fill = Vec::new();
    while place(&store, fill.last().copied().unwrap_or(key)).0 == repaired_in {
        fill.push(put(&store, &pattern(3000, 77)).await);
    }
    for k in &fill {
        if place(&store, *k).0 == repaired_in {
            assert!(store.delete(*k).await.unwrap());
        }
    }
    common::compact(&store).await;
    assert!(place(&store, key).0 > repaired_in, "moved by compaction");
    store.close().await;
    damage_last_log(dir.path());
    let store = BlobStore::open(dir.path(), options(1_000_000, 20_000)).unwrap();
    assert!(store.volume_map_load().unwrap().rebuilt);
    assert_eq!(read(&store, key).await.unwrap(), data);
    store.close().await;
}
