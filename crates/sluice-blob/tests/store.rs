//! The blob store's data files on a real directory: durability, checksums, ranges, reclaim,
//! recovery. Volumes are off here (every file gets its data file, as in stores from before
//! them, and as for files larger than a volume takes); `tests/volumes.rs` covers volumes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_blob::{BlobError, BlobStore, BlobStoreOptions};
use sluice_testkit::small_disk::SmallDisk;

mod common;
use common::{pattern, put_in_pieces as put, read_range as read_all};

/// How often a test re-checks a condition it waits for.
const POLL: Duration = Duration::from_millis(10);
const WAIT: Duration = Duration::from_secs(30);

fn data_files() -> BlobStoreOptions {
    BlobStoreOptions {
        volumes: None,
        ..BlobStoreOptions::default()
    }
}

fn small_blocks() -> BlobStoreOptions {
    BlobStoreOptions {
        block_size: 1000,
        ..data_files()
    }
}

fn tmp_entries(dir: &std::path::Path) -> usize {
    sluice_blob::temp_file_paths(dir).unwrap().len()
}

#[tokio::test]
async fn roundtrip_sizes_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    for (len, piece) in [
        (0usize, 1usize),
        (1, 1),
        (999, 7),
        (1000, 1000),
        (1001, 333),
        (5_000, 4096),
        (2_500_000, 1 << 20),
        (3_000_017, 3 << 20),
    ] {
        let data = pattern(len, len as u8);
        let key = put(&store, &data, piece).await;
        let meta = store.stat(key).unwrap().unwrap();
        assert_eq!(meta.size, len as u64);
        assert_eq!(meta.content_type, "image/jpeg");
        assert_eq!(
            read_all(&store, key, 0, len as u64).await.unwrap(),
            data,
            "len {len}"
        );
        for (a, b) in [
            (0, 1),
            (999, 1001),
            (len / 3, len / 2),
            (len.saturating_sub(1), len),
        ] {
            if a < b && b <= len {
                let got = read_all(&store, key, a as u64, b as u64).await.unwrap();
                assert_eq!(got, &data[a..b], "len {len} range {a}..{b}");
            }
        }
    }
    assert_eq!(store.files(), 8);
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[tokio::test]
async fn survives_reopen_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let a = put(&store, &pattern(70_000, 1), 10_000).await;
    let b = put(&store, &pattern(5, 2), 5).await;
    assert!(store.delete(b).await.unwrap());
    assert!(!store.delete(b).await.unwrap());
    store.close().await;

    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    assert_eq!((store.files(), store.bytes()), (1, 70_000));
    assert_eq!(
        read_all(&store, a, 0, 70_000).await.unwrap(),
        pattern(70_000, 1)
    );
    assert!(store.open_reader(b).unwrap().is_none());
}

#[tokio::test]
async fn delete_reclaims_the_data_file() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let key = put(&store, &pattern(200_000, 3), 65536).await;
    let files_before = sluice_blob::data_file_paths(dir.path()).unwrap().len();
    assert_eq!(files_before, 1);
    assert!(store.delete(key).await.unwrap());
    assert_eq!(sluice_blob::data_file_paths(dir.path()).unwrap().len(), 0);
    assert_eq!((store.files(), store.bytes()), (0, 0));
}

#[tokio::test]
async fn damaged_block_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let data = pattern(10_000, 9);
    let key = put(&store, &data, 10_000).await;
    // Flip one byte inside block 4 (logical bytes 4000..5000).
    let path = sluice_blob::data_file_paths(dir.path()).unwrap().remove(0);
    let mut raw = std::fs::read(&path).unwrap();
    let layout = sluice_blob::layout::BlockLayout::new(1000);
    raw[(layout.block_offset(4) + 10) as usize] ^= 0xff;
    std::fs::write(&path, raw).unwrap();

    assert!(matches!(
        read_all(&store, key, 4100, 4200).await,
        Err(BlobError::Corrupt { block: 4, .. })
    ));
    assert!(matches!(
        read_all(&store, key, 0, 10_000).await,
        Err(BlobError::Corrupt { block: 4, .. })
    ));
    // Blocks around it still read.
    assert_eq!(read_all(&store, key, 0, 4000).await.unwrap(), &data[..4000]);
    assert_eq!(
        read_all(&store, key, 5000, 10_000).await.unwrap(),
        &data[5000..]
    );
}

