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
use crate::record::{BlobMeta, Location};

pub(crate) const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Every put and delete this node applied, in order: what peers pull to catch up.
const OPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("oplog");
/// Keys deleted here, forever (keys are never reused): a late replica of one is refused, so a
/// peer that missed the delete cannot bring the file back.
const TOMBSTONES: TableDefinition<&[u8], u64> = TableDefinition::new("tombstones");
/// Volume id -> [`VolumeRow`].
const VOLUMES: TableDefinition<u64, &[u8]> = TableDefinition::new("volumes");
const FILES: &str = "files";
/// The last sequence number a committed volume record used.
const VOLUME_SEQUENCE: &str = "volume_sequence";
const BYTES: &str = "bytes";
const OPLOG_HEAD: &str = "oplog_head";

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
        settled: Option<std::sync::mpsc::SyncSender<()>>,
    },
    /// Forgets a volume nothing lives in any more (a compacted one): `false` if something does.
    DropVolume { volume: u64, done: Reply<bool> },
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
}

const VOLUME_ROW_V1: u8 = 1;

impl VolumeRow {
    fn encode(&self) -> [u8; 25] {
        let mut out = [0u8; 25];
        out[0] = VOLUME_ROW_V1;
        out[1..9].copy_from_slice(&self.end.to_le_bytes());
        out[9..17].copy_from_slice(&self.live_bytes.to_le_bytes());
        out[17..25].copy_from_slice(&self.live_records.to_le_bytes());
        out
    }

