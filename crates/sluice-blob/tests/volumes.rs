//! The blob store with volumes, on a real directory: small files packed into volumes, group
//! commit, deletes, restarts, damage and repair, full disks, and compaction under load.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_blob::record::Location;
use sluice_blob::volume::RecordKind;
use sluice_blob::volume_file::VolumeFile;
use sluice_blob::{BlobError, BlobStore, BlobStoreOptions};
use sluice_proto::BlobKey;
use sluice_testkit::small_disk::SmallDisk;

/// How often a test re-checks a condition it waits for.
const POLL: Duration = Duration::from_millis(50);

mod common;
use common::{pattern, put, read_range as read, volume_of};

/// Volumes of `volume_size`, 1000-byte blocks.
fn volumes_of(volume_size: u64) -> BlobStoreOptions {
    common::with_volumes(1000, volume_size)
}

fn records_on_disk(
    root: &std::path::Path,
) -> Vec<(std::path::PathBuf, sluice_blob::volume::Found)> {
    let mut out = Vec::new();
    for path in sluice_blob::volume_paths(root).unwrap() {
        for found in VolumeFile::open(&path, false).unwrap().records {
            out.push((path.clone(), found));
        }
    }
    out
}

#[tokio::test]
async fn small_files_share_a_volume_big_ones_keep_data_files_and_ranges_read_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    let mut small = Vec::new();
    for i in 0..50u8 {
        let data = pattern(100 + usize::from(i) * 97, i);
        small.push((put(&store, &data).await, data));
    }
    let empty = put(&store, b"").await;
    let big = pattern(200_000, 9);
    let big_key = put(&store, &big).await;

    assert_eq!(sluice_blob::volume_paths(dir.path()).unwrap().len(), 1);
    assert_eq!(
        sluice_blob::data_file_paths(dir.path()).unwrap().len(),
        1,
        "only the file above max_file has a data file"
    );
    assert_eq!(
        store.stat(big_key).unwrap().unwrap().location,
        Location::DataFile
    );
    for (key, data) in &small {
        volume_of(&store, *key);
        assert_eq!(&read(&store, *key, 0, u64::MAX).await.unwrap(), data);
        let len = data.len() as u64;
        assert_eq!(
            read(&store, *key, len / 3, len - 1).await.unwrap(),
            &data[(len / 3) as usize..(len - 1) as usize],
            "a range across block edges"
        );
    }
    assert!(read(&store, empty, 0, u64::MAX).await.unwrap().is_empty());
    assert_eq!(read(&store, big_key, 0, u64::MAX).await.unwrap(), big);
    let stats = store.volume_stats().unwrap();
    assert_eq!((stats.volumes, stats.live_records), (1, 51));
    assert_eq!(stats.dead_bytes, 0);
    assert_eq!(store.files(), 52);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_share_one_fdatasync_per_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(5000, i as u8);
            (put(&store, &data).await, data)
        }));
    }
    let mut stored = Vec::new();
    for t in tasks {
        stored.push(t.await.unwrap());
    }
    let stats = store.volume_stats().unwrap();
    assert_eq!(stats.records, 200);
    assert!(
        stats.batches < 200,
        "200 concurrent uploads took {} batches",
        stats.batches
    );
    for (key, data) in stored {
        assert_eq!(read(&store, key, 0, u64::MAX).await.unwrap(), data);
    }
    store.close().await;
}