#[tokio::test]
async fn truncated_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let key = put(&store, &pattern(10_000, 9), 10_000).await;
    let path = sluice_blob::data_file_paths(dir.path()).unwrap().remove(0);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(5_000).unwrap();
    assert!(matches!(
        read_all(&store, key, 0, 10_000).await,
        Err(BlobError::Corrupt { .. })
    ));
}

#[tokio::test]
async fn abandoned_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let key = store.new_key().unwrap();
    let mut w = store.writer(key, "video/mp4".into(), u64::MAX);
    w.write(Bytes::from(pattern(3 << 20, 0))).await.unwrap();
    assert_eq!(
        tmp_entries(dir.path()),
        1,
        "big writes reach a temp file before commit"
    );
    drop(w);
    assert_eq!(tmp_entries(dir.path()), 0);
    assert!(store.stat(key).unwrap().is_none());
    assert_eq!(store.files(), 0);
}

#[tokio::test]
async fn limit_is_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let key = store.new_key().unwrap();
    let mut w = store.writer(key, "a/b".into(), 100);
    w.write(Bytes::from(vec![0; 60])).await.unwrap();
    assert!(matches!(
        w.write(Bytes::from(vec![0; 60])).await,
        Err(BlobError::TooLarge { limit: 100 })
    ));
}

#[tokio::test]
async fn reopen_clears_tmp_and_sweeps_orphans() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let kept = put(&store, &pattern(100, 1), 100).await;
    store.close().await;
    assert!(
        dir.path().join("CLEAN").exists(),
        "a clean close is recorded"
    );
    // Simulate a crash instead: no record of a clean close.
    std::fs::remove_file(dir.path().join("CLEAN")).unwrap();

    // What a crash can leave: a half-written temp file, and a placed but unindexed data file.
    let orphan_dir = dir.path().join("blobs/ff/ff");
    std::fs::create_dir_all(&orphan_dir).unwrap();
    let partial = orphan_dir.join("777777777777777777777777ba.tmp");
    let orphan = orphan_dir.join("777777777777777777777777aa");
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    for path in [&partial, &orphan] {
        std::fs::write(path, b"left by a crash").unwrap();
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }

    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    assert!(
        !dir.path().join("CLEAN").exists(),
        "the marker lasts only until the next open"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while orphan.exists() || partial.exists() {
        assert!(Instant::now() < deadline, "sweep did not remove the orphan");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        read_all(&store, kept, 0, 100).await.unwrap(),
        pattern(100, 1)
    );
}

#[tokio::test]
async fn refuses_a_foreign_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("something"), b"x").unwrap();
    assert!(matches!(
        BlobStore::open(dir.path(), data_files()),
        Err(BlobError::WrongFormat(_))
    ));
}

#[tokio::test]
async fn concurrent_writers_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(5_000, i);
            let key = put(&store, &data, 5_000).await;
            (key, data)
        }));
    }
    for t in tasks {
        let (key, data) = t.await.unwrap();
        assert_eq!(read_all(&store, key, 0, 5_000).await.unwrap(), data);
    }
    assert_eq!(store.files(), 64);
}

