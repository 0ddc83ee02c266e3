//! Faults an outside review found in the volume store, each kept as a test: block size changes,
//! damaged headers, full disks, lost indexes, descriptors, and repairs after settings change.

use bytes::Bytes;
use sluice_blob::record::Location;
use sluice_blob::{BlobError, BlobStore, BlobStoreOptions};
use sluice_proto::BlobKey;

mod common;
use common::{pattern, put, volume_of, with_volumes as options};

/// A whole file, read through (the hot cache emptied first, so the disk is what is read).
async fn read(store: &BlobStore, key: BlobKey) -> Result<Vec<u8>, BlobError> {
    store.hot().remove(&key);
    common::read_range(store, key, 0, u64::MAX).await
}

/// A closed store with two files of 15 KB, each in a volume of its own (10 KB volumes).
async fn two_files_in_two_volumes() -> (tempfile::TempDir, BlobKey, BlobKey) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 10_000)).unwrap();
    let a = put(&store, &pattern(15_000, 1)).await;
    let b = put(&store, &pattern(15_000, 2)).await;
    assert_ne!(volume_of(&store, a), volume_of(&store, b));
    store.close().await;
    (dir, a, b)
}

/// The store's block size is a setting (`block_size` in the config). After it changes, the
/// reopened active volume still has the old block size in its header, and `append` lays every
/// record out in the volume's block size, while the index records the writer's (new) block
/// size: a file acknowledged after the change cannot be read back.
#[tokio::test]
async fn a_file_written_after_a_block_size_change_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = BlobStore::open(dir.path(), options(1000, 1 << 30)).unwrap();
        put(&store, &pattern(3000, 1)).await;
        store.close().await;
    }
    let store = BlobStore::open(dir.path(), options(4096, 1 << 30)).unwrap();
    let data = pattern(10_000, 2);
    let key = put(&store, &data).await;
    assert_eq!(
        read(&store, key)
            .await
            .expect("an acknowledged file reads back"),
        data
    );
    store.close().await;
}

/// The same mismatch through compaction: records of the old block size are copied into a
/// volume of the new one, keeping their old `block_size` in the index; every moved file larger
/// than one block is then unreadable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_after_a_block_size_change_keeps_files_readable() {
    let dir = tempfile::tempdir().unwrap();
    let mut live = Vec::new();
    {
        let store = BlobStore::open(dir.path(), options(1000, 40_000)).unwrap();
        for i in 0..20u8 {
            let data = pattern(5000, i);
            let key = put(&store, &data).await;
            if i % 2 == 0 {
                store.delete(key).await.unwrap();
            } else {
                live.push((key, data));
            }
        }
        store.close().await;
    }
    // Volumes of 40 KB with the old size; the writer rolls to a volume of the new size.
    let store = BlobStore::open(dir.path(), options(4096, 40_000)).unwrap();
    for i in 0..10u8 {
        put(&store, &pattern(5000, 100 + i)).await;
    }
    let first = volume_of(&store, live[0].0);
    let compacted = common::compact(&store).await;
    assert!(compacted > 0);
    assert_ne!(volume_of(&store, live[0].0), first, "moved");
    for (key, data) in &live {
        assert_eq!(
            &read(&store, *key)
                .await
                .expect("a compacted file reads back"),
            data
        );
    }
    store.close().await;
}

/// One flipped bit in a volume's 32-byte header and the store no longer opens at all: every
/// file on the node, in every volume and data file, is unavailable until an operator acts.
/// A damaged volume should be treated like a short one (its files repaired from peers).
#[tokio::test]
async fn a_damaged_volume_header_does_not_stop_the_store_opening() {
    let (dir, a, b) = two_files_in_two_volumes().await;
    let path = sluice_blob::volume_paths(dir.path()).unwrap().remove(0);
    let mut raw = std::fs::read(&path).unwrap();
    raw[9] ^= 1;
    std::fs::write(&path, raw).unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 10_000))
        .expect("the store opens with one damaged volume");
    assert_eq!(read(&store, b).await.unwrap(), pattern(15_000, 2));
    assert!(matches!(
        read(&store, a).await,
        Err(BlobError::Corrupt { .. })
    ));
    store.close().await;
}

