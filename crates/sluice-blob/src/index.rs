//! The redb index and its single writer.
//!
//! One thread owns every write transaction. Callers send it operations over a bounded channel;
//! it takes all that are waiting (up to `MAX_BATCH`) into one transaction and one commit, so
//! concurrent uploads share an fsync instead of queueing for one each (group commit).
//!
//! A commit that fails with an I/O error (a full disk) leaves redb refusing every later write
//! until the database is opened again. So the writer then answers writes at once with the
//! reason (`NoSpace` for a full disk), and every second opens the database again and tries an
//! empty commit; once one goes through, writes resume by themselves. Reads go on throughout
//! (but for the moment of reopening).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sluice_proto::BlobKey;
use sluice_state::{LockRecover, RwLockRecover};
use tokio::sync::{mpsc, oneshot};

use crate::BlobError;
use crate::idx_logs::IdxLogs;
use crate::record::{BlobMeta, BlobState, Location};
use crate::volume_map::{IdxEntry, Slot, VolumeMap};
use crate::volumes::VolumeFiles;

pub(crate) const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
pub(crate) const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Every put and delete this node applied, in order: what peers pull to catch up.
const OPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("oplog");
/// Keys deleted here, forever (keys are never reused): a late replica of one is refused, so a
/// peer that missed the delete cannot bring the file back.
pub(crate) const TOMBSTONES: TableDefinition<&[u8], u64> = TableDefinition::new("tombstones");
/// Keys taken out of the volume map with no volume record to say so (a delete on a full
/// disk), until a checkpoint has their log entries: a load takes them out again, whatever
/// the logs say (see `crate::map_load`).
pub(crate) const UNLOGGED: TableDefinition<&[u8], u64> = TableDefinition::new("unlogged_removals");
/// Volume id -> [`VolumeRow`].
pub(crate) const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");
const FILES: &str = "files";
/// The last sequence number a committed volume record used.
const VOLUME_SEQUENCE: &str = "volume_sequence";
const BYTES: &str = "bytes";
const OPLOG_HEAD: &str = "oplog_head";
/// Set once files in volumes are indexed by the volume map (before, their entries were in
/// `BLOBS`, and the first open moves them; see `crate::map_load`).
pub(crate) const VOLUME_MAP: &str = "volume_map";

const MAX_BATCH: usize = 512;
const QUEUE_DEPTH: usize = 4096;
/// How often a writer whose commits fail tries to recover.
const RECOVERY_PAUSE: Duration = Duration::from_secs(1);
/// What a recovering writer writes to see that there is room again.
const PROBE_BYTES: usize = 256 << 10;
const PROBE: TableDefinition<&str, &[u8]> = TableDefinition::new("probe");

/// Files and bytes held, kept in the index beside the records so they survive restarts exactly.
#[derive(Debug, Default)]
pub struct StoreCounters {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Every volume the index knows, as of its last commit.
    pub volumes: Mutex<std::collections::BTreeMap<u64, VolumeRow>>,
    /// The last sequence number a committed volume record used.
    pub volume_sequence: AtomicU64,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, BlobError>>;

pub(crate) enum IndexOp {
    Insert {
        key: BlobKey,
        meta: BlobMeta,
        done: Reply<Adoption>,
    },
    Remove {
        key: BlobKey,
        /// Remember the key as deleted (a store of record); false for a cache forgetting a
        /// copy it may fetch again.
        tombstone: bool,
        done: Reply<Option<BlobMeta>>,
    },
    /// A volume batch that reached the disk: its records' index changes and the volume's new
    /// length, in one commit (see `crate::volumes`).
    Volume {
        volume: u64,
        end: u64,
        /// The last record sequence number the batch used.
        sequence: u64,
        items: Vec<VolumeItem>,
        /// Told (or dropped) once the batch's commit is over, whichever way it went: the
        /// volume writer waits for it before its next append.
        settled: Option<std::sync::mpsc::SyncSender<bool>>,
    },
    /// Forgets a volume nothing lives in any more (a compacted one): `false` if something does.
    DropVolume { volume: u64, done: Reply<bool> },
    /// Loads the volume map (from the index logs and the volumes), once the volumes are open.
    /// (Answered over a std channel: the store's open, which asks, may be on a runtime thread.)
    LoadVolumeMap {
        checkpoint_entries: u64,
        checkpoint_bytes: u64,
        done: std::sync::mpsc::SyncSender<Result<crate::map_load::Loaded, BlobError>>,
    },
    /// Points `key` at the same file's bytes elsewhere (a repaired volume record's new data
    /// file), if the index still has it at `from`.
    Relocate {
        key: BlobKey,
        from: Location,
        meta: BlobMeta,
        done: Reply<bool>,
    },
}

/// What a record of a volume batch does to the index.
pub(crate) enum VolumeItem {
    /// A new file (as [`IndexOp::Insert`]).
    Put {
        key: BlobKey,
        meta: BlobMeta,
        done: Reply<Adoption>,
    },
    /// The same file's bytes at a new place (compaction, repair): taken only if the index
    /// still has the key at `from`.
    Move {
        key: BlobKey,
        from: Location,
        meta: BlobMeta,
        done: Reply<bool>,
    },
    /// A delete record (as [`IndexOp::Remove`]).
    Delete {
        key: BlobKey,
        tombstone: bool,
        done: Reply<Option<BlobMeta>>,
    },
}

impl VolumeItem {
    pub(crate) fn failed(self, error: BlobError) {
        match self {
            VolumeItem::Put { done, .. } => drop(done.send(Err(error))),
            VolumeItem::Move { done, .. } => drop(done.send(Err(error))),
            VolumeItem::Delete { done, .. } => drop(done.send(Err(error))),
        }
    }
}

/// What the index knows of one volume: how long it is (what a restart keeps of it) and how
/// much of it is live records (the rest is dead: deleted, moved, or never committed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeRow {
    pub end: u64,
    pub live_bytes: u64,
    pub live_records: u64,
    /// How much of the volume's index log the last checkpoint synced (v2).
    pub idx_len: u64,
    /// Up to where the volume's records are in the index logs as of that checkpoint: a
    /// restart reads the records from here to `end` again (v2; 0 in v1 rows).
    pub covered: u64,
}

