//! A store's volumes: where its small files live (format in [`crate::volume`]).
//!
//! ```text
//! DATA/volumes/0000000000000001.vol   sealed: full, only read (and compacted)
//! DATA/volumes/0000000000000002.vol   active: the volume writer appends here
//! ```
//!
//! Commit: a file's record goes to the [`VolumeWriter`], which appends a batch of them with one
//! `fdatasync`, then hands the batch to the index writer, which commits every record's entry
//! and the volume's new length (its row) in one transaction; only then is anyone answered.
//! A crash before that commit leaves bytes past the length the index knows: they are cut off
//! on the next open ([`VolumeFile::open_committed`]), so an unacknowledged file is never
//! served, and an acknowledged one is always within the length.
//!
//! Compaction rewrites a sealed volume whose dead share passed the threshold (see
//! [`compact`]): every live record is appended again through the writer and its index entry
//! moved (only if it still points at the old record), then the volume's row is dropped (only
//! if nothing lives in it), then its file removed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use sluice_proto::BlobKey;
use sluice_state::{LockRecover, RwLockRecover};
use tokio::sync::{mpsc, oneshot};

use crate::index::{Adoption, IndexOp, Reply, VolumeItem, VolumeRow};
use crate::record::{BlobMeta, Location};
use crate::volume::{HEADER_LEN, RecordHeader, RecordKind, VolumeHeader};
use crate::volume_file::{BodyRef, MAX_RECORD, VolumeFile, VolumeReader};
use crate::volume_map::Slot;
use crate::volume_writer::{Batch, Pending, VolumeWriter, WriterCounts, WriterLimits};
use crate::{BlobError, failpoint};

const DIR: &str = "volumes";
/// Zeros written ahead of the active volume's appends (see `VolumeFile::preallocate`).
const PREALLOCATE: u64 = 8 << 20;
const SUFFIX: &str = "vol";

/// Tunables of a store's volumes.
#[derive(Debug, Clone)]
pub struct VolumeOptions {
    /// Complete files up to this size go into volumes; larger ones get their own data file.
    pub max_file: u64,
    /// A volume this long is sealed and the next one started.
    pub volume_size: u64,
    /// A sealed volume whose dead share reaches this is compacted.
    pub compact_threshold: f64,
    /// How often volumes are checked for compaction.
    pub compact_interval: Duration,
    /// Bytes per second compaction copies at most, so reads and writes keep the disk.
    pub compact_rate: u64,
    /// Volume map entries between checkpoints of its index logs: at most what a restart
    /// after a crash reads from the volumes again instead of from the logs.
    pub checkpoint_entries: u64,
    /// Bytes committed to volumes between those checkpoints, at most: what such a restart
    /// reads again, whatever the files' size.
    pub checkpoint_bytes: u64,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        Self {
            max_file: 1 << 20,
            volume_size: 1 << 30,
            compact_threshold: 0.3,
            compact_interval: Duration::from_secs(300),
            compact_rate: 32 << 20,
            checkpoint_entries: crate::idx_logs::CHECKPOINT_ENTRIES,
            checkpoint_bytes: crate::idx_logs::CHECKPOINT_BYTES,
        }
    }
}

/// The longest file a volume record can hold: what [`VolumeOptions::max_file`] is capped at.
pub const MAX_VOLUME_FILE: u64 = MAX_RECORD / 2;

/// Volume figures for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeStats {
    pub volumes: u64,
    /// Bytes in volumes, headers and dead records included.
    pub bytes: u64,
    pub dead_bytes: u64,
    pub live_records: u64,
    pub compactions: u64,
    /// Whether a compaction is running now.
    pub compacting: bool,
    /// Batches written (one `fdatasync` each) and records in them, since start.
    pub batches: u64,
    pub records: u64,
}

impl Pending for VolumeItem {
    fn failed(self, error: BlobError) {
        VolumeItem::failed(self, error);
    }
}

/// Volumes kept open between reads, at most: a node of a thousand 1 GiB volumes stays well
/// under the usual limit of 1024 open files.
const OPEN_VOLUMES: usize = 128;