#[tokio::test]
async fn a_restart_serves_every_file_and_cuts_what_the_index_never_committed() {
    let dir = tempfile::tempdir().unwrap();
    let mut stored = Vec::new();
    {
        let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
        for i in 0..10u8 {
            let data = pattern(3000, i);
            stored.push((put(&store, &data).await, data));
        }
        store.close().await;
    }
    // What a crash after a batch's fdatasync and before its index commit leaves: whole
    // records the index never named (nobody was told they were stored), then a torn one.
    let path = sluice_blob::volume_paths(dir.path()).unwrap().remove(0);
    let committed = std::fs::metadata(&path).unwrap().len();
    let stray = BlobKey::from_bytes([7; 16]);
    let mut tail = Vec::new();
    for (i, len) in [(1u64, 4000usize), (2, 2500)] {
        let data = pattern(len, 42);
        let header = sluice_blob::volume::RecordHeader {
            kind: RecordKind::Put,
            key: stray,
            length: len as u64,
            sequence: 1000 + i,
            meta: Vec::new(),
        };
        sluice_blob::volume::encode_record(&header, &data, 1000, &mut tail);
    }
    tail.truncate(tail.len() - 700);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(&tail).unwrap();
    }

    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        committed,
        "bytes past the committed length are cut"
    );
    assert!(store.stat(stray).unwrap().is_none());
    for (key, data) in &stored {
        assert_eq!(&read(&store, *key, 0, u64::MAX).await.unwrap(), data);
    }
    let next = pattern(1234, 77);
    let key = put(&store, &next).await;
    match store.stat(key).unwrap().unwrap().location {
        Location::Volume { offset, .. } => {
            assert_eq!(offset, committed, "appends go on from there")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(read(&store, key, 0, u64::MAX).await.unwrap(), next);
    store.close().await;
}

#[tokio::test]
async fn a_volume_the_index_never_committed_is_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
        put(&store, b"one").await;
        store.close().await;
    }
    // A volume created just before a crash, with a record whose batch never committed.
    let stray = dir.path().join("volumes").join(format!("{:016x}.vol", 99));
    std::fs::copy(&sluice_blob::volume_paths(dir.path()).unwrap()[0], &stray).unwrap();
    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    assert!(!stray.exists());
    assert_eq!(store.volume_stats().unwrap().volumes, 1);
    store.close().await;
}

#[tokio::test]
async fn a_damaged_record_is_refused_and_a_repair_writes_it_anew() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    let data = pattern(4500, 3);
    let key = put(&store, &data).await;
    let neighbour = pattern(4500, 4);
    let other = put(&store, &neighbour).await;
    let before = store.stat(key).unwrap().unwrap();
    let (path, found) = records_on_disk(dir.path())
        .into_iter()
        .find(|(_, f)| f.header.key == key)
        .unwrap();
    // Flip a byte in the record's third block.
    let at = found.body_offset + 2 * 1004 + 10;
    let mut raw = std::fs::read(&path).unwrap();
    raw[at as usize] ^= 0x20;
    std::fs::write(&path, raw).unwrap();
    store.hot().remove(&key);

    match read(&store, key, 0, u64::MAX).await {
        Err(BlobError::Corrupt { key: k, block: 2 }) => assert_eq!(k, key),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        read(&store, key, 0, 2000).await.unwrap(),
        &data[..2000],
        "blocks before it still read"
    );
    assert_eq!(read(&store, other, 0, u64::MAX).await.unwrap(), neighbour);

    // A repair with other bytes is refused; with the right ones it is a new record.
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(pattern(4500, 5))).await.unwrap();
    assert!(matches!(w.commit().await, Err(BlobError::Conflict)));
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(data.clone())).await.unwrap();
    w.commit().await.unwrap();
    let after = store.stat(key).unwrap().unwrap();
    assert_ne!(after.location, before.location);
    assert_eq!(
        (after.size, after.sha256, after.created_ms),
        (before.size, before.sha256, before.created_ms)
    );
    assert_eq!(read(&store, key, 0, u64::MAX).await.unwrap(), data);
    let stats = store.volume_stats().unwrap();
    assert_eq!(stats.live_records, 2);
    assert!(stats.dead_bytes > 4500, "the damaged record is dead");
    store.close().await;
}

/// The record's header holds the file's type, digest and time, read on every lookup: damaged,
/// the file reads as damaged, and a peer's copy of its length writes it anew.
#[tokio::test]
async fn a_damaged_record_header_reads_as_damaged_and_a_repair_writes_it_anew() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    let data = pattern(4500, 6);
    let key = put(&store, &data).await;
    let neighbour = pattern(4500, 7);
    let other = put(&store, &neighbour).await;
    let (path, found) = records_on_disk(dir.path())
        .into_iter()
        .find(|(_, f)| f.header.key == key)
        .unwrap();
    // A flipped bit in the record's length field: its header checksum fails.
    let mut raw = std::fs::read(&path).unwrap();
    raw[found.offset as usize + 25] ^= 0x01;
    std::fs::write(&path, raw).unwrap();
    store.hot().remove(&key);

    assert!(matches!(
        read(&store, key, 0, u64::MAX).await,
        Err(BlobError::Corrupt { .. })
    ));
    assert_eq!(read(&store, other, 0, u64::MAX).await.unwrap(), neighbour);
    // A repair of another length is refused; the peer's copy goes in as a new record.
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(pattern(4000, 6))).await.unwrap();
    assert!(matches!(w.commit().await, Err(BlobError::Conflict)));
    let mut w = store.writer(key, "image/png".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(data.clone())).await.unwrap();
    w.commit().await.unwrap();
    let after = store.stat(key).unwrap().unwrap();
    assert_eq!(after.content_type, "image/png");
    assert!(after.sha256.is_some());
    assert_eq!(read(&store, key, 0, u64::MAX).await.unwrap(), data);
    store.close().await;
    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    assert_eq!(read(&store, key, 0, u64::MAX).await.unwrap(), data);
    assert_eq!(store.volume_stats().unwrap().live_records, 2);
    store.close().await;
}

