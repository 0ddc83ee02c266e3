//! Helpers the blob store's test files share.
#![allow(dead_code)]

use bytes::Bytes;
use sluice_blob::record::Location;
use sluice_blob::{BlobError, BlobStore, BlobStoreOptions, VolumeOptions};
use sluice_proto::BlobKey;

/// `len` bytes that differ with `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Volumes of `volume_size` holding files up to 64 KiB, blocks of `block_size`, compaction
/// only when a test asks (`compact_now`).
pub fn with_volumes(block_size: u32, volume_size: u64) -> BlobStoreOptions {
    BlobStoreOptions {
        block_size,
        volumes: Some(VolumeOptions {
            max_file: 64 << 10,
            volume_size,
            compact_interval: std::time::Duration::from_secs(3600),
            compact_rate: 1 << 30,
            ..VolumeOptions::default()
        }),
        ..BlobStoreOptions::default()
    }
}

/// Stores `data` under a new key, written in pieces of `piece` bytes.
pub async fn put_in_pieces(store: &BlobStore, data: &[u8], piece: usize) -> BlobKey {
    let key = store.new_key().unwrap();
    let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
    for chunk in data.chunks(piece.max(1)) {
        w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    w.commit().await.unwrap();
    key
}

pub async fn put(store: &BlobStore, data: &[u8]) -> BlobKey {
    put_in_pieces(store, data, data.len()).await
}

/// The verified bytes `start..end` of a stored file.
pub async fn read_range(
    store: &BlobStore,
    key: BlobKey,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, BlobError> {
    let r = store.open_reader(key)?.ok_or(BlobError::Deleted)?;
    let mut out = Vec::new();
    let mut at = start;
    loop {
        let chunk = r.read_chunk(at, end, sluice_blob::CHUNK_BYTES).await?;
        if chunk.is_empty() {
            return Ok(out);
        }
        for part in chunk {
            at += part.len() as u64;
            out.extend_from_slice(&part);
        }
    }
}

/// The volume a file's record is in.
pub fn volume_of(store: &BlobStore, key: BlobKey) -> u64 {
    match store.stat(key).unwrap().unwrap().location {
        Location::Volume { volume, .. } => volume,
        Location::DataFile => panic!("{key} has a data file"),
    }
}

/// A copy of a store's directory taken while it runs and is idle: what a crash (a kill, a
/// power cut after the last fsync) leaves, index logs past their checkpoint included.
pub fn crash_copy(from: &std::path::Path, to: &std::path::Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            crash_copy(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// The volumes' index logs under a store's root, in volume order.
pub fn index_logs(root: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> = std::fs::read_dir(root.join("volumes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "idx"))
        .collect();
    out.sort();
    out
}

/// Runs a compaction pass now (off the async threads); how many volumes went.
pub async fn compact(store: &BlobStore) -> usize {
    let compactor = store.clone();
    tokio::task::spawn_blocking(move || compactor.compact_now())
        .await
        .unwrap()
        .unwrap()
}