    fn decode(raw: &[u8]) -> Result<Self, BlobError> {
        let [VOLUME_ROW_V1, rest @ ..] = raw else {
            return Err(BlobError::BadRecord);
        };
        let field = |i: usize| -> Result<u64, BlobError> {
            rest.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes)
                .ok_or(BlobError::BadRecord)
        };
        Ok(Self {
            end: field(0)?,
            live_bytes: field(1)?,
            live_records: field(2)?,
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
    pub fn open(path: &Path) -> Result<(Self, std::thread::JoinHandle<()>), BlobError> {
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
        let writer = Writer {
            slot: slot.clone(),
            counters: counters.clone(),
            trouble: trouble.clone(),
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

    /// Looks a key up. Blocking (may read from disk).
    pub fn get(&self, key: &BlobKey) -> Result<Option<BlobMeta>, BlobError> {
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
}

impl Writer {
    fn run(self, mut rx: mpsc::Receiver<IndexOp>) {
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
                    if let Err(e) = apply_batch(&db, &self.counters, &mut batch) {
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
    Settled(std::sync::mpsc::SyncSender<()>),
}

impl Outcome {
    fn answer(self) {
        match self {
            Outcome::Adopted(done, result) => drop(done.send(result)),
            Outcome::Removed(done, old) => drop(done.send(Ok(old))),
            Outcome::Done(done, flag) => drop(done.send(Ok(flag))),
            Outcome::Settled(settled) => drop(settled.send(())),
        }
    }

    fn refuse(self, error: BlobError) {
        match self {
            Outcome::Adopted(done, _) => drop(done.send(Err(error))),
            Outcome::Removed(done, _) => drop(done.send(Err(error))),
            Outcome::Done(done, _) => drop(done.send(Err(error))),
            Outcome::Settled(settled) => drop(settled.send(())),
        }
    }
}

/// One write transaction of the writer, with the counters it moves.
struct Tx<'t> {
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

    /// Counts a blob's volume record as live (`+1`) or dead (`-1`) in its volume's row.
    fn tally(&mut self, meta: &BlobMeta, live: bool) -> Result<(), BlobError> {
        if let Some((volume, len)) = volume_record(meta) {
            let row = self.row(volume)?;
            if live {
                row.live_bytes += len;
                row.live_records += 1;
            } else {
                row.live_bytes = row.live_bytes.saturating_sub(len);
                row.live_records = row.live_records.saturating_sub(1);
            }
        }
        Ok(())
    }

    fn log(&mut self, kind: OpKind, key: &BlobKey) -> Result<(), BlobError> {
        self.head += 1;
        self.oplog
            .insert(self.head, OplogEntry::encode(kind, key).as_slice())?;
        Ok(())
    }

    /// Stores `meta` under `key` unless the index keeps what it has (see [`supersedes`]).
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
        // catching up fetch the newer version.
        // One walk of the tree: the new record goes in, and the old one comes back (put back
        // when it stays: rare, and on a leaf this insert just made dirty).
        let old = match self.blobs.insert(k, meta.encode().as_slice())? {
            Some(v) => {
                let raw = v.value().to_vec();
                Some((BlobMeta::decode(&raw)?, raw))
            }
            None => None,
        };
        let adoption = match old {
            None => {
                self.files += 1;
                Adoption::New
            }
            Some((old, _)) if supersedes(&meta, &old) => {
                self.bytes -= old.size;
                self.tally(&old, false)?;
                Adoption::Replaced(old)
            }
            Some((old, raw)) => {
                self.blobs.insert(k, raw.as_slice())?;
                return Ok(Ok(Adoption::Kept(old)));
            }
        };
        self.bytes += meta.size;
        self.tally(&meta, true)?;
        self.log(OpKind::Put, &key)?;
        Ok(Ok(adoption))
    }

    fn remove(&mut self, key: BlobKey, tombstone: bool) -> Result<Option<BlobMeta>, BlobError> {
        let k = key.as_bytes().as_slice();
        let old = match self.blobs.remove(k)? {
            Some(v) => Some(BlobMeta::decode(v.value())?),
            None => None,
        };
        if let Some(m) = &old {
            self.files -= 1;
            self.bytes -= m.size;
            self.tally(m, false)?;
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
        let old = match self.blobs.get(k)? {
            Some(v) => BlobMeta::decode(v.value())?,
            None => return Ok(false),
        };
        if old.location != from || old.size != meta.size || old.state != meta.state {
            return Ok(false);
        }
        self.tally(&old, false)?;
        self.blobs.insert(k, meta.encode().as_slice())?;
        self.tally(&meta, true)?;
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
            } => outcomes.push(Outcome::Removed(done, self.remove(key, tombstone)?)),
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
                        } => outcomes.push(Outcome::Removed(done, self.remove(key, tombstone)?)),
                    }
                }
            }
            IndexOp::Relocate {
                key,
                from,
                meta,
                done,
            } => outcomes.push(Outcome::Done(done, self.relocate(key, from, meta)?)),
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

/// The volume of a blob kept in one, and the length of its record there.
pub(crate) fn volume_record(meta: &BlobMeta) -> Option<(u64, u64)> {
    match meta.location {
        Location::Volume { volume, body, .. } => Some((
            volume,
            u64::from(body) + crate::volume::body_len(meta.size, meta.block_size),
        )),
        Location::DataFile => None,
    }
}

/// Applies a batch in one transaction and answers each operation; the commit's error, if any,
/// is also returned (the writer decides what it means for later batches).
fn apply_batch(
    db: &Database,
    counters: &StoreCounters,
    batch: &mut Vec<IndexOp>,
) -> Result<(), BlobError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut committed = None;
    let result = (|| -> Result<(), BlobError> {
        let txn = db.begin_write()?;
        {
            let mut counter_table = txn.open_table(COUNTERS)?;
            let mut tx = Tx {
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
            committed = Some((
                tx.files,
                tx.bytes,
                tx.sequence,
                std::mem::take(&mut tx.rows),
                std::mem::take(&mut tx.dropped),
            ));
        }
        txn.commit()?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            if let Some((files, bytes, sequence, rows, dropped)) = committed {
                counters.files.store(files, Ordering::Relaxed);
                counters.bytes.store(bytes, Ordering::Relaxed);
                counters.volume_sequence.store(sequence, Ordering::Relaxed);
                let mut known = counters.volumes.lock_or_recover();
                for (id, row) in rows {
                    known.insert(id, row);
                }
                for id in dropped {
                    known.remove(&id);
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