/// A volume shorter than the index says (a disk fault) makes every compaction pass fail at
/// it: the pass ends there with an error, so no other volume is compacted again, ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_volume_does_not_stop_compaction_of_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 40_000)).unwrap();
    let mut keys = Vec::new();
    for i in 0..30u8 {
        keys.push(put(&store, &pattern(5000, i)).await);
    }
    // Every file of the first two volumes but one dies.
    let (v1, v2) = (volume_of(&store, keys[0]), volume_of(&store, keys[8]));
    assert_ne!(v1, v2);
    let mut survivor_v2 = None;
    for key in &keys {
        let v = volume_of(&store, *key);
        if v == v1 {
            store.delete(*key).await.unwrap();
        } else if v == v2 {
            if survivor_v2.is_none() {
                survivor_v2 = Some(*key);
            } else {
                store.delete(*key).await.unwrap();
            }
        }
    }
    // Cut volume 1 (the most dead) short of what the index committed.
    let path = dir.path().join("volumes").join(format!("{v1:016x}.vol"));
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let compactor = store.clone();
    let result = tokio::task::spawn_blocking(move || compactor.compact_now())
        .await
        .unwrap();
    let survivor = survivor_v2.unwrap();
    assert_ne!(
        volume_of(&store, survivor),
        v2,
        "volume {v2} was not compacted: the pass said {result:?}"
    );
    store.close().await;
}

/// `volume_max_file = 0` is documented to turn volumes off. A node that stored small files in
/// volumes and is restarted so can no longer read any of them (BadRecord, a 500).
#[tokio::test]
async fn turning_volumes_off_keeps_files_in_volumes_readable() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(3000, 7);
    let key;
    {
        let store = BlobStore::open(dir.path(), options(1000, 1 << 30)).unwrap();
        key = put(&store, &data).await;
        store.close().await;
    }
    let off = BlobStoreOptions {
        block_size: 1000,
        volumes: None,
        ..BlobStoreOptions::default()
    };
    let store = BlobStore::open(dir.path(), off).unwrap();
    assert_eq!(
        read(&store, key).await.expect("readable with volumes off"),
        data
    );
    store.close().await;
}

/// A damaged volume record is repaired by a new record (`BlobWriter::allow_repair`). When the
/// file is now above `max_file` (the setting was lowered since it was stored), the commit
/// decides it is not for a volume, spends its bytes on a temp file, and then refuses the
/// repair: such a file can never be repaired from its peers.
#[tokio::test]
async fn a_volume_record_above_a_lowered_max_file_can_still_be_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(20_000, 3);
    let key;
    {
        let store = BlobStore::open(dir.path(), options(1000, 1 << 30)).unwrap();
        key = put(&store, &data).await;
        store.close().await;
    }
    let on_disk = sluice_blob::locate(dir.path(), &key).unwrap().unwrap();
    let mut raw = std::fs::read(&on_disk.path).unwrap();
    raw[on_disk.first_block as usize + 5] ^= 0x40;
    std::fs::write(&on_disk.path, raw).unwrap();
    let mut lowered = options(1000, 1 << 30);
    lowered.volumes.as_mut().unwrap().max_file = 8 << 10;
    let store = BlobStore::open(dir.path(), lowered).unwrap();
    assert!(matches!(
        read(&store, key).await,
        Err(BlobError::Corrupt { .. })
    ));
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.allow_repair();
    w.write(Bytes::from(data.clone())).await.unwrap();
    w.commit().await.expect("the repair is taken");
    assert_eq!(read(&store, key).await.unwrap(), data);
    store.close().await;
}

/// While the disk is full, the writer tries to start a new volume after every batch once the
/// active one is past its size; each try that fails after `create_new` leaves an empty
/// `.vol` file behind (and burns an id). They pile up until a restart.
#[tokio::test]
async fn a_full_disk_leaves_no_empty_volume_files_behind() {
    let disk = sluice_testkit::small_disk::SmallDisk::mount("8m");
    let root = disk.path().join("store");
    let store = BlobStore::open(&root, options(1000, 31_000)).unwrap();
    put(&store, &pattern(30_000, 1)).await;
    // No page left: the volume's last page still has room for a small record (which takes it
    // past its size), but a new volume's header needs a page of its own.
    let hog = disk.fill_leaving("hog", 0);
    for i in 0..10u8 {
        let key = BlobKey::from_bytes([i + 100; 16]);
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::from(pattern(300, i))).await.unwrap();
        let _ = w.commit().await;
    }
    let sizes: Vec<u64> = sluice_blob::volume_paths(&root)
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    std::fs::remove_file(hog).unwrap();
    store.close().await;
    let empty = sizes.iter().filter(|len| **len < 32).count();
    assert_eq!(empty, 0, "{empty} empty volume files: {sizes:?}");
}