#[tokio::test]
async fn oplog_orders_puts_and_deletes_and_tombstones_refuse_resurrection() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let a = put(&store, b"a", 1).await;
    let b = put(&store, b"b", 1).await;
    assert!(store.delete(a).await.unwrap());
    // A delete of a key never seen here is still recorded (a peer deleted it).
    let never = sluice_proto::BlobKey::from_bytes([7; 16]);
    assert!(!store.delete(never).await.unwrap());

    use sluice_blob::OpKind::{Delete, Put};
    let log: Vec<_> = store
        .oplog_after(0, 100)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, e.kind, e.key))
        .collect();
    assert_eq!(
        log,
        vec![(1, Put, a), (2, Put, b), (3, Delete, a), (4, Delete, never)]
    );
    assert_eq!(store.oplog_after(2, 1).unwrap()[0].seq, 3);
    assert_eq!(store.oplog_head().unwrap(), 4);

    // A late replica of a deleted key is refused and leaves no file behind.
    let mut w = store.writer(a, "a/b".into(), u64::MAX);
    w.write(Bytes::from_static(b"a")).await.unwrap();
    assert!(matches!(w.commit().await, Err(BlobError::Deleted)));
    assert!(store.is_deleted(a).unwrap());
    assert_eq!(sluice_blob::data_file_paths(dir.path()).unwrap().len(), 1);
    // Putting an existing key again changes nothing.
    let mut w = store.writer(b, "a/b".into(), u64::MAX);
    w.write(Bytes::from_static(b"b")).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!((store.files(), store.oplog_head().unwrap()), (1, 4));

    store.close().await;
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    assert_eq!(
        store.oplog_head().unwrap(),
        4,
        "the oplog survives a restart"
    );
}

#[tokio::test]
async fn two_writers_of_one_key_do_not_trip_over_each_other() {
    // A replica pushed by a peer and the same file fetched by catch-up can arrive together.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let key = store.new_key().unwrap();
    let data = pattern(3 << 20, 4);
    let mut writers = Vec::new();
    for _ in 0..4 {
        let mut w = store.writer(key, "video/mp4".into(), u64::MAX);
        w.write(Bytes::from(data.clone())).await.unwrap();
        writers.push(w);
    }
    let commits = writers.into_iter().map(|w| tokio::spawn(w.commit()));
    for c in commits {
        c.await.unwrap().unwrap();
    }
    assert_eq!(store.files(), 1);
    assert_eq!(
        read_all(&store, key, 0, data.len() as u64).await.unwrap(),
        data
    );
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[tokio::test]
async fn the_sweep_never_touches_a_live_upload() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    let kept = put(&store, &pattern(10, 1), 10).await;
    // A large upload in progress: its temp file is on disk, its key not yet indexed.
    let key = store.new_key().unwrap();
    let mut w = store.writer(key, "video/mp4".into(), u64::MAX);
    w.write(Bytes::from(pattern(3 << 20, 2))).await.unwrap();
    assert_eq!(tmp_entries(dir.path()), 1);
    // And a leftover of a crashed one.
    let leftover = dir
        .path()
        .join("blobs/ff/ff/777777777777777777777777ba.0000beef.tmp");
    std::fs::create_dir_all(leftover.parent().unwrap()).unwrap();
    std::fs::write(&leftover, b"x").unwrap();

    assert_eq!(store.sweep_orphans().unwrap(), 1);
    assert!(!leftover.exists());
    assert_eq!(
        tmp_entries(dir.path()),
        1,
        "the live upload's temp file stays"
    );
    w.commit().await.unwrap();
    assert_eq!(store.sweep_orphans().unwrap(), 0);
    assert_eq!(
        read_all(&store, key, 0, 3 << 20).await.unwrap(),
        pattern(3 << 20, 2)
    );
    assert_eq!(read_all(&store, kept, 0, 10).await.unwrap(), pattern(10, 1));
}

async fn put_version(
    store: &BlobStore,
    key: sluice_proto::BlobKey,
    data: &[u8],
    state: sluice_blob::BlobState,
) -> sluice_blob::BlobMeta {
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.set_state(state);
    w.write(Bytes::copy_from_slice(data)).await.unwrap();
    w.commit().await.unwrap()
}

