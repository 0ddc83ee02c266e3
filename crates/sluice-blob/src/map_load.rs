//! Loading the volume map when a store opens (see [`crate::volume_map`]): each volume's index
//! log up to the length its last checkpoint synced, then the volumes' records committed after
//! that checkpoint, replayed in the order they were written. A log that is shorter than its
//! checkpoint says, or damaged within it, makes the load read every volume from its start
//! instead: slower, and just as exact, since the volumes hold every record.
//!
//! Replaying a record does what committing it did:
//! - a new file's record (its meta names no place) enters the map unless the key is already
//!   there, in `BLOBS`, or deleted (a tombstone);
//! - a copy's record (compaction, repair: its meta names the record it copies) moves the key
//!   only if the map still has it at that record, or, when that record's volume is gone (it
//!   was compacted away, and moves are all that left it), if the key is nowhere else;
//! - a delete record takes the key out.
//!
//! A store written before the volume map kept these entries in `BLOBS`: the first load moves
//! them into the logs, and takes them out of `BLOBS` in the same commit as the checkpoint.

use std::collections::{BTreeMap, HashSet};

use redb::{Database, ReadableDatabase, ReadableTable};
use sluice_proto::BlobKey;
use sluice_proto::fileid::KEY_BYTES;
use sluice_state::LockRecover;

use crate::BlobError;
use crate::idx_logs::{IdxLogs, idx_volume_of};
use crate::index::{BLOBS, COUNTERS, StoreCounters, TOMBSTONES, UNLOGGED, VOLUME_MAP, VolumeRow};
use crate::record::{BlobMeta, Location};
use crate::volume::{HEADER_LEN, RecordKind};
use crate::volume_map::{IdxEntry, Slot, VolumeMap, parse_log};
use crate::volumes::VolumeFiles;

/// What a load found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Files in volumes, in the map now.
    pub files: usize,
    /// Entries read from index logs.
    pub from_logs: usize,
    /// Records read from volumes again.
    pub replayed: usize,
    /// Entries moved out of `BLOBS` (a store written before the volume map).
    pub migrated: usize,
    /// Whether a damaged or short log made the load read every volume.
    pub rebuilt: bool,
}