const VOLUME_ROW_V1: u8 = 1;
const VOLUME_ROW_V2: u8 = 2;

impl VolumeRow {
    pub(crate) fn encode(&self) -> [u8; 41] {
        let mut out = [0u8; 41];
        out[0] = VOLUME_ROW_V2;
        for (i, v) in [
            self.end,
            self.live_bytes,
            self.live_records,
            self.idx_len,
            self.covered,
        ]
        .into_iter()
        .enumerate()
        {
            out[1 + i * 8..9 + i * 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Result<Self, BlobError> {
        let (fields, rest) = match raw.split_first() {
            Some((&VOLUME_ROW_V1, rest)) => (3, rest),
            Some((&VOLUME_ROW_V2, rest)) => (5, rest),
            _ => return Err(BlobError::BadRecord),
        };
        let field = |i: usize| -> Result<u64, BlobError> {
            if i >= fields {
                return Ok(0);
            }
            rest.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(BlobError::BadRecord)
        };
        Ok(Self {
            end: field(0)?,
            live_bytes: field(1)?,
            live_records: field(2)?,
            idx_len: field(3)?,
            covered: field(4)?,
        })
    }

    /// Bytes of records nothing points at.
    pub fn dead_bytes(&self) -> u64 {
        self.end
            .saturating_sub(crate::volume::HEADER_LEN)
            .saturating_sub(self.live_bytes)
    }
}

pub(crate) struct Index {
    db: Arc<DbSlot>,
    ops: mpsc::Sender<IndexOp>,
    pub counters: Arc<StoreCounters>,
    /// Where each file kept in a volume is (the rest are in `BLOBS`).
    pub(crate) map: Arc<VolumeMap>,
    pub(crate) files: Arc<VolumeFiles>,
    /// Why writes fail, while they do.
    trouble: Arc<Mutex<Option<Trouble>>>,
}

/// Why index writes fail, while they do.
#[derive(Debug, Clone)]
enum Trouble {
    NoSpace,
    Failed(String),
}

impl Trouble {
    fn of(e: &BlobError) -> Self {
        match e {
            BlobError::NoSpace => Trouble::NoSpace,
            other => Trouble::Failed(other.to_string()),
        }
    }

    fn error(&self) -> BlobError {
        match self {
            Trouble::NoSpace => BlobError::NoSpace,
            Trouble::Failed(reason) => BlobError::Index(reason.clone()),
        }
    }
}

impl std::fmt::Display for Trouble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trouble::NoSpace => f.write_str("the disk holding the index is full"),
            Trouble::Failed(reason) => write!(f, "the index cannot be written: {reason}"),
        }
    }
}

/// The open database, which the writer may close and open again (redb wants that after an
/// I/O error in a commit).
pub(crate) struct DbSlot {
    path: PathBuf,
    db: RwLock<Option<Arc<Database>>>,
}

impl DbSlot {
    /// The database as it is now; briefly unavailable while the writer reopens it.
    pub(crate) fn get(&self) -> Result<Arc<Database>, BlobError> {
        self.db
            .read_or_recover()
            .clone()
            .ok_or(BlobError::Reopening)
    }