#[tokio::test]
async fn incomplete_blobs_grow_into_complete_ones_and_never_back() {
    use sluice_blob::BlobState::{Abandoned, Complete, Partial};
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let whole = pattern(10_000, 3);
    let key = store.new_key().unwrap();
    let total = whole.len() as u64;
    let head_before = store.oplog_head().unwrap();

    let first = put_version(&store, key, &whole[..3000], Partial { total }).await;
    assert_eq!(first.state, Partial { total });
    // A reader of the first prefix keeps reading it while a longer one replaces it.
    let old_reader = store.open_reader(key).unwrap().unwrap();
    let longer = put_version(&store, key, &whole[..6000], Partial { total }).await;
    assert_eq!(longer.size, 6000);
    let chunk = old_reader.read_chunk(0, 3000, u64::MAX).await.unwrap();
    assert_eq!(chunk.concat(), &whole[..3000]);
    // A late, shorter replica changes nothing and leaves no file behind.
    let kept = put_version(&store, key, &whole[..3000], Partial { total }).await;
    assert_eq!(kept.size, 6000);
    assert_eq!(
        read_all(&store, key, 0, u64::MAX).await.unwrap(),
        &whole[..6000]
    );
    assert_eq!(sluice_blob::data_file_paths(dir.path()).unwrap().len(), 0);
    assert_eq!(store.bytes(), 6000);

    let done = put_version(&store, key, &whole, Complete).await;
    assert_eq!(done.state, Complete);
    assert_eq!(read_all(&store, key, 0, u64::MAX).await.unwrap(), whole);
    assert_eq!((store.files(), store.bytes()), (1, total));
    // Only the complete data file is left, and nothing incomplete replaces it.
    assert_eq!(sluice_blob::data_file_paths(dir.path()).unwrap().len(), 1);
    let after = put_version(&store, key, &whole[..8000], Abandoned { total }).await;
    assert_eq!(after.state, Complete);
    assert_eq!(read_all(&store, key, 0, u64::MAX).await.unwrap(), whole);
    // Every adopted version is in the oplog (peers fetch the newer one); refused ones are not.
    assert_eq!(store.oplog_head().unwrap(), head_before + 3);
    let mut walked = 0;
    sluice_blob::walk_data_files(dir.path(), &mut |_, _| {
        walked += 1;
        Ok(true)
    })
    .unwrap();
    assert_eq!(walked, 1);
    assert_eq!(store.sweep_orphans().unwrap(), 0);
    store.close().await;
}

#[tokio::test]
async fn sweep_removes_a_stale_prefix_and_keeps_the_indexed_one() {
    use sluice_blob::BlobState::Partial;
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let whole = pattern(5000, 9);
    let key = store.new_key().unwrap();
    put_version(&store, key, &whole[..2000], Partial { total: 5000 }).await;
    let shard = sluice_blob::temp_file_paths(dir.path()).unwrap();
    assert!(shard.is_empty());
    // What a crash between adopting a longer prefix and unlinking the old one leaves.
    let names = |dir: &std::path::Path| {
        let mut v = Vec::new();
        for l1 in std::fs::read_dir(dir.join("blobs")).unwrap() {
            for l2 in std::fs::read_dir(l1.unwrap().path()).unwrap() {
                for f in std::fs::read_dir(l2.unwrap().path()).unwrap() {
                    v.push(f.unwrap().path());
                }
            }
        }
        v
    };
    let indexed = names(dir.path()).pop().unwrap();
    assert!(
        indexed
            .to_str()
            .unwrap()
            .ends_with(&format!("{key}.2000.part"))
    );
    let stale = indexed.with_file_name(format!("{key}.1000.part"));
    std::fs::copy(&indexed, &stale).unwrap();
    assert_eq!(store.sweep_orphans().unwrap(), 1);
    assert_eq!(names(dir.path()), vec![indexed]);
    assert_eq!(
        read_all(&store, key, 0, u64::MAX).await.unwrap(),
        &whole[..2000]
    );
    store.close().await;
}

