//! The volume map: loaded on open from the index logs and the volume records written after
//! the last checkpoint, or rebuilt from every volume when a log is damaged.

mod common;

use common::{crash_copy, index_logs, pattern, put, read_range};
use sluice_blob::{BlobError, BlobStore, BlobStoreOptions, VolumeOptions};
use sluice_proto::BlobKey;

fn options(checkpoint_entries: u64) -> BlobStoreOptions {
    let mut o = common::with_volumes(1024, 40_000);
    if let Some(v) = o.volumes.as_mut() {
        v.checkpoint_entries = checkpoint_entries;
    }
    o
}

async fn read(store: &BlobStore, key: BlobKey) -> Result<Vec<u8>, BlobError> {
    read_range(store, key, 0, u64::MAX).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_reloads_from_the_logs_and_the_records_after_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // 40 puts and 8 deletes: 48 log entries, checkpoints every 7, so the last 6 (deletes)
    // are past the last checkpoint.
    let store = BlobStore::open(dir.path(), options(7)).unwrap();
    let mut kept = Vec::new();
    let mut deleted = Vec::new();
    for i in 0..40u8 {
        let data = pattern(3000 + usize::from(i) * 7, i);
        let key = put(&store, &data).await;
        if i % 5 == 0 {
            deleted.push(key);
        } else {
            kept.push((key, data));
        }
    }
    // Deletes after their puts were checkpointed: the logs say the keys live; the delete
    // records (and the logs' entries past the checkpoint) say they do not.
    for key in &deleted {
        assert!(store.delete(*key).await.unwrap());
    }
    let copy = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), copy.path());
    store.close().await;

    let reopened = BlobStore::open(copy.path(), options(7)).unwrap();
    let load = reopened.volume_map_load().unwrap();
    assert!(load.from_logs > 0, "{load:?}");
    assert!(load.replayed > 0, "{load:?}");
    assert!(!load.rebuilt);
    assert_eq!(load.files, kept.len());
    for (key, data) in &kept {
        assert_eq!(&read(&reopened, *key).await.unwrap(), data);
    }
    for key in &deleted {
        assert!(reopened.stat(*key).unwrap().is_none(), "{key} came back");
    }
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_rebuilds_the_map_from_every_volume() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(4)).unwrap();
    let mut kept = Vec::new();
    for i in 0..30u8 {
        let data = pattern(5000, i);
        kept.push((put(&store, &data).await, data));
    }
    let (gone, _) = kept.remove(3);
    assert!(store.delete(gone).await.unwrap());
    store.close().await;
    // A flipped byte in the first entry of the first log.
    let log = index_logs(dir.path()).remove(0);
    let mut raw = std::fs::read(&log).unwrap();
    raw[20] ^= 0x10;
    std::fs::write(&log, raw).unwrap();

    let store = BlobStore::open(dir.path(), options(4)).unwrap();
    let load = store.volume_map_load().unwrap();
    assert!(load.rebuilt, "{load:?}");
    assert_eq!(load.files, kept.len());
    for (key, data) in &kept {
        assert_eq!(&read(&store, *key).await.unwrap(), data);
    }
    assert!(store.stat(gone).unwrap().is_none());
    store.close().await;
    // The rebuilt logs load alone next time.
    let store = BlobStore::open(dir.path(), options(4)).unwrap();
    let load = store.volume_map_load().unwrap();
    assert!(!load.rebuilt && load.replayed == 0, "{load:?}");
    assert_eq!(load.files, kept.len());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_during_compaction_keeps_every_file_once_and_no_deleted_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1_000_000)).unwrap();
    let mut kept = Vec::new();
    let mut deleted = Vec::new();
    for i in 0..40u8 {
        let data = pattern(4000, i);
        let key = put(&store, &data).await;
        if i % 2 == 0 {
            deleted.push(key);
        } else {
            kept.push((key, data));
        }
    }
    for key in &deleted {
        assert!(store.delete(*key).await.unwrap());
    }
    let compacted = common::compact(&store).await;
    assert!(compacted > 0);
    // After compaction, no checkpoint: the copies replay as moves, and the volumes they left
    // are gone.
    let copy = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), copy.path());
    store.close().await;
    let reopened = BlobStore::open(copy.path(), options(1_000_000)).unwrap();
    let load = reopened.volume_map_load().unwrap();
    assert_eq!(load.files, kept.len(), "{load:?}");
    for (key, data) in &kept {
        assert_eq!(&read(&reopened, *key).await.unwrap(), data);
    }
    for key in &deleted {
        assert!(reopened.stat(*key).unwrap().is_none());
    }
    let stats = reopened.volume_stats().unwrap();
    assert_eq!(stats.live_records, kept.len() as u64);
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_order_lists_files_in_volumes_and_data_files_together() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(8)).unwrap();
    let mut keys = Vec::new();
    for i in 0..10u8 {
        keys.push(put(&store, &pattern(2000, i)).await);
        // Above the volumes' 64 KiB limit: a data file.
        keys.push(put(&store, &pattern(70_000, i)).await);
    }
    keys.sort();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.keys_after(after.as_ref(), 3).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().copied();
        seen.extend(page);
    }
    assert_eq!(seen, keys);
    store.close().await;
}

#[test]
fn checkpoints_are_a_volume_option() {
    let o = VolumeOptions::default();
    assert_eq!(
        (o.checkpoint_entries, o.checkpoint_bytes),
        (64 << 10, 256 << 20)
    );
}

/// Large files make few entries: checkpoints also come every so many bytes, so a restart
/// after a crash never has a volume's worth of records to read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_come_by_bytes_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(1_000_000);
    if let Some(v) = o.volumes.as_mut() {
        v.checkpoint_bytes = 50_000;
    }
    let store = BlobStore::open(dir.path(), o.clone()).unwrap();
    let mut files = Vec::new();
    for i in 0..12u8 {
        let data = pattern(20_000, i);
        files.push((put(&store, &data).await, data));
    }
    let copy = tempfile::tempdir().unwrap();
    crash_copy(dir.path(), copy.path());
    store.close().await;
    let store = BlobStore::open(copy.path(), o).unwrap();
    let load = store.volume_map_load().unwrap();
    assert!(load.from_logs >= 9, "{load:?}");
    assert!(load.replayed <= 3, "{load:?}");
    for (key, data) in &files {
        assert_eq!(&read(&store, *key).await.unwrap(), data);
    }
    store.close().await;
}