    /// Closes the database and opens it again. Waits (briefly) for readers holding it.
    fn reopen(&self) -> Result<Arc<Database>, BlobError> {
        let old = self.db.write_or_recover().take();
        if let Some(mut old) = old {
            // redb allows one open instance per file: the old one must go first.
            for _ in 0..500 {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(shared) => {
                        old = shared;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        }
        let db = Arc::new(Database::create(&self.path)?);
        *self.db.write_or_recover() = Some(db.clone());
        Ok(db)
    }
}

impl Index {
    /// Opens (or creates) the index and starts its writer thread. Blocking.
    pub fn open(
        path: &Path,
        files: Arc<VolumeFiles>,
    ) -> Result<(Self, std::thread::JoinHandle<()>), BlobError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let counters = StoreCounters::default();
        {
            txn.open_table(BLOBS)?;
            txn.open_table(OPLOG)?;
            txn.open_table(TOMBSTONES)?;
            let volumes = txn.open_table(VOLUMES)?;
            let mut rows = counters.volumes.lock_or_recover();
            for item in volumes.range::<u64>(..)? {
                let (id, raw) = item?;
                rows.insert(id.value(), VolumeRow::decode(raw.value())?);
            }
            drop(rows);
            let table = txn.open_table(COUNTERS)?;
            let get =
                |name| -> Result<u64, BlobError> { Ok(table.get(name)?.map_or(0, |v| v.value())) };
            counters.files.store(get(FILES)?, Ordering::Relaxed);
            counters.bytes.store(get(BYTES)?, Ordering::Relaxed);
            counters
                .volume_sequence
                .store(get(VOLUME_SEQUENCE)?, Ordering::Relaxed);
        }
        txn.commit()?;
        let slot = Arc::new(DbSlot {
            path: path.to_owned(),
            db: RwLock::new(Some(Arc::new(db))),
        });
        let counters = Arc::new(counters);
        let trouble = Arc::new(Mutex::new(None));
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let map = Arc::new(VolumeMap::default());
        let writer = Writer {
            slot: slot.clone(),
            counters: counters.clone(),
            trouble: trouble.clone(),
            map: map.clone(),
            files: files.clone(),
            logs: IdxLogs::new(files.dir().to_owned()),
        };
        let handle = std::thread::Builder::new()
            .name("sluice-index-writer".into())
            .spawn(move || writer.run(rx))?;
        Ok((
            Self {
                db: slot,
                ops: tx,
                counters,
                trouble,
                map,
                files,
            },
            handle,
        ))
    }

    /// The database, for reads.
    pub(crate) fn db(&self) -> Result<Arc<Database>, BlobError> {
        self.db.get()
    }

    /// `Some(reason)` while writes fail (a full disk, say).
    pub fn write_trouble(&self) -> Option<String> {
        self.trouble
            .lock_or_recover()
            .as_ref()
            .map(Trouble::to_string)
    }

    pub async fn insert(&self, key: BlobKey, meta: BlobMeta) -> Result<Adoption, BlobError> {
        request(&self.ops, |done| IndexOp::Insert { key, meta, done }).await
    }

    pub async fn remove(
        &self,
        key: BlobKey,
        tombstone: bool,
    ) -> Result<Option<BlobMeta>, BlobError> {
        request(&self.ops, |done| IndexOp::Remove {
            key,
            tombstone,
            done,
        })
        .await
    }

    /// See [`IndexOp::Relocate`].
    pub async fn relocate(
        &self,
        key: BlobKey,
        from: Location,
        meta: BlobMeta,
    ) -> Result<bool, BlobError> {
        request(&self.ops, |done| IndexOp::Relocate {
            key,
            from,
            meta,
            done,
        })
        .await
    }

    /// A sender of operations, for the volume writer's thread.
    pub(crate) fn sender(&self) -> mpsc::Sender<IndexOp> {
        self.ops.clone()
    }

    /// Looks a key up: in the volume map (and then its record's header), else in `BLOBS`.
    /// Blocking (may read from disk).
    pub fn get(&self, key: &BlobKey) -> Result<Option<BlobMeta>, BlobError> {
        // A volume compacted away between the lookup and the read: the entry moved; look
        // again (a few times: compactions do not follow each other that fast).
        for _ in 0..4 {
            let Some(slot) = self.map.get(key) else {
                break;
            };
            match self.files.meta(key, &slot)? {
                Some(meta) => return Ok(Some(meta)),
                None if self.map.get(key) == Some(slot) => {
                    tracing::error!(%key, volume = slot.volume, "the volume of an indexed file is missing");
                    return Err(BlobError::Corrupt {
                        key: *key,
                        block: 0,
                    });
                }
                None => {}
            }
        }
        self.get_blob(key)
    }

    /// As [`Self::get`], but a file in a volume whose record header cannot be read comes back
    /// as what the map knows of it (length and place; no digest, type or time), so that a
    /// writer can decide on it: a peer's copy of that length repairs it.
    pub fn get_for_write(&self, key: &BlobKey) -> Result<Option<BlobMeta>, BlobError> {
        match self.get(key) {
            Err(BlobError::Corrupt { .. }) if self.map.get(key).is_some() => Ok(self
                .map
                .get(key)
                .map(|slot| unread_meta(&slot, &self.files))),
            other => other,
        }
    }

    /// A key's entry in `BLOBS` (files in data files).
    fn get_blob(&self, key: &BlobKey) -> Result<Option<BlobMeta>, BlobError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        match table.get(key.as_bytes().as_slice())? {
            Some(v) => Ok(Some(BlobMeta::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Up to `limit` indexed keys after `after` (from the first when `None`), in key order.
    pub fn keys_after(
        &self,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<Vec<BlobKey>, BlobError> {
        let mut out = self.map.keys_after(after, limit);
        out.extend(self.blob_keys_after(after, limit)?);
        out.sort_unstable();
        out.dedup();
        out.truncate(limit);
        Ok(out)
    }

    fn blob_keys_after(
        &self,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<Vec<BlobKey>, BlobError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        let range = match after {
            Some(k) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(k.as_bytes().as_slice()),
                std::ops::Bound::Unbounded,
            ))?,
            None => table.range::<&[u8]>(..)?,
        };
        for item in range.take(limit) {
            let (k, _) = item?;
            let bytes: [u8; sluice_proto::fileid::KEY_BYTES] =
                k.value().try_into().map_err(|_| BlobError::BadRecord)?;
            out.push(BlobKey::from_bytes(bytes));
        }
        Ok(out)
    }

    pub fn is_tombstoned(&self, key: &BlobKey) -> Result<bool, BlobError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(TOMBSTONES)?;
        Ok(table.get(key.as_bytes().as_slice())?.is_some())
    }

    /// Up to `limit` oplog entries with a sequence number above `after`, oldest first.
    pub fn oplog_after(&self, after: u64, limit: usize) -> Result<Vec<OplogEntry>, BlobError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(OPLOG)?;
        let mut out = Vec::new();
        for item in table.range(after.saturating_add(1)..)?.take(limit) {
            let (seq, raw) = item?;
            out.push(OplogEntry::decode(seq.value(), raw.value())?);
        }
        Ok(out)
    }

    /// The sequence number of the newest oplog entry (0 when empty).
    pub fn oplog_head(&self) -> Result<u64, BlobError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(COUNTERS)?;
        Ok(table.get(OPLOG_HEAD)?.map_or(0, |v| v.value()))
    }