#[tokio::test]
async fn an_evicted_key_can_be_stored_again_but_a_deleted_one_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let data = pattern(3000, 1);
    let key = put(&store, &data, 700).await;
    let head = store.oplog_head().unwrap();
    assert!(store.evict(key).await.unwrap());
    assert!(store.open_reader(key).unwrap().is_none());
    assert_eq!((store.files(), store.bytes()), (0, 0));
    assert_eq!(
        store.oplog_head().unwrap(),
        head,
        "a cache's evictions are not logged"
    );
    assert!(!store.is_deleted(key).unwrap());
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.write(Bytes::from(data.clone())).await.unwrap();
    w.commit().await.unwrap();
    assert_eq!(read_all(&store, key, 0, u64::MAX).await.unwrap(), data);
    assert!(store.delete(key).await.unwrap());
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    w.write(Bytes::from(data)).await.unwrap();
    assert!(matches!(w.commit().await, Err(BlobError::Deleted)));
    store.close().await;
}

async fn write_again(
    store: &BlobStore,
    key: sluice_proto::BlobKey,
    data: &[u8],
    setup: impl FnOnce(&mut sluice_blob::BlobWriter),
) -> Result<sluice_blob::BlobMeta, BlobError> {
    let mut w = store.writer(key, "text/html".into(), u64::MAX);
    setup(&mut w);
    w.write(Bytes::copy_from_slice(data)).await.unwrap();
    w.commit().await
}

#[tokio::test]
async fn a_complete_id_never_takes_other_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let data = pattern(5000, 1);
    let key = put(&store, &data, 700).await;
    let recorded = store.stat(key).unwrap().unwrap();
    assert_eq!(
        recorded.sha256.unwrap().to_vec(),
        <sha2::Sha256 as sha2::Digest>::digest(&data).to_vec(),
        "the index records the SHA-256 of the bytes"
    );
    let path = sluice_blob::data_file_paths(dir.path()).unwrap().remove(0);
    let on_disk = std::fs::read(&path).unwrap();

    // Other bytes (even of the same length): refused, and the data file is untouched.
    let forged = pattern(5000, 2);
    let refused = write_again(&store, key, &forged, |_| {}).await;
    assert!(matches!(refused, Err(BlobError::Conflict)), "{refused:?}");
    let refused = write_again(&store, key, &forged, |w| w.allow_repair()).await;
    assert!(matches!(refused, Err(BlobError::Conflict)), "{refused:?}");
    assert_eq!(std::fs::read(&path).unwrap(), on_disk);
    assert_eq!(store.stat(key).unwrap().unwrap(), recorded);
    assert_eq!(read_all(&store, key, 0, u64::MAX).await.unwrap(), data);
    // The same bytes again: a no-op.
    let again = write_again(&store, key, &data, |_| {}).await.unwrap();
    assert_eq!(again, recorded);
    assert_eq!(store.files(), 1);
    assert_eq!(
        tmp_entries(dir.path()),
        0,
        "refused writes leave no temp file"
    );

    // A damaged copy is replaced only by bytes matching the recorded digest.
    let mut raw = on_disk.clone();
    let layout = sluice_blob::layout::BlockLayout::new(1000);
    raw[(layout.block_offset(3) + 5) as usize] ^= 0xff;
    std::fs::write(&path, &raw).unwrap();
    assert!(read_all(&store, key, 0, u64::MAX).await.is_err());
    let repaired = write_again(&store, key, &data, |w| w.allow_repair())
        .await
        .unwrap();
    assert_eq!(repaired, recorded, "a repair keeps the index record");
    assert_eq!(read_all(&store, key, 0, u64::MAX).await.unwrap(), data);
    assert_eq!(
        store.oplog_head().unwrap(),
        1,
        "a repair is not a new version"
    );
    store.close().await;
    // Digests survive a reopen.
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    assert_eq!(store.stat(key).unwrap().unwrap(), recorded);
}