/// A disk filled by uploads of small files: deleting files is how an operator makes room.
/// With data files, a delete frees its file's space at once. With volumes, a delete must first
/// append a delete record, which a full disk refuses; and the space of deleted records only
/// comes back through compaction, which needs room to copy the live records first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_files_on_a_full_disk_makes_room_again() {
    let disk = sluice_testkit::small_disk::SmallDisk::mount("4m");
    let root = disk.path().join("store");
    let store = BlobStore::open(&root, options(1000, 256 << 10)).unwrap();
    let mut keys = Vec::new();
    for i in 0..2000u32 {
        let key = BlobKey::from_bytes({
            let mut b = [7u8; 16];
            b[..4].copy_from_slice(&i.to_le_bytes());
            b
        });
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::from(pattern(20_000, i as u8)))
            .await
            .unwrap();
        match w.commit().await {
            Ok(_) => keys.push(key),
            Err(_) => break,
        }
    }
    assert!(keys.len() > 10, "{} stored", keys.len());
    let mut failed = Vec::new();
    for key in keys.iter().step_by(2) {
        if let Err(e) = store.delete(*key).await {
            failed.push(e.to_string());
        }
    }
    let compactor = store.clone();
    let compacted = tokio::task::spawn_blocking(move || compactor.compact_now())
        .await
        .unwrap();
    let free = store.free_bytes().unwrap();
    store.close().await;
    assert!(
        failed.is_empty(),
        "{} of {} deletes failed on a full disk: {:?}; then {free} bytes free, compaction: {compacted:?}",
        failed.len(),
        keys.len().div_ceil(2),
        failed.first()
    );
    assert!(
        free > 1 << 20,
        "only {free} bytes free after deleting half the files and compacting ({compacted:?})"
    );
}

/// Every volume ever read keeps an open file in `Volumes::readers`, for the life of the
/// process: nothing bounds it. A node with more volumes than its open-file limit (1024 by
/// default; 1 TiB of small files in the default 1 GiB volumes) runs out of descriptors once
/// reads have touched them all, and then fails accepts, uploads and reads alike.
#[tokio::test]
async fn reading_many_volumes_keeps_open_files_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 4096)).unwrap();
    let mut keys = Vec::new();
    for i in 0..1500u32 {
        keys.push(put(&store, &pattern(5000, i as u8)).await);
    }
    assert!(sluice_blob::volume_paths(dir.path()).unwrap().len() >= 1500);
    let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
    let before = fds();
    for key in &keys {
        read(&store, *key).await.unwrap();
    }
    let after = fds();
    store.close().await;
    assert!(
        after < before + 256,
        "{} files held open after reading {} volumes",
        after - before,
        keys.len()
    );
}

/// A flipped byte in the header of a *dead* record (a deleted file's) harms no file, but
/// compaction's scan stops there: the live records after it are never moved, so the volume
/// is never dropped, and every pass scans it again for nothing, forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_dead_record_does_not_keep_its_volume_forever() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 40_000)).unwrap();
    let mut keys = Vec::new();
    for i in 0..12u8 {
        keys.push(put(&store, &pattern(5000, i)).await);
    }
    let v1 = volume_of(&store, keys[0]);
    store.delete(keys[0]).await.unwrap();
    store.delete(keys[1]).await.unwrap();
    store.delete(keys[2]).await.unwrap();
    store.delete(keys[3]).await.unwrap();
    let path = dir.path().join("volumes").join(format!("{v1:016x}.vol"));
    // The first record (keys[0], deleted) starts right after the volume header; flip a byte of
    // its key.
    let mut raw = std::fs::read(&path).unwrap();
    raw[32 + 10] ^= 1;
    std::fs::write(&path, raw).unwrap();
    let compactor = store.clone();
    let done = tokio::task::spawn_blocking(move || compactor.compact_now())
        .await
        .unwrap();
    let still = path.exists();
    for (i, key) in keys.iter().enumerate().skip(4) {
        assert_eq!(read(&store, *key).await.unwrap(), pattern(5000, i as u8));
    }
    store.close().await;
    assert!(!still, "volume {v1} outlived its compaction ({done:?})");
}