    /// Drops the sender so the writer thread drains and exits.
    pub fn close(self) {
        drop(self.ops);
    }
}

/// Sends the writer the operation `make` builds around its reply, and waits for the reply.
pub(crate) async fn request<T>(
    ops: &mpsc::Sender<IndexOp>,
    make: impl FnOnce(Reply<T>) -> IndexOp,
) -> Result<T, BlobError> {
    let (done, rx) = oneshot::channel();
    ops.send(make(done)).await.map_err(|_| BlobError::Closed)?;
    rx.await.map_err(|_| BlobError::Closed)?
}

/// The one writer of the index.
struct Writer {
    slot: Arc<DbSlot>,
    counters: Arc<StoreCounters>,
    trouble: Arc<Mutex<Option<Trouble>>>,
    map: Arc<VolumeMap>,
    files: Arc<VolumeFiles>,
    logs: IdxLogs,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<IndexOp>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if let Some(trouble) = self.trouble() {
                // Writes fail: answer them at once, and try to recover now and then.
                loop {
                    match rx.try_recv() {
                        Ok(op) => op.refuse(&trouble),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                std::thread::sleep(RECOVERY_PAUSE);
                self.recover();
                continue;
            }
            let Some(op) = rx.blocking_recv() else {
                // Closing: a checkpoint now lets the next open read the logs alone.
                if self.logs.since_checkpoint > 0 || self.logs.bytes_since_checkpoint > 0 {
                    if let Ok(db) = self.slot.get() {
                        if let Err(e) = checkpoint(&db, &self.counters, &mut self.logs) {
                            tracing::warn!(error = %e, "volume map checkpoint at close failed");
                        }
                    }
                }
                return;
            };
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            match self.slot.get() {
                Ok(db) => {
                    let state = MapState {
                        map: &self.map,
                        files: &self.files,
                        logs: &mut self.logs,
                    };
                    if let Err(e) = apply_batch(&db, &self.counters, state, &mut batch) {
                        self.set_trouble(Some(Trouble::of(&e)));
                        // redb refuses reads too after a failed commit: open it again so
                        // reads go on while writes wait for room.
                        drop(db);
                        if let Err(e) = self.slot.reopen() {
                            tracing::error!(error = %e, "could not reopen the index; reads wait for it too");
                        }
                    }
                }
                Err(e) => {
                    let trouble = Trouble::of(&e);
                    batch.drain(..).for_each(|op| op.refuse(&trouble));
                }
            }
        }
    }

    fn trouble(&self) -> Option<Trouble> {
        self.trouble.lock_or_recover().clone()
    }

    fn set_trouble(&self, trouble: Option<Trouble>) {
        match &trouble {
            Some(reason) => {
                tracing::error!(%reason, "index writes fail; refusing writes until they work again")
            }
            None => tracing::info!("index writes work again"),
        }
        *self.trouble.lock_or_recover() = trouble;
    }

    /// Writes (then removes) a probe of some size: writes resume if there is room for it. (An
    /// empty commit goes through on a disk with no room at all.)
    fn recover(&self) {
        let attempt = || -> Result<(), BlobError> {
            let db = match self.slot.get() {
                Ok(db) => db,
                Err(_) => self.slot.reopen()?,
            };
            for probe in [Some(vec![0u8; PROBE_BYTES]), None] {
                let txn = db.begin_write()?;
                {
                    let mut table = txn.open_table(PROBE)?;
                    match &probe {
                        Some(bytes) => drop(table.insert("probe", bytes.as_slice())?),
                        None => drop(table.remove("probe")?),
                    }
                }
                txn.commit()?;
            }
            Ok(())
        };
        match attempt() {
            Ok(()) => self.set_trouble(None),
            Err(e) => {
                *self.trouble.lock_or_recover() = Some(Trouble::of(&e));
                // As after any failed commit, so reads go on.
                let _ = self.slot.reopen();
            }
        }
    }
}

impl IndexOp {
    /// Answers the operation with the writer's trouble: `NoSpace` for a full disk.
    fn refuse(self, trouble: &Trouble) {
        match self {
            IndexOp::Insert { done, .. } => drop(done.send(Err(trouble.error()))),
            IndexOp::Remove { done, .. } => drop(done.send(Err(trouble.error()))),
            IndexOp::DropVolume { done, .. } => drop(done.send(Err(trouble.error()))),
            IndexOp::LoadVolumeMap { done, .. } => drop(done.send(Err(trouble.error()))),
            IndexOp::Relocate { done, .. } => drop(done.send(Err(trouble.error()))),
            IndexOp::Volume { items, .. } => items
                .into_iter()
                .for_each(|item| item.failed(trouble.error())),
        }
    }
}

/// What an insert did to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adoption {
    /// The key was new.
    New,
    /// The new version replaced this shorter, incomplete one.
    Replaced(BlobMeta),
    /// The index kept the version it had (complete, or at least as long).
    Kept(BlobMeta),
}