#[tokio::test]
async fn bytes_that_miss_their_declared_digest_are_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let key = store.new_key().unwrap();
    let data = pattern(3 << 20, 5);
    let wrong = write_again(&store, key, &data, |w| w.expect_sha256([0; 32])).await;
    assert!(
        matches!(wrong, Err(BlobError::ChecksumMismatch)),
        "{wrong:?}"
    );
    assert!(store.stat(key).unwrap().is_none());
    assert_eq!(tmp_entries(dir.path()), 0);
    assert_eq!(sluice_blob::data_file_paths(dir.path()).unwrap().len(), 0);
    let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&data).into();
    let stored = write_again(&store, key, &data, |w| w.expect_sha256(digest))
        .await
        .unwrap();
    assert_eq!(stored.sha256, Some(digest));
}

#[tokio::test]
async fn racing_writers_of_one_key_with_different_bytes_leave_one_whole_file() {
    // Without a turn per key, the loser's rename could land after the winner was indexed.
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path(), data_files()).unwrap();
    for round in 0..20u8 {
        let key = store.new_key().unwrap();
        let versions: Vec<Vec<u8>> = (0..4).map(|i| pattern(200_000, round * 4 + i)).collect();
        let mut commits = Vec::new();
        for v in &versions {
            let mut w = store.writer(key, "a/b".into(), u64::MAX);
            w.write(Bytes::from(v.clone())).await.unwrap();
            commits.push(tokio::spawn(w.commit()));
        }
        let mut won = 0;
        for c in commits {
            match c.await.unwrap() {
                Ok(_) => won += 1,
                Err(BlobError::Conflict) => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(won, 1, "exactly one version is stored");
        let stored = read_all(&store, key, 0, u64::MAX).await.unwrap();
        let digest: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&stored).into();
        assert!(versions.contains(&stored));
        assert_eq!(store.stat(key).unwrap().unwrap().sha256, Some(digest));
    }
    assert_eq!(tmp_entries(dir.path()), 0);
}

#[tokio::test]
async fn an_index_whose_disk_filled_recovers_by_itself_once_space_returns() {
    // The index on a small disk of its own (the data files beside it have room), which
    // another process fills: the index's commits are what fail.
    let disk = SmallDisk::mount("8m");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("FORMAT"), "sluice-blob 1\n").unwrap();
    std::os::unix::fs::symlink(
        disk.path().join("index.redb"),
        dir.path().join("index.redb"),
    )
    .unwrap();
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    let first = put(&store, b"kept through it all", 100).await;
    let hog = disk.fill("hog");
    // Many writers at once (they share commits), until a commit fails.
    let mut stored = 1;
    let refused = 'fill: loop {
        let mut commits = Vec::new();
        for i in 0..64 {
            let key = store.new_key().unwrap();
            let mut w = store.writer(key, "a/b".into(), u64::MAX);
            w.write(Bytes::from(pattern(300, i))).await.unwrap();
            commits.push(tokio::spawn(w.commit()));
        }
        // The batch that met the full disk answers NoSpace; commits queued behind it may
        // meet the index reopening (Reopening) instead: which comes first in spawn order
        // depends on how the writer batched them.
        let mut failures = Vec::new();
        for c in commits {
            match c.await.unwrap() {
                Ok(_) => stored += 1,
                Err(e) => failures.push(e),
            }
        }
        if !failures.is_empty() {
            assert!(
                failures
                    .iter()
                    .all(|e| matches!(e, BlobError::NoSpace | BlobError::Reopening)),
                "{failures:?}"
            );
            if let Some(e) = failures
                .into_iter()
                .find(|e| matches!(e, BlobError::NoSpace))
            {
                break 'fill e;
            }
            panic!("a full index disk was never reported as NoSpace");
        }
        assert!(stored < 100_000, "the index's disk never filled");
    };
    assert!(matches!(refused, BlobError::NoSpace), "{refused}");
    // While it cannot write: writes are refused at once with the reason, reads go on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.write_trouble().is_none() {
        assert!(Instant::now() < deadline, "the trouble was never said");
        tokio::time::sleep(POLL).await;
    }
    assert!(store.write_trouble().unwrap().contains("full"));
    let key = store.new_key().unwrap();
    let mut w = store.writer(key, "a/b".into(), u64::MAX);
    w.write(Bytes::from_static(b"x")).await.unwrap();
    assert!(matches!(w.commit().await, Err(BlobError::NoSpace)));
    assert_eq!(
        read_all(&store, first, 0, u64::MAX).await.unwrap(),
        b"kept through it all"
    );
    // Space returns: the store recovers by itself, without a restart.
    std::fs::remove_file(&hog).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.write_trouble().is_some() {
        assert!(Instant::now() < deadline, "the index never recovered");
        tokio::time::sleep(POLL).await;
    }
    let after = put(&store, b"written after", 100).await;
    assert_eq!(
        read_all(&store, after, 0, u64::MAX).await.unwrap(),
        b"written after"
    );
    assert_eq!(store.files(), stored + 1);
    // Refused writes left no data file behind.
    assert_eq!(
        sluice_blob::data_file_paths(dir.path()).unwrap().len() as u64,
        store.files()
    );
    store.close().await;
}

