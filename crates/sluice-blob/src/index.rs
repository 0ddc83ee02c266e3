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
use crate::record::BlobMeta;

pub(crate) const BLOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("blobs");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
/// Every put and delete this node applied, in order: what peers pull to catch up.
const OPLOG: TableDefinition<u64, &[u8]> = TableDefinition::new("oplog");
/// Keys deleted here, forever (keys are never reused): a late replica of one is refused, so a
/// peer that missed the delete cannot bring the file back.
const TOMBSTONES: TableDefinition<&[u8], u64> = TableDefinition::new("tombstones");
const FILES: &str = "files";
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
}

pub(crate) enum IndexOp {
    Insert {
        key: BlobKey,
        meta: BlobMeta,
        done: oneshot::Sender<Result<Adoption, BlobError>>,
    },
    Remove {
        key: BlobKey,
        /// Remember the key as deleted (a store of record); false for a cache forgetting a
        /// copy it may fetch again.
        tombstone: bool,
        done: oneshot::Sender<Result<Option<BlobMeta>, BlobError>>,
    },
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
            let table = txn.open_table(COUNTERS)?;
            let get =
                |name| -> Result<u64, BlobError> { Ok(table.get(name)?.map_or(0, |v| v.value())) };
            counters.files.store(get(FILES)?, Ordering::Relaxed);
            counters.bytes.store(get(BYTES)?, Ordering::Relaxed);
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
        let (done, rx) = oneshot::channel();
        self.ops
            .send(IndexOp::Insert { key, meta, done })
            .await
            .map_err(|_| BlobError::Closed)?;
        rx.await.map_err(|_| BlobError::Closed)?
    }

    pub async fn remove(
        &self,
        key: BlobKey,
        tombstone: bool,
    ) -> Result<Option<BlobMeta>, BlobError> {
        let (done, rx) = oneshot::channel();
        self.ops
            .send(IndexOp::Remove {
                key,
                tombstone,
                done,
            })
            .await
            .map_err(|_| BlobError::Closed)?;
        rx.await.map_err(|_| BlobError::Closed)?
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
    Inserted(
        oneshot::Sender<Result<Adoption, BlobError>>,
        Result<Adoption, BlobError>,
    ),
    Removed(
        oneshot::Sender<Result<Option<BlobMeta>, BlobError>>,
        Option<BlobMeta>,
    ),
}

/// Applies a batch in one transaction and answers each operation; the commit's error, if any,
/// is also returned (the writer decides what it means for later batches).
fn apply_batch(
    db: &Database,
    counters: &StoreCounters,
    batch: &mut Vec<IndexOp>,
) -> Result<(), BlobError> {
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut files = counters.files.load(Ordering::Relaxed);
    let mut bytes = counters.bytes.load(Ordering::Relaxed);
    let result = (|| -> Result<(), BlobError> {
        let txn = db.begin_write()?;
        {
            let mut blobs = txn.open_table(BLOBS)?;
            let mut oplog = txn.open_table(OPLOG)?;
            let mut tombstones = txn.open_table(TOMBSTONES)?;
            let mut counter_table = txn.open_table(COUNTERS)?;
            let mut head = counter_table.get(OPLOG_HEAD)?.map_or(0, |v| v.value());
            for op in batch.drain(..) {
                match op {
                    IndexOp::Insert { key, meta, done } => {
                        let k = key.as_bytes().as_slice();
                        if tombstones.get(k)?.is_some() {
                            outcomes.push(Outcome::Inserted(done, Err(BlobError::Deleted)));
                            continue;
                        }
                        // Complete files never change: a second put of a key (a replica arriving
                        // twice) is a no-op. Incomplete ones grow (see `supersedes`); each step
                        // is logged so peers catching up fetch the newer version.
                        let old = match blobs.get(k)? {
                            Some(v) => Some(BlobMeta::decode(v.value())?),
                            None => None,
                        };
                        let adoption = match old {
                            None => {
                                files += 1;
                                Adoption::New
                            }
                            Some(old) if supersedes(&meta, &old) => {
                                bytes -= old.size;
                                Adoption::Replaced(old)
                            }
                            Some(old) => {
                                outcomes.push(Outcome::Inserted(done, Ok(Adoption::Kept(old))));
                                continue;
                            }
                        };
                        blobs.insert(k, meta.encode().as_slice())?;
                        bytes += meta.size;
                        head += 1;
                        oplog.insert(head, OplogEntry::encode(OpKind::Put, &key).as_slice())?;
                        outcomes.push(Outcome::Inserted(done, Ok(adoption)));
                    }
                    IndexOp::Remove {
                        key,
                        tombstone,
                        done,
                    } => {
                        let k = key.as_bytes().as_slice();
                        let old = match blobs.remove(k)? {
                            Some(v) => Some(BlobMeta::decode(v.value())?),
                            None => None,
                        };
                        if let Some(m) = &old {
                            files -= 1;
                            bytes -= m.size;
                        }
                        // Recorded even for a file this node never had, so it is refused later.
                        if tombstone && tombstones.insert(k, crate::now_ms())?.is_none() {
                            head += 1;
                            oplog.insert(
                                head,
                                OplogEntry::encode(OpKind::Delete, &key).as_slice(),
                            )?;
                        }
                        outcomes.push(Outcome::Removed(done, old));
                    }
                }
            }
            counter_table.insert(FILES, files)?;
            counter_table.insert(BYTES, bytes)?;
            counter_table.insert(OPLOG_HEAD, head)?;
        }
        txn.commit()?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            counters.files.store(files, Ordering::Relaxed);
            counters.bytes.store(bytes, Ordering::Relaxed);
            for outcome in outcomes {
                match outcome {
                    Outcome::Inserted(done, result) => drop(done.send(result)),
                    Outcome::Removed(done, old) => drop(done.send(Ok(old))),
                }
            }
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "index commit failed; the batch is refused");
            // Every operation of the batch gets the error, those not reached yet included.
            let trouble = Trouble::of(&e);
            batch.drain(..).for_each(|op| op.refuse(&trouble));
            for outcome in outcomes {
                match outcome {
                    Outcome::Inserted(done, _) => drop(done.send(Err(trouble.error()))),
                    Outcome::Removed(done, _) => drop(done.send(Err(trouble.error()))),
                }
            }
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