#[tokio::test]
async fn deletes_leave_a_delete_record_and_dead_bytes_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    {
        let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
        for i in 0..10u8 {
            keys.push(put(&store, &pattern(2000, i)).await);
        }
        for key in &keys[..4] {
            assert!(store.delete(*key).await.unwrap());
        }
        assert!(
            !store.delete(keys[0]).await.unwrap(),
            "a second delete finds nothing"
        );
        let stats = store.volume_stats().unwrap();
        assert_eq!(stats.live_records, 6);
        assert!(stats.dead_bytes >= 4 * 2000);
        assert_eq!(store.files(), 6);
        store.close().await;
    }
    let deletes: Vec<BlobKey> = records_on_disk(dir.path())
        .into_iter()
        .filter(|(_, f)| f.header.kind == RecordKind::Delete)
        .map(|(_, f)| f.header.key)
        .collect();
    assert_eq!(&deletes[..4], &keys[..4]);

    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    for key in &keys[..4] {
        assert!(store.open_reader(*key).unwrap().is_none());
        assert!(store.is_deleted(*key).unwrap());
    }
    for (i, key) in keys.iter().enumerate().skip(4) {
        assert_eq!(
            read(&store, *key, 0, u64::MAX).await.unwrap(),
            pattern(2000, i as u8)
        );
    }
    // A deleted id never comes back.
    let mut w = store.writer(keys[0], "image/jpeg".into(), u64::MAX);
    w.write(Bytes::from(pattern(2000, 0))).await.unwrap();
    assert!(matches!(w.commit().await, Err(BlobError::Deleted)));
    assert_eq!(store.volume_stats().unwrap().live_records, 6);
    store.close().await;
}

#[tokio::test]
async fn a_store_written_before_volumes_opens_with_them_and_serves_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut old = Vec::new();
    {
        let options = BlobStoreOptions {
            volumes: None,
            ..volumes_of(1 << 30)
        };
        let store = BlobStore::open(dir.path(), options).unwrap();
        for i in 0..5u8 {
            let data = pattern(1500, i);
            old.push((put(&store, &data).await, data));
        }
        store.close().await;
    }
    let store = BlobStore::open(dir.path(), volumes_of(1 << 30)).unwrap();
    for (key, data) in &old {
        assert_eq!(
            store.stat(*key).unwrap().unwrap().location,
            Location::DataFile
        );
        assert_eq!(&read(&store, *key, 0, u64::MAX).await.unwrap(), data);
    }
    let new = put(&store, b"a new file").await;
    volume_of(&store, new);
    // Deleting an old file still removes its data file.
    assert!(store.delete(old[0].0).await.unwrap());
    assert_eq!(sluice_blob::data_file_paths(dir.path()).unwrap().len(), 4);
    store.close().await;
}

