//! The redb index and its single writer.
//!
//! One thread owns every write transaction. Callers send it operations over a bounded channel;
//! it takes all that are waiting (up to `MAX_BATCH`) into one transaction and one commit, so
//! concurrent uploads share an fsync instead of queueing for one each (group commit).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use sluice_proto::BlobKey;
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
    pub db: Arc<Database>,
    ops: mpsc::Sender<IndexOp>,
    pub counters: Arc<StoreCounters>,
}

impl Index {
    /// Opens (or creates) the index and starts its writer thread. Blocking.
    pub fn open(path: &std::path::Path) -> Result<(Self, std::thread::JoinHandle<()>), BlobError> {
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
        let db = Arc::new(db);
        let counters = Arc::new(counters);
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let writer_db = db.clone();
        let writer_counters = counters.clone();
        let handle = std::thread::Builder::new()
            .name("sluice-index-writer".into())
            .spawn(move || run_writer(&writer_db, &writer_counters, rx))?;
        Ok((
            Self {
                db,
                ops: tx,
                counters,
            },
            handle,
        ))
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
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BLOBS)?;
        match table.get(key.as_bytes().as_slice())? {
            Some(v) => Ok(Some(BlobMeta::decode(v.value())?)),
            None => Ok(None),
        }
    }

    pub fn is_tombstoned(&self, key: &BlobKey) -> Result<bool, BlobError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TOMBSTONES)?;
        Ok(table.get(key.as_bytes().as_slice())?.is_some())
    }

    /// Up to `limit` oplog entries with a sequence number above `after`, oldest first.
    pub fn oplog_after(&self, after: u64, limit: usize) -> Result<Vec<OplogEntry>, BlobError> {
        let txn = self.db.begin_read()?;
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
        let txn = self.db.begin_read()?;
        let table = txn.open_table(COUNTERS)?;
        Ok(table.get(OPLOG_HEAD)?.map_or(0, |v| v.value()))
    }

    /// Drops the sender so the writer thread drains and exits.
    pub fn close(self) {
        drop(self.ops);
    }
}

fn run_writer(db: &Database, counters: &StoreCounters, mut rx: mpsc::Receiver<IndexOp>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(op) = rx.blocking_recv() {
        batch.push(op);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        apply_batch(db, counters, &mut batch);
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

fn apply_batch(db: &Database, counters: &StoreCounters, batch: &mut Vec<IndexOp>) {
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
        }
        Err(e) => {
            tracing::error!(error = %e, "index commit failed; the batch is refused");
            // Operations not yet taken from the batch (an early error) are answered by dropping
            // their senders, which callers see as `Closed`; those taken get the error itself.
            batch.clear();
            for outcome in outcomes {
                let err = BlobError::Index(e.to_string());
                match outcome {
                    Outcome::Inserted(done, _) => drop(done.send(Err(err))),
                    Outcome::Removed(done, _) => drop(done.send(Err(err))),
                }
            }
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