#[derive(Default)]
struct Readers {
    open: HashMap<u64, Arc<VolumeReader>>,
    /// Opening order, oldest first.
    order: std::collections::VecDeque<u64>,
    /// Volumes removed by compaction.
    gone: std::collections::HashSet<u64>,
}

/// A store's volume files opened for reading, shared by the index (which reads a record's
/// header to answer a lookup) and the volumes (which read bodies and compact).
pub(crate) struct VolumeFiles {
    dir: PathBuf,
    readers: RwLock<Readers>,
}

impl VolumeFiles {
    pub(crate) fn new(root: &Path) -> Self {
        Self {
            dir: root.join(DIR),
            readers: RwLock::new(Readers::default()),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Volume `id` open for reading; `None` if it is gone (compacted away since the lookup).
    /// At most [`OPEN_VOLUMES`] stay open between reads (the oldest opened goes first); a
    /// reader holding one reads on after it is let go.
    pub(crate) fn reader(&self, id: u64) -> Result<Option<Arc<VolumeReader>>, BlobError> {
        if let Some(reader) = self.readers.read_or_recover().open.get(&id) {
            return Ok(Some(reader.clone()));
        }
        let reader = match VolumeReader::open(&volume_path(&self.dir, id)) {
            Ok(reader) => Arc::new(reader),
            Err(BlobError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if reader.header().volume_id != id {
            return Err(BlobError::WrongFormat(format!(
                "volume {id:016x} holds the header of volume {:016x}",
                reader.header().volume_id
            )));
        }
        let mut readers = self.readers.write_or_recover();
        // Compacted away while this open ran: do not keep its file (and its space) open.
        if readers.gone.contains(&id) {
            return Ok(None);
        }
        if readers.open.len() >= OPEN_VOLUMES {
            if let Some(oldest) = readers.order.pop_front() {
                readers.open.remove(&oldest);
            }
        }
        if readers.open.insert(id, reader.clone()).is_none() {
            readers.order.push_back(id);
        }
        Ok(Some(reader))
    }

    /// Lets go of a removed volume's file, and keeps it from being opened again.
    fn forget(&self, id: u64) {
        let mut readers = self.readers.write_or_recover();
        readers.open.remove(&id);
        readers.order.retain(|v| *v != id);
        readers.gone.insert(id);
    }

    /// The index record of the file at `slot`, read from its record's header; `None` if the
    /// volume is gone (compacted away since the lookup). A header that is damaged, or names
    /// another key, reads as a damaged file (a peer's copy repairs it).
    pub(crate) fn meta(&self, key: &BlobKey, slot: &Slot) -> Result<Option<BlobMeta>, BlobError> {
        let damaged = |why: &dyn std::fmt::Display| {
            tracing::error!(%key, volume = slot.volume, offset = slot.offset, %why, "volume record header damaged");
            BlobError::Corrupt {
                key: *key,
                block: 0,
            }
        };
        let reader = match self.reader(slot.volume) {
            Ok(Some(reader)) => reader,
            Ok(None) => return Ok(None),
            Err(BlobError::WrongFormat(why)) => return Err(damaged(&why)),
            Err(e) => return Err(e),
        };
        let header = match reader.record_header(slot.offset) {
            Ok(header) => header,
            Err(BlobError::Io(e)) => return Err(BlobError::Io(e)),
            Err(e) => return Err(damaged(&e)),
        };
        if header.key != *key || header.kind != RecordKind::Put {
            return Err(damaged(&"another record"));
        }
        let mut meta = BlobMeta::decode(&header.meta).map_err(|e| damaged(&e))?;
        meta.location = slot.location();
        meta.block_size = reader.header().block_size;
        Ok(Some(meta))
    }

    /// The block size of volume `id`'s records, if it can be read.
    pub(crate) fn block_size(&self, id: u64) -> Option<u32> {
        self.reader(id)
            .ok()
            .flatten()
            .map(|r| r.header().block_size)
    }
}

pub(crate) struct Volumes {
    dir: PathBuf,
    options: VolumeOptions,
    block_size: u32,
    writer: Mutex<Option<VolumeWriter<VolumeItem>>>,
    counts: Arc<WriterCounts>,
    /// Open volumes, for reads (shared with the index).
    files: Arc<VolumeFiles>,
    /// Rows the index last committed (shared with it).
    rows: Arc<crate::index::StoreCounters>,
    index: mpsc::Sender<IndexOp>,
    pub(crate) compactions: AtomicU64,
    compacting: std::sync::atomic::AtomicBool,
}

impl Volumes {
    /// Opens the volumes of the store at `root` (creating the directory), brings each to the
    /// length the index committed, and starts the writer on the newest one with room.
    /// `index_existed`: whether the index was there before this open (a new one next to
    /// volumes with files means the index was lost, and nothing may be removed).
    pub(crate) fn open(
        root: &Path,
        options: VolumeOptions,
        block_size: u32,
        index: &crate::index::Index,
        index_existed: bool,
    ) -> Result<Self, BlobError> {
        let dir = root.join(DIR);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            std::fs::File::open(root)?.sync_all()?;
        }
        let rows = index.counters.clone();
        let known: Vec<(u64, VolumeRow)> = rows
            .volumes
            .lock_or_recover()
            .iter()
            .map(|(id, row)| (*id, *row))
            .collect();
        let mut on_disk = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            if let Some(id) = volume_id_of(&entry.path()) {
                on_disk.push(id);
            }
        }
        on_disk.sort_unstable();
        let newest_known = known.last().map(|(id, _)| *id);
        let unknown: Vec<u64> = on_disk
            .iter()
            .copied()
            .filter(|id| !known.iter().any(|(k, _)| k == id))
            .collect();
        // A volume the index does not know is one compaction dropped (below the newest known
        // id) or one created whose first batch never committed (above it): nothing in either
        // is acknowledged. But with a new index, the index is what was lost: the volumes hold
        // every file, and nothing may be touched (checked for all before any is removed).
        if !index_existed {
            for id in &unknown {
                let path = volume_path(&dir, *id);
                if has_records(&path)? {
                    return Err(BlobError::WrongFormat(format!(
                        "{} holds files but the index ({}) is new: it was lost or replaced. Restore it; nothing was changed",
                        path.display(),
                        root.join("index.redb").display()
                    )));
                }
            }
        }
        let mut removed_any = false;
        for id in &unknown {
            let path = volume_path(&dir, *id);
            let why = match newest_known {
                Some(newest) if *id < newest => "compacted, and dropped from the index",
                _ => "never committed",
            };
            tracing::info!(
                volume = id,
                why,
                "removing a volume the index does not know"
            );
            std::fs::remove_file(path)?;
            removed_any = true;
        }
        if removed_any {
            std::fs::File::open(&dir)?.sync_all()?;
        }
        let mut active = None;
        for (id, row) in &known {
            if !on_disk.contains(id) {
                tracing::error!(
                    volume = id,
                    files = row.live_records,
                    "a volume the index names is missing; its files must be repaired from peers"
                );
                continue;
            }
            match VolumeFile::open_committed(&volume_path(&dir, *id), row.end) {
                Ok(Some(mut volume)) => {
                    volume.preallocate(PREALLOCATE);
                    // A volume of another block size (the setting changed) is only read: new
                    // records go to a new volume of the store's block size.
                    if volume.len() < options.volume_size
                        && volume.header().block_size == block_size
                    {
                        active = Some(volume);
                    }
                }
                Ok(None) => tracing::error!(
                    volume = id,
                    "a volume is shorter than the index says; it takes no more appends, and its damaged files are repaired from peers"
                ),
                // A damaged header: its files read as damaged, and are repaired from peers.
                Err(e) => tracing::error!(
                    volume = id,
                    error = %e,
                    "a volume cannot be opened; it takes no more appends, and its files are repaired from peers"
                ),
            }
        }
        let next_id = Arc::new(AtomicU64::new(
            known
                .last()
                .map(|(id, _)| *id)
                .into_iter()
                .chain(on_disk.last().copied())
                .max()
                .unwrap_or(0)
                + 1,
        ));
        // Only the newest volume is appended to: an older one with room is a damaged newest's
        // predecessor, or sealed; reading them is all that is left to do.
        let active = match active {
            Some(v) if Some(v.header().volume_id) == newest_known => v,
            _ => create_volume(&dir, next_id.fetch_add(1, Ordering::Relaxed), block_size)?,
        };
        let sender = index.sender();
        let batch_sender = sender.clone();
        let make_dir = dir.clone();
        let writer = VolumeWriter::start(
            active,
            WriterLimits {
                max_batch_bytes: 8 << 20,
                roll_at: options.volume_size,
            },
            rows.volume_sequence.load(Ordering::Relaxed),
            move |_| {
                create_volume(
                    &make_dir,
                    next_id.fetch_add(1, Ordering::Relaxed),
                    block_size,
                )
            },
            move |batch: Batch<VolumeItem>| send_batch(&batch_sender, batch),
        )?;
        Ok(Self {
            dir,
            options,
            block_size,
            counts: writer.counts_handle(),
            writer: Mutex::new(Some(writer)),
            files: index.files.clone(),
            rows,
            index: sender,
            compactions: AtomicU64::new(0),
            compacting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub(crate) fn options(&self) -> &VolumeOptions {
        &self.options
    }

    /// Whether a blob of this size and block size goes into a volume.
    pub(crate) fn takes(&self, size: u64, block_size: u32) -> bool {
        self.options.max_file > 0 && size <= self.options.max_file && block_size == self.block_size
    }

    fn writer(&self) -> Result<VolumeWriter<VolumeItem>, BlobError> {
        self.writer
            .lock_or_recover()
            .clone()
            .ok_or(BlobError::Closed)
    }

    /// Stores a new file; answers once its record and index entry are on disk.
    pub(crate) async fn put(
        &self,
        key: BlobKey,
        meta: BlobMeta,
        data: Bytes,
    ) -> Result<Adoption, BlobError> {
        let (done, answer) = oneshot::channel();
        let header = put_header(key, &meta, data.len() as u64, false);
        let item = VolumeItem::Put { key, meta, done };
        self.writer()?.submit(header, data, item).await?;
        answer.await.map_err(|_| BlobError::Closed)?
    }

    /// Writes `data` (the bytes of the file `current` describes) as a new record and points
    /// the index at it, if it still points at `current`'s place: a damaged record's repair.
    pub(crate) async fn rewrite(
        &self,
        key: BlobKey,
        current: &BlobMeta,
        data: Bytes,
    ) -> Result<bool, BlobError> {
        let (item, answer) = move_item(key, current);
        let header = put_header(key, current, data.len() as u64, true);
        self.writer()?.submit(header, data, item).await?;
        answer.await.map_err(|_| BlobError::Closed)?
    }

    /// Appends a delete record and removes the key from the index, then gives the deleted
    /// record's blocks back to the filesystem (see [`Self::punch`]). On a full disk the delete
    /// record is left out: the index alone says the file is gone (the record only serves a
    /// rebuild of the index from volumes), so deleting is how room is made.
    pub(crate) async fn delete(
        &self,
        key: BlobKey,
        tombstone: bool,
    ) -> Result<Option<BlobMeta>, BlobError> {
        let (done, answer) = oneshot::channel();
        let header = RecordHeader {
            kind: RecordKind::Delete,
            key,
            length: 0,
            sequence: 0,
            meta: Vec::new(),
        };
        let item = VolumeItem::Delete {
            key,
            tombstone,
            done,
        };
        self.writer()?.submit(header, Bytes::new(), item).await?;
        let removed = match answer.await.map_err(|_| BlobError::Closed)? {
            Err(BlobError::NoSpace) => {
                crate::index::request(&self.index, |done| IndexOp::Remove {
                    key,
                    tombstone,
                    done,
                })
                .await?
            }
            other => other?,
        };
        if let Some(old) = &removed {
            self.punch(old).await;
        }
        Ok(removed)
    }

    /// Frees the whole filesystem blocks inside a dead record's body at once
    /// (`FALLOC_FL_PUNCH_HOLE`): space comes back on delete, as with data files, while the
    /// rest of the record waits for compaction. Best effort (a filesystem without holes keeps
    /// the space until compaction).
    async fn punch(&self, meta: &BlobMeta) {
        let Location::Volume {
            volume,
            offset,
            body,
        } = meta.location
        else {
            return;
        };
        const PAGE: u64 = 4096;
        let start = offset + u64::from(body);
        let end = start + crate::volume::body_len(meta.size, meta.block_size);
        let (from, to) = (start.div_ceil(PAGE) * PAGE, end / PAGE * PAGE);
        if to <= from {
            return;
        }
        let path = volume_path(&self.dir, volume);
        let punched = crate::blocking(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::OpenOptions::new().write(true).open(&path)?;
            let (at, len) = (
                libc::off_t::try_from(from).map_err(|_| BlobError::BadRecord)?,
                libc::off_t::try_from(to - from).map_err(|_| BlobError::BadRecord)?,
            );
            // SAFETY: fallocate on a descriptor we own, with a range inside the file.
            let rc = unsafe {
                libc::fallocate(
                    file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    at,
                    len,
                )
            };
            if rc != 0 {
                return Err(BlobError::Io(std::io::Error::last_os_error()));
            }
            Ok(())
        })
        .await;
        if let Err(e) = punched {
            tracing::debug!(volume, error = %e, "could not punch a deleted record's blocks");
        }
    }

    pub(crate) fn reader(&self, id: u64) -> Result<Option<Arc<VolumeReader>>, BlobError> {
        self.files.reader(id)
    }

    pub(crate) fn stats(&self) -> VolumeStats {
        let rows = self.rows.volumes.lock_or_recover();
        VolumeStats {
            volumes: rows.len() as u64,
            bytes: rows.values().map(|r| r.end).sum(),
            dead_bytes: rows.values().map(VolumeRow::dead_bytes).sum(),
            live_records: rows.values().map(|r| r.live_records).sum(),
            compactions: self.compactions.load(Ordering::Relaxed),
            compacting: self.compacting.load(Ordering::Relaxed),
            batches: self.counts.batches.load(Ordering::Relaxed),
            records: self.counts.records.load(Ordering::Relaxed),
        }
    }

    /// Sealed volumes whose dead share reached the threshold, most dead first.
    pub(crate) fn compaction_candidates(&self) -> Vec<u64> {
        let active = self.counts.active.load(Ordering::Relaxed);
        let rows = self.rows.volumes.lock_or_recover();
        let mut due: Vec<(u64, f64)> = rows
            .iter()
            .filter(|(id, _)| **id < active)
            .filter_map(|(id, row)| {
                let used = row.end.saturating_sub(HEADER_LEN);
                let share = if used == 0 {
                    1.0
                } else {
                    row.dead_bytes() as f64 / used as f64
                };
                (share >= self.options.compact_threshold).then_some((*id, share))
            })
            .collect();
        due.sort_by(|a, b| b.1.total_cmp(&a.1));
        due.into_iter().map(|(id, _)| id).collect()
    }

    /// Stops the writer: what it holds is written and committed first. Blocking.
    pub(crate) fn close(&self) {
        self.writer.lock_or_recover().take();
    }
}

/// Runs compaction passes every `compact_interval` until `stop` says so. Blocking: the
/// store's compaction thread.
pub(crate) fn compaction_loop(store: crate::BlobStore, stop: std::sync::mpsc::Receiver<()>) {
    let Some(interval) = store.volumes().map(|v| v.options().compact_interval) else {
        return;
    };
    loop {
        match stop.recv_timeout(interval) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        if let Err(e) = compact_due(&store) {
            tracing::warn!(error = %e, "compaction pass stopped early; the next one goes on");
        }
    }
}

/// Compacts every volume due now; returns how many went.
pub(crate) fn compact_due(store: &crate::BlobStore) -> Result<usize, BlobError> {
    let Some(volumes) = store.volumes() else {
        return Ok(0);
    };
    let mut done = 0;
    for id in volumes.compaction_candidates() {
        if store.is_closing() {
            break;
        }
        volumes.compacting.store(true, Ordering::Relaxed);
        let compacted = compact(store, volumes, id);
        volumes.compacting.store(false, Ordering::Relaxed);
        match compacted {
            Ok(true) => done += 1,
            Ok(false) => {}
            // One volume that cannot be compacted now (damaged, or no room to copy) must
            // not keep the others from it.
            Err(e) => {
                tracing::warn!(volume = id, error = %e, "compaction of a volume failed; the next pass tries again");
            }
        }
    }
    Ok(done)
}

/// Records copied before their moves are awaited: enough to keep the writer's batches full.
const COPY_WINDOW: usize = 64;

/// Compacts one sealed volume; true if it is gone afterwards. What a crash leaves at each step:
/// - while copying: copies the index never pointed at (dead bytes of the active volume) and
///   entries moved already; the old volume keeps the rest, and the next pass goes on;
/// - after the moves, before the drop: a volume nothing lives in; the next pass drops it;
/// - after the drop, before the unlink: a file the index does not know; the next open
///   removes it.
fn compact(store: &crate::BlobStore, volumes: &Volumes, id: u64) -> Result<bool, BlobError> {
    let Some(row) = volumes.rows.volumes.lock_or_recover().get(&id).copied() else {
        return Ok(false);
    };
    let Some(reader) = volumes.reader(id)? else {
        return Ok(false);
    };
    let started = std::time::Instant::now();
    let writer = volumes.writer()?;
    let mut waiting: Vec<oneshot::Receiver<Result<bool, BlobError>>> = Vec::new();
    let (mut copied, mut moved, mut failures) = (0u64, 0u64, 0u64);
    let mut error = None;
    let pace = Pace::new(volumes.options.compact_rate);
    let mut visit = |found: crate::volume::Found| {
        if store.is_closing() {
            return false;
        }
        if found.header.kind != RecordKind::Put {
            return true;
        }
        let key = found.header.key;
        let here = |meta: &BlobMeta| matches!(meta.location, Location::Volume { volume, offset, .. } if volume == id && offset == found.offset);
        let current = match store.index().get(&key) {
            Ok(Some(meta)) if here(&meta) => meta,
            Ok(_) => return true,
            Err(e) => {
                error = Some(e);
                return false;
            }
        };
        let data = match reader.read(&BodyRef::of(&found), 0, found.header.length) {
            Ok(data) => Bytes::from(data),
            Err(e) => {
                // A damaged record stays where it is (and the volume with it) until the scrub
                // or a read repairs it from a peer.
                tracing::warn!(volume = id, %key, error = %e, "compaction skips a record it cannot read");
                failures += 1;
                return true;
            }
        };
        copied += data.len() as u64;
        pace.wait(copied);
        let (item, answer) = move_item(key, &current);
        let header = put_header(key, &current, data.len() as u64, true);
        if let Err(e) = writer.submit_blocking(header, data, item) {
            error = Some(e);
            return false;
        }
        waiting.push(answer);
        // The first copy is awaited alone, so a crash test can stop right after one move.
        if waiting.len() >= COPY_WINDOW || moved == 0 {
            moved += settle(&mut waiting, &mut failures);
            failpoint("compaction-copied");
        }
        true
    };
    // Damaged bytes (a dead record's flipped header, say) stop a scan: it goes on from the
    // next whole record after them, so the live records beyond still move.
    let mut from = HEADER_LEN;
    loop {
        let (stopped, stop) = reader.scan_from(from, row.end, false, &mut visit)?;
        if stop != Some(crate::volume::Stop::Damaged) || stopped >= row.end {
            break;
        }
        tracing::warn!(
            volume = id,
            at = stopped,
            "compaction passes over damaged bytes"
        );
        match reader.next_record_after(stopped, row.end)? {
            Some(next) => from = next,
            None => break,
        }
    }
    moved += settle(&mut waiting, &mut failures);
    if let Some(e) = error {
        return Err(e);
    }
    failpoint("compaction-moved");
    let (done, answer) = oneshot::channel();
    volumes
        .index
        .blocking_send(IndexOp::DropVolume { volume: id, done })
        .map_err(|_| BlobError::Closed)?;
    if !answer.blocking_recv().map_err(|_| BlobError::Closed)?? {
        tracing::info!(
            volume = id,
            moved,
            failures,
            "volume still holds live records after compaction; trying again later"
        );
        return Ok(false);
    }
    failpoint("compaction-dropped");
    let path = volume_path(&volumes.dir, id);
    std::fs::remove_file(&path)?;
    match std::fs::remove_file(crate::idx_logs::idx_path(&volumes.dir, id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    volumes.files.forget(id);
    std::fs::File::open(&volumes.dir)?.sync_all()?;
    volumes.compactions.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        volume = id,
        moved,
        freed = row.end,
        secs = started.elapsed().as_secs_f64(),
        "volume compacted"
    );
    Ok(true)
}

/// Waits for every move in `waiting`; returns how many took.
fn settle(
    waiting: &mut Vec<oneshot::Receiver<Result<bool, BlobError>>>,
    failures: &mut u64,
) -> u64 {
    let mut moved = 0;
    for answer in waiting.drain(..) {
        match answer.blocking_recv() {
            Ok(Ok(true)) => moved += 1,
            // Deleted or repaired meanwhile: its copy is dead, and that is fine.
            Ok(Ok(false)) => {}
            _ => *failures += 1,
        }
    }
    moved
}

/// Keeps a copier at `rate` bytes per second at most.
struct Pace {
    started: std::time::Instant,
    rate: u64,
}

impl Pace {
    fn new(rate: u64) -> Self {
        Self {
            started: std::time::Instant::now(),
            rate: rate.max(1),
        }
    }

    fn wait(&self, done: u64) {
        let due = Duration::from_secs_f64(done as f64 / self.rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

fn move_item(
    key: BlobKey,
    current: &BlobMeta,
) -> (VolumeItem, oneshot::Receiver<Result<bool, BlobError>>) {
    let (done, answer): (Reply<bool>, _) = oneshot::channel();
    let item = VolumeItem::Move {
        key,
        from: current.location,
        meta: current.clone(),
        done,
    };
    (item, answer)
}

/// The header of a put record of `meta`'s file. The meta it carries says nothing of where the
/// record is (its place is where it is found); a copy's (`copy`: compaction, repair) names the
/// record it copies, so that a load of the map replays it as a move (see `crate::map_load`).
fn put_header(key: BlobKey, meta: &BlobMeta, length: u64, copy: bool) -> RecordHeader {
    let mut in_record = meta.clone();
    if !copy {
        in_record.location = Location::DataFile;
    }
    RecordHeader {
        kind: RecordKind::Put,
        key,
        length,
        sequence: 0,
        meta: in_record.encode(),
    }
}

/// Hands a batch that reached the disk to the index, each record's entry pointing at its place,
/// and waits for its commit.
/// Returns whether it committed.
fn send_batch(index: &mpsc::Sender<IndexOp>, batch: Batch<VolumeItem>) -> bool {
    failpoint("volume-appended");
    let sequence = batch
        .records
        .iter()
        .map(|(found, _)| found.header.sequence)
        .max()
        .unwrap_or(0);
    let items = batch
        .records
        .into_iter()
        .map(|(found, item)| {
            let place = Location::Volume {
                volume: batch.volume,
                offset: found.offset,
                body: u32::try_from(found.body_offset - found.offset).unwrap_or(u32::MAX),
            };
            // The record's blocks are the volume's, whatever the writer's were (a file moved
            // from a volume of another block size).
            let placed = |meta: &mut BlobMeta| {
                meta.location = place;
                meta.block_size = batch.block_size;
            };
            match item {
                VolumeItem::Put {
                    key,
                    mut meta,
                    done,
                } => {
                    placed(&mut meta);
                    VolumeItem::Put { key, meta, done }
                }
                VolumeItem::Move {
                    key,
                    from,
                    mut meta,
                    done,
                } => {
                    placed(&mut meta);
                    VolumeItem::Move {
                        key,
                        from,
                        meta,
                        done,
                    }
                }
                delete @ VolumeItem::Delete { .. } => delete,
            }
        })
        .collect();
    // The writer waits for this commit before its next append. Overlapping the two (the next
    // batch's fdatasync with this one's commit) was measured slower here: with fast syncs the
    // CPU is the limit, and waiting lets twice as many records gather per batch, so each
    // costs less (5 KB uploads on one node: 82-98 µs of CPU each instead of 102-111, and
    // 10,400-12,500/s instead of 9,400-9,600/s).
    let (settled, wait) = std::sync::mpsc::sync_channel(1);
    let op = IndexOp::Volume {
        volume: batch.volume,
        end: batch.end,
        sequence,
        items,
        settled: Some(settled),
    };
    if let Err(mpsc::error::SendError(IndexOp::Volume { items, .. })) = index.blocking_send(op) {
        items.into_iter().for_each(|i| i.failed(BlobError::Closed));
        return false;
    }
    // Told on commit or refusal; a writer that went away drops the sender, which ends this too.
    wait.recv().unwrap_or(false)
}

/// Whether a volume file holds anything past its header (zeros written ahead do not count).
fn has_records(path: &Path) -> Result<bool, BlobError> {
    let len = std::fs::metadata(path)?.len();
    if len <= HEADER_LEN {
        return Ok(false);
    }
    let mut first = [0u8; 2];
    let file = std::fs::File::open(path)?;
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut first, HEADER_LEN)?;
    Ok(first != [0, 0])
}

fn create_volume(dir: &Path, id: u64, block_size: u32) -> Result<VolumeFile, BlobError> {
    let mut volume = VolumeFile::create(
        &volume_path(dir, id),
        VolumeHeader {
            volume_id: id,
            block_size,
        },
    )?;
    volume.preallocate(PREALLOCATE);
    Ok(volume)
}

fn volume_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016x}.{SUFFIX}"))
}

fn volume_id_of(path: &Path) -> Option<u64> {
    id_of(path, SUFFIX)
}

/// The volume id a file named `{id:016x}.{suffix}` is for.
pub(crate) fn id_of(path: &Path, suffix: &str) -> Option<u64> {
    if path.extension()? != suffix {
        return None;
    }
    let stem = path.file_stem()?.to_str()?;
    (stem.len() == 16)
        .then(|| u64::from_str_radix(stem, 16).ok())
        .flatten()
}

/// Every volume file under a store's root, for tools and tests that look at the disk.
pub fn volume_paths(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    match std::fs::read_dir(root.join(DIR)) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                if volume_id_of(&path).is_some() {
                    out.push(path);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// Where a file's bytes are on disk: its data file, or its newest record in a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnDisk {
    pub path: PathBuf,
    /// Where its first block starts in that file (blocks of data, each followed by its CRC).
    pub first_block: u64,
}

/// Finds a complete file's bytes under a store's root without its index (which a running
/// node holds): for tools and tests that look at, or damage, the disk on purpose. The newest
/// record of the key in the newest volume holding one is the one a repair or compaction
/// left current.
pub fn locate(root: &Path, key: &BlobKey) -> std::io::Result<Option<OnDisk>> {
    for path in crate::data_file_paths(root)? {
        if path.file_name().and_then(|n| n.to_str()) == Some(key.to_string().as_str()) {
            return Ok(Some(OnDisk {
                path,
                first_block: crate::layout::HEADER_LEN,
            }));
        }
    }
    for path in volume_paths(root)?.into_iter().rev() {
        let reader = VolumeReader::open(&path).map_err(std::io::Error::other)?;
        let len = std::fs::metadata(&path)?.len();
        let mut newest = None;
        reader
            .scan(len, false, |found| {
                if found.header.key == *key && found.header.kind == RecordKind::Put {
                    newest = Some(found.body_offset);
                }
                true
            })
            .map_err(std::io::Error::other)?;
        if let Some(first_block) = newest {
            return Ok(Some(OnDisk { path, first_block }));
        }
    }
    Ok(None)
}