#[tokio::test]
async fn volumes_roll_over_at_their_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), volumes_of(50_000)).unwrap();
    let mut stored = Vec::new();
    for i in 0..40u8 {
        let data = pattern(5000, i);
        stored.push((put(&store, &data).await, data));
    }
    let paths = sluice_blob::volume_paths(dir.path()).unwrap();
    assert!(paths.len() >= 4, "{} volumes", paths.len());
    for path in &paths[..paths.len() - 1] {
        let len = std::fs::metadata(path).unwrap().len();
        assert!(
            (50_000..50_000 + 5100).contains(&len),
            "a sealed volume of {len} bytes"
        );
    }
    for (key, data) in &stored {
        assert_eq!(&read(&store, *key, 0, u64::MAX).await.unwrap(), data);
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_moves_live_records_while_reads_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), volumes_of(60_000)).unwrap();
    let mut stored = Vec::new();
    for i in 0..60u8 {
        let data = pattern(5000, i);
        stored.push((put(&store, &data).await, data));
    }
    let first = volume_of(&store, stored[0].0);
    // Half of every sealed volume dies.
    let mut live = Vec::new();
    for (i, (key, data)) in stored.into_iter().enumerate() {
        if i % 2 == 0 {
            assert!(store.delete(key).await.unwrap());
        } else {
            live.push((key, data));
        }
    }
    let before = store.volume_stats().unwrap();
    let on_disk_before: u64 = sluice_blob::volume_paths(dir.path())
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();

    // Readers and a writer run through the whole compaction; none may fail or see wrong bytes.
    let live = Arc::new(live);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for r in 0..3 {
        let (store, live, stop, reads) = (store.clone(), live.clone(), stop.clone(), reads.clone());
        load.push(tokio::spawn(async move {
            let mut i = r;
            while !stop.load(Ordering::Relaxed) {
                let (key, data) = &live[i % live.len()];
                store.hot().remove(key);
                assert_eq!(&read(&store, *key, 0, u64::MAX).await.unwrap(), data);
                reads.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::task::yield_now().await;
            }
            Vec::new()
        }));
    }
    {
        let (store, stop) = (store.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut written = Vec::new();
            let mut i = 0u8;
            while !stop.load(Ordering::Relaxed) {
                let data = pattern(3000, i);
                written.push((put(&store, &data).await, data));
                i = i.wrapping_add(1);
                tokio::task::yield_now().await;
            }
            written
        }));
    }
    let compacted = common::compact(&store).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = Vec::new();
    for task in load {
        written.extend(task.await.unwrap());
    }
    assert!(compacted >= 3, "{compacted} volumes compacted");
    assert!(reads.load(Ordering::Relaxed) > 0);
    assert!(
        !sluice_blob::volume_paths(dir.path())
            .unwrap()
            .iter()
            .any(|p| p.ends_with(format!("{first:016x}.vol")))
    );
    let after = store.volume_stats().unwrap();
    assert_eq!(after.compactions, compacted as u64);
    assert!(
        after.dead_bytes < before.dead_bytes / 2,
        "{after:?} after {before:?}"
    );
    for (key, data) in live.iter().chain(written.iter()) {
        assert_eq!(&read(&store, *key, 0, u64::MAX).await.unwrap(), data);
    }
    store.close().await;

    // And all of it after a restart, in less disk.
    let store = BlobStore::open(dir.path(), volumes_of(60_000)).unwrap();
    for (key, data) in live.iter().chain(written.iter()) {
        assert_eq!(&read(&store, *key, 0, u64::MAX).await.unwrap(), data);
    }
    let sealed_after: u64 = sluice_blob::volume_paths(dir.path())
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let written_bytes: u64 = written.iter().map(|(_, d)| d.len() as u64 + 200).sum();
    assert!(
        sealed_after < on_disk_before + written_bytes,
        "{sealed_after} bytes of volumes after compaction, {on_disk_before} before (+{written_bytes} written)"
    );
    store.close().await;
}

#[tokio::test]
async fn a_full_disk_refuses_uploads_keeps_the_volume_whole_and_resumes() {
    let disk = SmallDisk::mount("8m");
    let root = disk.path().join("store");
    let store = BlobStore::open(&root, volumes_of(1 << 30)).unwrap();
    let kept = pattern(5000, 1);
    let kept_key = put(&store, &kept).await;
    let path = sluice_blob::volume_paths(&root).unwrap().remove(0);
    let before = std::fs::metadata(&path).unwrap().len();
    let hog = disk.fill_leaving("hog", 4 << 10);
    let mut refused = 0;
    for i in 0..5u8 {
        let key = store.new_key().unwrap();
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::from(pattern(30_000, i))).await.unwrap();
        match w.commit().await {
            Err(BlobError::NoSpace) => refused += 1,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused > 0, "a full disk refused nothing");
    let len = std::fs::metadata(&path).unwrap().len();
    let opened = VolumeFile::open(&path, true).unwrap();
    assert_eq!(opened.tail, None, "no partial record is left");
    assert_eq!(opened.volume.len(), len);
    assert!(len >= before);
    std::fs::remove_file(hog).unwrap();
    // Room again: uploads resume without a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let again = pattern(30_000, 9);
    let key = loop {
        let key = store.new_key().unwrap();
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::from(again.clone())).await.unwrap();
        match w.commit().await {
            Ok(_) => break key,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "never resumed: {e}");
                tokio::time::sleep(POLL).await;
            }
        }
    };
    assert_eq!(read(&store, key, 0, u64::MAX).await.unwrap(), again);
    assert_eq!(read(&store, kept_key, 0, u64::MAX).await.unwrap(), kept);
    store.close().await;
    let store = BlobStore::open(&root, volumes_of(1 << 30)).unwrap();
    assert_eq!(read(&store, key, 0, u64::MAX).await.unwrap(), again);
    store.close().await;
}