/// Whether `new` should replace `old` for the same key. Complete files never change; an
/// incomplete one gives way to the whole file, to a longer prefix, or to its abandoned
/// final state.
pub(crate) fn supersedes(new: &BlobMeta, old: &BlobMeta) -> bool {
    use crate::record::BlobState::{Abandoned, Partial};
    if old.state.is_complete() {
        return false;
    }
    new.state.is_complete()
        || new.size > old.size
        || (new.size == old.size
            && matches!(old.state, Partial { .. })
            && matches!(new.state, Abandoned { .. }))
}

/// What one operation will answer once the batch commits.
enum Outcome {
    Adopted(Reply<Adoption>, Result<Adoption, BlobError>),
    Removed(Reply<Option<BlobMeta>>, Option<BlobMeta>),
    Done(Reply<bool>, bool),
    /// Told whether the batch committed.
    Settled(std::sync::mpsc::SyncSender<bool>),
}

impl Outcome {
    fn answer(self) {
        match self {
            Outcome::Adopted(done, result) => drop(done.send(result)),
            Outcome::Removed(done, old) => drop(done.send(Ok(old))),
            Outcome::Done(done, flag) => drop(done.send(Ok(flag))),
            Outcome::Settled(settled) => drop(settled.send(true)),
        }
    }

    fn refuse(self, error: BlobError) {
        match self {
            Outcome::Adopted(done, _) => drop(done.send(Err(error))),
            Outcome::Removed(done, _) => drop(done.send(Err(error))),
            Outcome::Done(done, _) => drop(done.send(Err(error))),
            Outcome::Settled(settled) => drop(settled.send(false)),
        }
    }
}

/// The volume map and what keeps it: the writer's, lent to each transaction.
pub(crate) struct MapState<'w> {
    pub(crate) map: &'w VolumeMap,
    pub(crate) files: &'w VolumeFiles,
    pub(crate) logs: &'w mut IdxLogs,
}

/// One write transaction of the writer, with the counters it moves.
struct Tx<'t> {
    txn: &'t redb::WriteTransaction,
    blobs: redb::Table<'t, &'static [u8], &'static [u8]>,
    oplog: redb::Table<'t, u64, &'static [u8]>,
    tombstones: redb::Table<'t, &'static [u8], u64>,
    volumes: redb::Table<'t, u64, &'static [u8]>,
    head: u64,
    files: u64,
    bytes: u64,
    sequence: u64,
    /// Volume rows this transaction changed, and those it removed.
    rows: std::collections::BTreeMap<u64, VolumeRow>,
    dropped: Vec<u64>,
    map: &'t VolumeMap,
    volume_files: &'t VolumeFiles,
    /// Changes to the volume map, applied once the transaction commits.
    staged: std::collections::HashMap<BlobKey, Option<Slot>>,
    /// Index log entries for those changes, appended once it commits.
    appends: Vec<(u64, IdxEntry)>,
    /// Keys moved from the map to `blobs`: taken out of the map once it commits.
    moved_out: Vec<BlobKey>,
    /// A change no volume record says (an entry dropped without one): the logs must be
    /// synced, and checkpointed, before it is answered.
    checkpoint_now: bool,
}