/// Not a fault found: a check that the volume rows' live counts agree with the index after
/// puts, duplicate puts, deletes, repairs and compaction (they did, in this review).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_rows_agree_with_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 30_000)).unwrap();
    let mut keys = Vec::new();
    for i in 0..80u32 {
        let data = pattern(1000 + (i as usize * 37) % 6000, i as u8);
        let key = put(&store, &data).await;
        // The same file again: a no-op.
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::from(data.clone())).await.unwrap();
        w.commit().await.unwrap();
        keys.push((key, data));
    }
    for (i, (key, data)) in keys.iter().enumerate() {
        if i % 3 == 0 {
            store.delete(*key).await.unwrap();
        } else if i % 5 == 0 {
            let mut w = store.writer(*key, "image/jpeg".into(), u64::MAX);
            w.allow_repair();
            w.write(Bytes::from(data.clone())).await.unwrap();
            w.commit().await.unwrap();
        }
    }
    common::compact(&store).await;
    let check = |store: &BlobStore| {
        let mut live = 0u64;
        let mut after = None;
        loop {
            let page = store.keys_after(after.as_ref(), 100).unwrap();
            let Some(last) = page.last().copied() else {
                break;
            };
            for key in page {
                if matches!(
                    store.stat(key).unwrap().unwrap().location,
                    Location::Volume { .. }
                ) {
                    live += 1;
                }
            }
            after = Some(last);
        }
        assert_eq!(store.volume_stats().unwrap().live_records, live);
    };
    check(&store);
    store.close().await;
    let store = BlobStore::open(dir.path(), options(1000, 30_000)).unwrap();
    check(&store);
    for (i, (key, data)) in keys.iter().enumerate() {
        if i % 3 != 0 {
            assert_eq!(&read(&store, *key).await.unwrap(), data);
        }
    }
    store.close().await;
}

/// A lost (or replaced) index next to volumes full of files: the store refuses to open and
/// touches nothing, rather than taking the volumes for debris and removing them.
#[tokio::test]
async fn a_lost_index_stops_the_open_and_leaves_every_volume_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut stored = Vec::new();
    {
        let store = BlobStore::open(dir.path(), options(1000, 20_000)).unwrap();
        for i in 0..10u8 {
            let data = pattern(6000, i);
            stored.push((put(&store, &data).await, data));
        }
        store.close().await;
    }
    let index = dir.path().join("index.redb");
    let kept = dir.path().join("index.kept");
    std::fs::rename(&index, &kept).unwrap();
    let volumes = sluice_blob::volume_paths(dir.path()).unwrap();
    let sizes: Vec<u64> = volumes
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    match BlobStore::open(dir.path(), options(1000, 20_000)) {
        Err(BlobError::WrongFormat(why)) => assert!(why.contains("index"), "{why}"),
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("opened with a new index beside volumes full of files"),
    }
    let after: Vec<u64> = sluice_blob::volume_paths(dir.path())
        .unwrap()
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect();
    assert_eq!(after, sizes, "no volume was touched");
    // The index put back: everything is there.
    std::fs::remove_file(&index).unwrap();
    std::fs::rename(&kept, &index).unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 20_000)).unwrap();
    for (key, data) in &stored {
        assert_eq!(&read(&store, *key).await.unwrap(), data);
    }
    store.close().await;
}

/// A volume file that is not the volume its name says (restored from elsewhere, say): its
/// records are refused as damaged, never served as another file's bytes.
#[tokio::test]
async fn a_volume_under_another_volumes_name_is_refused_as_damaged() {
    let (dir, a, b) = two_files_in_two_volumes().await;
    let paths = sluice_blob::volume_paths(dir.path()).unwrap();
    // Volume 1's bytes under volume 2's name: the same layout, so every block checksum holds.
    std::fs::copy(&paths[0], &paths[1]).unwrap();
    let store = BlobStore::open(dir.path(), options(1000, 10_000)).unwrap();
    assert_eq!(read(&store, a).await.unwrap(), pattern(15_000, 1));
    assert!(matches!(
        read(&store, b).await,
        Err(BlobError::Corrupt { .. })
    ));
    store.close().await;
}