/// Copies a store's data files and format marker, not its index: what a crash between placing
/// files and indexing them leaves. With the clean-close marker, so no sweep starts by itself.
fn copy_unindexed(from: &std::path::Path, to: &std::path::Path) {
    fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_tree(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    copy_tree(&from.join("blobs"), &to.join("blobs"));
    std::fs::copy(from.join("FORMAT"), to.join("FORMAT")).unwrap();
    std::fs::write(to.join("CLEAN"), b"").unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_starts_while_the_sweep_judges_its_key_keeps_its_file() {
    let source = tempfile::tempdir().unwrap();
    let first = BlobStore::open(source.path(), small_blocks()).unwrap();
    let mut files = std::collections::HashMap::new();
    for i in 0..3u8 {
        let data = pattern(5000 + usize::from(i), i);
        files.insert(put(&first, &data, 5000).await, data);
    }
    first.close().await;
    let dir = tempfile::tempdir().unwrap();
    copy_unindexed(source.path(), dir.path());
    let store = BlobStore::open(dir.path(), small_blocks()).unwrap();
    assert_eq!(store.files(), 0);
    // The sweep has decided a file goes; just then a writer of that key (catch-up fetching the
    // same file) starts, and runs to its end if it can.
    let runtime = tokio::runtime::Handle::current();
    let (sweeper, writer_store, bodies) = (store.clone(), store.clone(), files.clone());
    let (removed, commits) = tokio::task::spawn_blocking(move || {
        let mut commits = Vec::new();
        let removed = sweeper.sweep_orphans_with(&mut |key| {
            let (store, key, body) = (writer_store.clone(), *key, bodies[key].clone());
            let (done, commit) = std::sync::mpsc::channel();
            runtime.spawn(async move {
                let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
                w.write(Bytes::from(body)).await.unwrap();
                let _ = done.send(w.commit().await);
            });
            // Time enough for the writer to finish, were it not held until the unlink is done.
            // (A right sweep passes however long this is; a wrong one fails when the writer
            // finishes within it, as it does in far less.)
            let early = commit.recv_timeout(Duration::from_millis(300)).ok();
            assert!(
                early.is_none(),
                "a writer placed its file while the sweep judged it"
            );
            commits.push(commit);
        });
        (removed.unwrap(), commits)
    })
    .await
    .unwrap();
    assert_eq!(removed, 3, "every unindexed file went");
    for commit in commits {
        let commit = tokio::task::spawn_blocking(move || commit.recv_timeout(WAIT))
            .await
            .unwrap();
        commit
            .expect("the writer finishes")
            .expect("and stores its file");
    }
    // Each writer's file is whole and indexed; nothing else is left.
    assert_eq!(store.files(), 3);
    for (key, data) in &files {
        assert_eq!(&read_all(&store, *key, 0, u64::MAX).await.unwrap(), data);
    }
    assert_eq!(sluice_blob::data_file_paths(dir.path()).unwrap().len(), 3);
    assert_eq!(store.sweep_orphans().unwrap(), 0);
    store.close().await;
}