impl Tx<'_> {
    fn row(&mut self, volume: u64) -> Result<&mut VolumeRow, BlobError> {
        if !self.rows.contains_key(&volume) {
            let row = match self.volumes.get(volume)? {
                Some(raw) => VolumeRow::decode(raw.value())?,
                None => VolumeRow::default(),
            };
            self.rows.insert(volume, row);
        }
        Ok(self.rows.entry(volume).or_default())
    }

    /// Counts a record of `len` bytes in `volume` as live or dead in the volume's row.
    fn tally(&mut self, volume: u64, len: u64, live: bool) -> Result<(), BlobError> {
        let row = self.row(volume)?;
        if live {
            row.live_bytes += len;
            row.live_records += 1;
        } else {
            row.live_bytes = row.live_bytes.saturating_sub(len);
            row.live_records = row.live_records.saturating_sub(1);
        }
        Ok(())
    }

    fn tally_slot(
        &mut self,
        slot: &Slot,
        block_size: Option<u32>,
        live: bool,
    ) -> Result<(), BlobError> {
        let block_size = block_size
            .or_else(|| self.volume_files.block_size(slot.volume))
            .unwrap_or(crate::DEFAULT_BLOCK_SIZE);
        self.tally(slot.volume, slot.record_len(block_size), live)
    }

    /// Where `key` is in a volume, as of this transaction.
    fn slot(&self, key: &BlobKey) -> Option<Slot> {
        if self.moved_out.contains(key) {
            return None;
        }
        match self.staged.get(key) {
            Some(staged) => *staged,
            None => self.map.get(key),
        }
    }

    /// Moves `key` from `old` to `new` in the volume map (either may be none).
    fn set_slot(&mut self, key: BlobKey, old: Option<Slot>, new: Option<Slot>) {
        if let Some(old) = old {
            self.appends.push((old.volume, IdxEntry::gone(key, &old)));
        }
        if let Some(new) = new {
            self.appends.push((new.volume, IdxEntry::live(key, &new)));
        }
        self.staged.insert(key, new);
    }

    /// The index record of the file at `slot`, from its record's header. A header that
    /// cannot be read gives what the map knows (a damaged file, repaired from peers).
    fn slot_meta(&self, key: &BlobKey, slot: &Slot) -> BlobMeta {
        match self.volume_files.meta(key, slot) {
            Ok(Some(meta)) => meta,
            _ => unread_meta(slot, self.volume_files),
        }
    }

    fn log(&mut self, kind: OpKind, key: &BlobKey) -> Result<(), BlobError> {
        self.head += 1;
        self.oplog
            .insert(self.head, OplogEntry::encode(kind, key).as_slice())?;
        Ok(())
    }

    /// Stores `meta` under `key` unless the index keeps what it has (see [`supersedes`]).
    /// A file in a volume goes into the volume map, any other into `BLOBS`.
    fn insert(
        &mut self,
        key: BlobKey,
        meta: BlobMeta,
    ) -> Result<Result<Adoption, BlobError>, BlobError> {
        let k = key.as_bytes().as_slice();
        if self.tombstones.get(k)?.is_some() {
            return Ok(Err(BlobError::Deleted));
        }
        // Complete files never change: a second put of a key (a replica arriving twice) is a
        // no-op. Incomplete ones grow (see `supersedes`); each step is logged so peers
        // catching up fetch the newer version. Files in volumes are complete.
        if let Some(slot) = self.slot(&key) {
            return Ok(Ok(Adoption::Kept(self.slot_meta(&key, &slot))));
        }
        let adoption = if let Location::Volume {
            volume,
            offset,
            body,
        } = meta.location
        {
            let Ok(size) = u32::try_from(meta.size) else {
                return Ok(Err(BlobError::BadRecord));
            };
            let existing = self.blobs.get(k)?.map(|v| BlobMeta::decode(v.value()));
            let adoption = match existing {
                None => Adoption::New,
                Some(old) => {
                    let old = old?;
                    if !supersedes(&meta, &old) {
                        return Ok(Ok(Adoption::Kept(old)));
                    }
                    self.blobs.remove(k)?;
                    Adoption::Replaced(old)
                }
            };
            let slot = Slot {
                volume,
                offset,
                body,
                size,
            };
            self.set_slot(key, None, Some(slot));
            self.tally_slot(&slot, Some(meta.block_size), true)?;
            adoption
        } else {
            // One walk of the tree: the new record goes in, and the old one comes back (put
            // back when it stays: rare, and on a leaf this insert just made dirty).
            let old = match self.blobs.insert(k, meta.encode().as_slice())? {
                Some(v) => {
                    let raw = v.value().to_vec();
                    Some((BlobMeta::decode(&raw)?, raw))
                }
                None => None,
            };
            match old {
                None => Adoption::New,
                Some((old, _)) if supersedes(&meta, &old) => Adoption::Replaced(old),
                Some((old, raw)) => {
                    self.blobs.insert(k, raw.as_slice())?;
                    return Ok(Ok(Adoption::Kept(old)));
                }
            }
        };
        match &adoption {
            Adoption::Replaced(old) => self.bytes -= old.size,
            _ => self.files += 1,
        }
        self.bytes += meta.size;
        self.log(OpKind::Put, &key)?;
        Ok(Ok(adoption))
    }

    /// Removes `key`. `recorded`: a delete record in a volume says so too (else, for a file in
    /// a volume, the removal is checkpointed before it is answered).
    fn remove(
        &mut self,
        key: BlobKey,
        tombstone: bool,
        recorded: bool,
    ) -> Result<Option<BlobMeta>, BlobError> {
        let k = key.as_bytes().as_slice();
        let old = if let Some(slot) = self.slot(&key) {
            let meta = self.slot_meta(&key, &slot);
            self.tally_slot(&slot, None, false)?;
            self.set_slot(key, Some(slot), None);
            if !recorded {
                self.txn.open_table(UNLOGGED)?.insert(k, crate::now_ms())?;
                self.checkpoint_now = true;
            }
            Some(meta)
        } else {
            match self.blobs.remove(k)? {
                Some(v) => Some(BlobMeta::decode(v.value())?),
                None => None,
            }
        };
        if let Some(m) = &old {
            self.files -= 1;
            self.bytes -= m.size;
        }
        // Recorded even for a file this node never had, so it is refused later.
        if tombstone && self.tombstones.insert(k, crate::now_ms())?.is_none() {
            self.log(OpKind::Delete, &key)?;
        }
        Ok(old)
    }

    /// Points `key` at `meta`'s place if it is still at `from`; the file is the same, so
    /// peers have nothing to fetch and the oplog says nothing.
    fn relocate(
        &mut self,
        key: BlobKey,
        from: Location,
        meta: BlobMeta,
    ) -> Result<bool, BlobError> {
        let k = key.as_bytes().as_slice();
        let Some(slot) = self.slot(&key) else {
            // Files in data files do not move (but for the ones a store written before the
            // volume map may hold: none after its first open).
            return Ok(false);
        };
        if !slot.is_at(from) || u64::from(slot.size) != meta.size || !meta.state.is_complete() {
            return Ok(false);
        }
        self.tally_slot(&slot, None, false)?;
        match meta.location {
            Location::Volume {
                volume,
                offset,
                body,
            } => {
                let new = Slot {
                    volume,
                    offset,
                    body,
                    size: slot.size,
                };
                self.tally_slot(&new, Some(meta.block_size), true)?;
                self.set_slot(key, Some(slot), Some(new));
            }
            Location::DataFile => {
                self.blobs.insert(k, meta.encode().as_slice())?;
                // Out of the map only once `blobs` has it (after the commit), so no reader
                // finds the file in neither.
                self.appends.push((slot.volume, IdxEntry::gone(key, &slot)));
                self.moved_out.push(key);
                // No volume record says the file left: the logs must, before the answer.
                self.checkpoint_now = true;
            }
        }
        Ok(true)
    }

    fn apply(&mut self, op: IndexOp, outcomes: &mut Vec<Outcome>) -> Result<(), BlobError> {
        match op {
            IndexOp::Insert { key, meta, done } => {
                outcomes.push(Outcome::Adopted(done, self.insert(key, meta)?));
            }
            IndexOp::Remove {
                key,
                tombstone,
                done,
            } => outcomes.push(Outcome::Removed(done, self.remove(key, tombstone, false)?)),
            IndexOp::Volume {
                volume,
                end,
                sequence,
                items,
                settled,
            } => {
                if let Some(settled) = settled {
                    outcomes.push(Outcome::Settled(settled));
                }
                let row = self.row(volume)?;
                row.end = row.end.max(end);
                self.sequence = self.sequence.max(sequence);
                for item in items {
                    match item {
                        VolumeItem::Put { key, meta, done } => {
                            outcomes.push(Outcome::Adopted(done, self.insert(key, meta)?));
                        }
                        VolumeItem::Move {
                            key,
                            from,
                            meta,
                            done,
                        } => outcomes.push(Outcome::Done(done, self.relocate(key, from, meta)?)),
                        VolumeItem::Delete {
                            key,
                            tombstone,
                            done,
                        } => outcomes
                            .push(Outcome::Removed(done, self.remove(key, tombstone, true)?)),
                    }
                }
            }
            IndexOp::Relocate {
                key,
                from,
                meta,
                done,
            } => outcomes.push(Outcome::Done(done, self.relocate(key, from, meta)?)),
            IndexOp::LoadVolumeMap { done, .. } => {
                // Loaded on its own by the writer (see `apply_batch`); never here.
                drop(done.send(Err(BlobError::Closed)));
            }
            IndexOp::DropVolume { volume, done } => {
                let empty = self.row(volume)?.live_records == 0;
                if empty {
                    self.rows.remove(&volume);
                    self.volumes.remove(volume)?;
                    self.dropped.push(volume);
                }
                outcomes.push(Outcome::Done(done, empty));
            }
        }
        Ok(())
    }
}