pub(crate) fn load(
    db: &Database,
    counters: &StoreCounters,
    map: &VolumeMap,
    files: &VolumeFiles,
    logs: &mut IdxLogs,
) -> Result<Loaded, BlobError> {
    let started = std::time::Instant::now();
    let rows: BTreeMap<u64, VolumeRow> = counters.volumes.lock_or_recover().clone();
    remove_unknown_logs(logs, &rows)?;
    let mut loaded = Loaded::default();
    let mut slots: BTreeMap<BlobKey, Slot> = BTreeMap::new();
    let mut migrated_keys = Vec::new();
    let mut replay_from: BTreeMap<u64, u64> = BTreeMap::new();
    let read = db.begin_read()?;
    let blobs = read.open_table(BLOBS)?;
    let tombstones = read.open_table(TOMBSTONES)?;
    let migrated = read.open_table(COUNTERS)?.get(VOLUME_MAP)?.is_some();
    if !migrated {
        for item in blobs.iter()? {
            let (k, v) = item?;
            let meta = BlobMeta::decode(v.value())?;
            if let Location::Volume {
                volume,
                offset,
                body,
            } = meta.location
            {
                let key: [u8; KEY_BYTES] =
                    k.value().try_into().map_err(|_| BlobError::BadRecord)?;
                let key = BlobKey::from_bytes(key);
                slots.insert(
                    key,
                    Slot {
                        volume,
                        offset,
                        body,
                        size: u32::try_from(meta.size).map_err(|_| BlobError::BadRecord)?,
                    },
                );
                migrated_keys.push(key);
            }
        }
        loaded.migrated = migrated_keys.len();
        for id in rows.keys() {
            logs.cut(*id, 0)?;
        }
    } else {
        let mut damaged = None;
        for (id, row) in &rows {
            let bytes = logs.read(*id, row.idx_len)?;
            let (entries, len) = parse_log(&bytes);
            if (len as u64) < row.idx_len {
                damaged = Some(*id);
                break;
            }
            logs.cut(*id, row.idx_len)?;
            loaded.from_logs += entries.len();
            let mut live: BTreeMap<BlobKey, Slot> = BTreeMap::new();
            for entry in entries {
                match entry.slot(*id) {
                    Some(slot) => {
                        live.insert(entry.key, slot);
                    }
                    None => {
                        if live
                            .get(&entry.key)
                            .is_some_and(|s| s.offset == entry.offset)
                        {
                            live.remove(&entry.key);
                        }
                    }
                }
            }
            // Volumes are read oldest first, so a key two of them name (which a checkpoint
            // never leaves) goes to the newer record.
            slots.extend(live);
            replay_from.insert(*id, row.covered.max(HEADER_LEN));
        }
        if let Some(volume) = damaged {
            tracing::warn!(
                volume,
                "a volume index log is shorter than its checkpoint, or damaged: reading every volume to rebuild the map"
            );
            slots.clear();
            loaded.from_logs = 0;
            loaded.rebuilt = true;
            for id in rows.keys() {
                logs.cut(*id, 0)?;
                replay_from.insert(*id, HEADER_LEN);
            }
            // With the logs emptied, a volume this load cannot read must be read from its
            // start by a later one.
            for row in counters.volumes.lock_or_recover().values_mut() {
                row.covered = HEADER_LEN;
            }
        }
    }
    // A file in `BLOBS` is there, whatever the logs say (a repair moved it to a data file and
    // a crash came before the checkpoint that logs it).
    let mut stale: Vec<(BlobKey, Slot)> = Vec::new();
    if migrated {
        for item in blobs.iter()? {
            let (k, _) = item?;
            let key: [u8; KEY_BYTES] = k.value().try_into().map_err(|_| BlobError::BadRecord)?;
            let key = BlobKey::from_bytes(key);
            if let Some(slot) = slots.remove(&key) {
                stale.push((key, slot));
            }
        }
    }
    // Entries moved out of `BLOBS` go into the (emptied) logs.
    let mut appends: Vec<(u64, IdxEntry)> = migrated_keys
        .iter()
        .filter_map(|key| {
            slots
                .get(key)
                .map(|slot| (slot.volume, IdxEntry::live(*key, slot)))
        })
        .chain(
            stale
                .iter()
                .map(|(key, slot)| (slot.volume, IdxEntry::gone(*key, slot))),
        )
        .collect();
    // Records committed after the checkpoint, oldest first: volumes in the order they were
    // written, each from where its log stops.
    let failed = std::cell::Cell::new(None);
    for (id, from) in &replay_from {
        let Some(row) = rows.get(id) else { continue };
        if *from >= row.end {
            continue;
        }
        let reader = match files.reader(*id) {
            Ok(Some(reader)) => reader,
            other => {
                // Its `covered` stays where it is, so a later open reads these records
                // once the volume can be read.
                tracing::error!(volume = id, result = ?other.err(), "cannot read a volume to load the files committed to it since the last checkpoint");
                logs.unreplayed.insert(*id);
                continue;
            }
        };
        let mut visit = |found: crate::volume::Found| {
            loaded.replayed += 1;
            let key = found.header.key;
            let k = key.as_bytes().as_slice();
            let result = (|| -> Result<(), BlobError> {
                match found.header.kind {
                    RecordKind::Delete => {
                        if let Some(old) = slots.remove(&key) {
                            appends.push((old.volume, IdxEntry::gone(key, &old)));
                        }
                    }
                    RecordKind::Put => {
                        let Ok(meta) = BlobMeta::decode(&found.header.meta) else {
                            tracing::warn!(volume = id, %key, "a volume record's meta does not decode; skipped");
                            return Ok(());
                        };
                        let slot = Slot {
                            volume: *id,
                            offset: found.offset,
                            body: u32::try_from(found.body_offset - found.offset)
                                .map_err(|_| BlobError::BadRecord)?,
                            size: u32::try_from(found.header.length)
                                .map_err(|_| BlobError::BadRecord)?,
                        };
                        if tombstones.get(k)?.is_some() {
                            return Ok(());
                        }
                        let current = slots.get(&key).copied();
                        let applies = match meta.location {
                            // A copy moves the key from the record it copies. Entries only ever
                            // move to newer records, so an entry older than that record (or
                            // none) means the history between was lost: compacted away, or
                            // damaged and not loaded. The copy is then the file, unless it was
                            // deleted (tombstoned, above) or lives in a data file. An entry
                            // newer than it means this copy's move lost to another.
                            Location::Volume {
                                volume: from_volume,
                                offset: from_offset,
                                ..
                            } => {
                                let not_newer = current.is_none_or(|cur| {
                                    (cur.volume, cur.offset) <= (from_volume, from_offset)
                                });
                                not_newer && blobs.get(k)?.is_none()
                            }
                            Location::DataFile => current.is_none() && blobs.get(k)?.is_none(),
                        };
                        if applies {
                            if let Some(old) = current {
                                appends.push((old.volume, IdxEntry::gone(key, &old)));
                            }
                            appends.push((*id, IdxEntry::live(key, &slot)));
                            slots.insert(key, slot);
                        }
                    }
                }
                Ok(())
            })();
            match result {
                Ok(()) => true,
                Err(e) => {
                    failed.set(Some(e));
                    false
                }
            }
        };
        // Damaged bytes stop a scan: it goes on from the next whole record after them, so
        // only the files in the damaged part are missing (their peers' copies remain).
        let mut at = *from;
        loop {
            let (stopped, stop) = reader.scan_from(at, row.end, false, &mut visit)?;
            if let Some(e) = failed.take() {
                return Err(e);
            }
            if stop.is_none() || stopped >= row.end {
                break;
            }
            let next = reader.next_record_after(stopped, row.end)?;
            tracing::error!(
                volume = id,
                from = stopped,
                to = next.unwrap_or(row.end),
                "damaged bytes among a volume's committed records: the files in them are not loaded, and are left to peers' copies"
            );
            match next {
                Some(next) => at = next,
                None => break,
            }
        }
    }
    // Removals no record says, and that no checkpoint logged yet.
    match read.open_table(UNLOGGED) {
        Ok(unlogged) => {
            for item in unlogged.iter()? {
                let (k, _) = item?;
                let key: [u8; KEY_BYTES] =
                    k.value().try_into().map_err(|_| BlobError::BadRecord)?;
                let key = BlobKey::from_bytes(key);
                if let Some(old) = slots.remove(&key) {
                    appends.push((old.volume, IdxEntry::gone(key, &old)));
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    drop((blobs, tombstones, read));
    // The logs first, synced; then, in one commit, the rows that trust them (and, for a store
    // written before the volume map, its entries out of `BLOBS`). A crash between the two
    // leaves the old rows, and the next open does this again.
    logs.append(&appends);
    crate::index::checkpoint_with(db, counters, logs, |txn| {
        let mut blobs = txn.open_table(BLOBS)?;
        for key in &migrated_keys {
            blobs.remove(key.as_bytes().as_slice())?;
        }
        txn.open_table(COUNTERS)?.insert(VOLUME_MAP, 1)?;
        Ok(())
    })?;
    loaded.files = slots.len();
    map.replace(slots);
    let seen: HashSet<u64> = replay_from.keys().copied().collect();
    tracing::info!(
        files = loaded.files,
        from_logs = loaded.from_logs,
        replayed = loaded.replayed,
        migrated = loaded.migrated,
        volumes = seen.len(),
        ms = started.elapsed().as_millis() as u64,
        "volume map loaded"
    );
    Ok(loaded)
}

/// Removes the index logs of volumes the index does not know (dropped ones whose file a
/// crash left behind).
fn remove_unknown_logs(logs: &IdxLogs, rows: &BTreeMap<u64, VolumeRow>) -> Result<(), BlobError> {
    let entries = match std::fs::read_dir(logs.dir()) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = entry?.path();
        if let Some(volume) = idx_volume_of(&path) {
            if !rows.contains_key(&volume) {
                tracing::info!(
                    volume,
                    "removing the index log of a volume the index does not know"
                );
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BlobStore, BlobStoreOptions, VolumeOptions};
    use bytes::Bytes;

    fn options() -> BlobStoreOptions {
        BlobStoreOptions {
            block_size: 1024,
            volumes: Some(VolumeOptions {
                volume_size: 20_000,
                compact_interval: std::time::Duration::from_secs(3600),
                ..VolumeOptions::default()
            }),
            ..BlobStoreOptions::default()
        }
    }

    async fn put(store: &BlobStore, data: &[u8]) -> BlobKey {
        let key = store.new_key().unwrap();
        let mut w = store.writer(key, "image/jpeg".into(), u64::MAX);
        w.write(Bytes::copy_from_slice(data)).await.unwrap();
        w.commit().await.unwrap();
        key
    }

    /// What the release before the volume map wrote: entries of files in volumes in `BLOBS`,
    /// v1 volume rows, no index logs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_with_volume_entries_in_blobs_moves_them_to_the_map_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), options()).unwrap();
        let mut files = Vec::new();
        for i in 0..12u8 {
            let data = vec![i; 3000 + usize::from(i)];
            let key = put(&store, &data).await;
            files.push((key, data, store.stat(key).unwrap().unwrap()));
        }
        store.close().await;
        {
            let db = Database::open(dir.path().join("index.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut blobs = txn.open_table(BLOBS).unwrap();
                for (key, _, meta) in &files {
                    assert!(matches!(meta.location, Location::Volume { .. }));
                    blobs
                        .insert(key.as_bytes().as_slice(), meta.encode().as_slice())
                        .unwrap();
                }
                txn.open_table(COUNTERS)
                    .unwrap()
                    .remove(VOLUME_MAP)
                    .unwrap();
                let mut volumes = txn.open_table(crate::index::VOLUMES).unwrap();
                let rows: Vec<(u64, VolumeRow)> = volumes
                    .iter()
                    .unwrap()
                    .map(|r| {
                        let (id, raw) = r.unwrap();
                        (id.value(), VolumeRow::decode(raw.value()).unwrap())
                    })
                    .collect();
                for (id, row) in rows {
                    let mut v1 = vec![1u8];
                    for v in [row.end, row.live_bytes, row.live_records] {
                        v1.extend_from_slice(&v.to_le_bytes());
                    }
                    volumes.insert(id, v1.as_slice()).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        for entry in std::fs::read_dir(dir.path().join("volumes")).unwrap() {
            let path = entry.unwrap().path();
            if idx_volume_of(&path).is_some() {
                std::fs::remove_file(path).unwrap();
            }
        }

        let store = BlobStore::open(dir.path(), options()).unwrap();
        let load = store.volume_map_load().unwrap();
        assert_eq!((load.migrated, load.files), (files.len(), files.len()));
        for (key, data, meta) in &files {
            assert_eq!(&store.stat(*key).unwrap().unwrap(), meta);
            let r = store.open_reader(*key).unwrap().unwrap();
            assert_eq!(
                &r.read_chunk(0, u64::MAX, u64::MAX).await.unwrap().concat(),
                data
            );
        }
        {
            let db = store.index().db().unwrap();
            let txn = db.begin_read().unwrap();
            assert!(
                txn.open_table(BLOBS)
                    .unwrap()
                    .iter()
                    .unwrap()
                    .next()
                    .is_none(),
                "moved out"
            );
        }
        store.close().await;
        let store = BlobStore::open(dir.path(), options()).unwrap();
        let load = store.volume_map_load().unwrap();
        assert_eq!(
            (load.migrated, load.from_logs, load.files),
            (0, files.len(), files.len())
        );
        store.close().await;
    }
}