/// Applies a batch in one transaction and answers each operation; the commit's error, if any,
/// is also returned (the writer decides what it means for later batches). Changes to the
/// volume map are applied, and their log entries appended, between the commit and the
/// answers.
fn apply_batch(
    db: &Database,
    counters: &StoreCounters,
    state: MapState<'_>,
    batch: &mut Vec<IndexOp>,
) -> Result<(), BlobError> {
    // A load runs alone, before anything else of its batch (nothing else can be there: the
    // store is not open yet).
    if let Some(at) = batch
        .iter()
        .position(|op| matches!(op, IndexOp::LoadVolumeMap { .. }))
    {
        if let IndexOp::LoadVolumeMap {
            checkpoint_entries,
            checkpoint_bytes,
            done,
        } = batch.remove(at)
        {
            state.logs.checkpoint_every = checkpoint_entries;
            state.logs.checkpoint_bytes = checkpoint_bytes;
            let loaded = crate::map_load::load(db, counters, state.map, state.files, state.logs);
            let failed = loaded
                .as_ref()
                .err()
                .map(|e| BlobError::Index(e.to_string()));
            drop(done.send(loaded));
            if let Some(e) = failed {
                return Err(e);
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut committed = None;
    let result = (|| -> Result<(), BlobError> {
        let txn = db.begin_write()?;
        {
            let mut counter_table = txn.open_table(COUNTERS)?;
            let mut tx = Tx {
                txn: &txn,
                blobs: txn.open_table(BLOBS)?,
                oplog: txn.open_table(OPLOG)?,
                tombstones: txn.open_table(TOMBSTONES)?,
                volumes: txn.open_table(VOLUMES)?,
                head: counter_table.get(OPLOG_HEAD)?.map_or(0, |v| v.value()),
                files: counters.files.load(Ordering::Relaxed),
                bytes: counters.bytes.load(Ordering::Relaxed),
                sequence: counters.volume_sequence.load(Ordering::Relaxed),
                rows: std::collections::BTreeMap::new(),
                dropped: Vec::new(),
                map: state.map,
                volume_files: state.files,
                staged: std::collections::HashMap::new(),
                appends: Vec::new(),
                moved_out: Vec::new(),
                checkpoint_now: false,
            };
            for op in batch.drain(..) {
                tx.apply(op, &mut outcomes)?;
            }
            for (id, row) in &tx.rows {
                tx.volumes.insert(*id, row.encode().as_slice())?;
            }
            counter_table.insert(FILES, tx.files)?;
            counter_table.insert(BYTES, tx.bytes)?;
            counter_table.insert(OPLOG_HEAD, tx.head)?;
            counter_table.insert(VOLUME_SEQUENCE, tx.sequence)?;
            committed = Some(Committed {
                staged: std::mem::take(&mut tx.staged),
                files: tx.files,
                bytes: tx.bytes,
                sequence: tx.sequence,
                rows: std::mem::take(&mut tx.rows),
                dropped: std::mem::take(&mut tx.dropped),
                appends: std::mem::take(&mut tx.appends),
                moved_out: std::mem::take(&mut tx.moved_out),
                checkpoint_now: tx.checkpoint_now,
            });
        }
        // The map changes go in just before the commit, and are undone if it fails: so no
        // reader ever sees a committed oplog entry (what peers catch up from) before its
        // file, at the price of maybe seeing a file a moment before its commit (its bytes
        // are on disk already).
        let undo = committed
            .as_mut()
            .map(|c| state.map.swap(std::mem::take(&mut c.staged)));
        if let Err(e) = txn.commit() {
            if let Some(undo) = undo {
                state.map.swap(undo);
            }
            return Err(e.into());
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            if let Some(c) = committed {
                counters.files.store(c.files, Ordering::Relaxed);
                counters.bytes.store(c.bytes, Ordering::Relaxed);
                counters
                    .volume_sequence
                    .store(c.sequence, Ordering::Relaxed);
                {
                    let mut known = counters.volumes.lock_or_recover();
                    for (id, row) in c.rows {
                        let before = known.get(&id).map_or(0, |r| r.end);
                        state.logs.bytes_since_checkpoint += row.end.saturating_sub(before);
                        known.insert(id, row);
                    }
                    for id in &c.dropped {
                        known.remove(id);
                    }
                }
                state
                    .map
                    .swap(c.moved_out.into_iter().map(|key| (key, None)));
                state.logs.append(&c.appends);
                for id in c.dropped {
                    state.logs.forget(id);
                }
                if c.checkpoint_now || state.logs.due() {
                    if let Err(e) = checkpoint(db, counters, state.logs) {
                        // The map is right; a restart reads more of the volumes again.
                        tracing::warn!(error = %e, "volume map checkpoint failed");
                    }
                }
            }
            outcomes.into_iter().for_each(Outcome::answer);
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "index commit failed; the batch is refused");
            // Every operation of the batch gets the error, those not reached yet included.
            let trouble = Trouble::of(&e);
            batch.drain(..).for_each(|op| op.refuse(&trouble));
            outcomes
                .into_iter()
                .for_each(|outcome| outcome.refuse(trouble.error()));
            Err(e)
        }
    }
}

/// What the map alone knows of a file in a volume whose record header cannot be read.
fn unread_meta(slot: &Slot, files: &VolumeFiles) -> BlobMeta {
    BlobMeta {
        size: u64::from(slot.size),
        content_type: String::new(),
        created_ms: 0,
        block_size: files.block_size(slot.volume).unwrap_or(0),
        state: BlobState::Complete,
        sha256: None,
        location: slot.location(),
    }
}

/// What a committed transaction changes outside redb.
struct Committed {
    files: u64,
    bytes: u64,
    sequence: u64,
    rows: std::collections::BTreeMap<u64, VolumeRow>,
    dropped: Vec<u64>,
    staged: std::collections::HashMap<BlobKey, Option<Slot>>,
    appends: Vec<(u64, IdxEntry)>,
    moved_out: Vec<BlobKey>,
    checkpoint_now: bool,
}

/// Syncs the index logs, then records in every volume's row how much of its log that made
/// durable and that all its committed records are in the logs: what a restart trusts.
pub(crate) fn checkpoint(
    db: &Database,
    counters: &StoreCounters,
    logs: &mut IdxLogs,
) -> Result<(), BlobError> {
    checkpoint_with(db, counters, logs, |_| Ok(()))
}

/// [`checkpoint`], with `also` written in the same commit as the rows.
pub(crate) fn checkpoint_with(
    db: &Database,
    counters: &StoreCounters,
    logs: &mut IdxLogs,
    also: impl FnOnce(&redb::WriteTransaction) -> Result<(), BlobError>,
) -> Result<(), BlobError> {
    let synced: std::collections::HashMap<u64, u64> = logs.sync()?.into_iter().collect();
    let mut rows = counters.volumes.lock_or_recover().clone();
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(VOLUMES)?;
        for (id, row) in rows.iter_mut() {
            if let Some(len) = synced.get(id) {
                row.idx_len = *len;
            }
            // A volume the load could not read keeps its records to be read again.
            if !logs.unreplayed.contains(id) {
                row.covered = row.end;
            }
            table.insert(*id, row.encode().as_slice())?;
        }
    }
    // The logs now say every removal.
    txn.delete_table(UNLOGGED)?;
    also(&txn)?;
    txn.commit()?;
    let mut known = counters.volumes.lock_or_recover();
    for (id, row) in rows {
        if let Some(current) = known.get_mut(&id) {
            current.idx_len = row.idx_len;
            current.covered = row.covered;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Put,
    Delete,
}

/// One oplog entry: what happened to which key, at which sequence number of this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OplogEntry {
    pub seq: u64,
    pub kind: OpKind,
    pub key: BlobKey,
}

const OPLOG_V1: u8 = 1;

impl OplogEntry {
    fn encode(kind: OpKind, key: &BlobKey) -> Vec<u8> {
        let mut out = Vec::with_capacity(18);
        out.push(OPLOG_V1);
        out.push(match kind {
            OpKind::Put => 1,
            OpKind::Delete => 2,
        });
        out.extend_from_slice(key.as_bytes());
        out
    }

    fn decode(seq: u64, raw: &[u8]) -> Result<Self, BlobError> {
        let [OPLOG_V1, kind, key @ ..] = raw else {
            return Err(BlobError::BadRecord);
        };
        let kind = match kind {
            1 => OpKind::Put,
            2 => OpKind::Delete,
            _ => return Err(BlobError::BadRecord),
        };
        let key: [u8; sluice_proto::fileid::KEY_BYTES] =
            key.try_into().map_err(|_| BlobError::BadRecord)?;
        Ok(Self {
            seq,
            kind,
            key: BlobKey::from_bytes(key),
        })
    }
}
