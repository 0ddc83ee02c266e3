//! Sluice's durable local blob store.
//!
//! Each blob is one data file of checksummed blocks ([`layout`]) under `blobs/`, named by its
//! key, plus a record in a redb index ([`record`]). A blob is written to `tmp/`, fsynced, renamed
//! into place (directory fsynced), and only then indexed: an index entry therefore always points
//! at a whole, durable file. What a crash can leave is swept on the next open: everything in
//! temp files, and data files no index entry names (see [`sweep`]; skipped after a clean close).
//!
//! ```text
//! DATA/FORMAT            "sluice-blob 1": refuses to open a directory of another format
//! DATA/CLEAN             present only between a clean close and the next open
//! DATA/index.redb        key -> BlobMeta, plus file and byte counters
//! DATA/blobs/ab/cd/KEY   data files, two levels of 256 directories by the key's first bytes
//! DATA/blobs/ab/cd/KEY.tmp  blobs being written
//! DATA/volumes/ID.vol    small complete files, packed as records ([`volumes`])
//! ```
//!
//! With volumes on (the default), complete files up to `VolumeOptions::max_file` are not given
//! a data file of their own: they are appended to the active volume, many uploads sharing one
//! `fdatasync` and one index commit.

pub mod hot;
pub mod layout;
pub mod record;
pub mod volume;
pub mod volume_file;
pub mod volume_map;
pub mod volume_writer;
pub mod volumes;

mod idx_logs;
mod index;
mod map_load;
mod reader;
mod sweep;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_proto::BlobKey;
use sluice_state::LockRecover;

use crate::record::Location;

pub use hot::{HotCache, HotCacheLimits, HotFile};
pub use index::{Adoption, OpKind, OplogEntry, StoreCounters};
pub use map_load::Loaded as VolumeMapLoad;
pub use reader::{BlobReader, CHUNK_BYTES, Chunk};
pub use record::{BlobMeta, BlobState, SHA256_LEN};
pub use sweep::{data_file_paths, temp_file_paths, walk_data_files};
pub use volumes::{MAX_VOLUME_FILE, OnDisk, VolumeOptions, VolumeStats, locate, volume_paths};
pub use writer::BlobWriter;

const FORMAT_FILE: &str = "FORMAT";
/// Written by a clean close, removed by the next open: its absence means the last run crashed
/// and the orphan sweep must run.
const CLEAN_MARKER: &str = "CLEAN";
const FORMAT_LINE: &str = "sluice-blob 1\n";

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("index error: {0}")]
    Index(String),
    #[error("index record is damaged or of an unknown version")]
    BadRecord,
    #[error("data file of {key} is damaged at block {block}")]
    Corrupt { key: BlobKey, block: u64 },
    #[error("data directory holds a different format ({0:?}); this build reads sluice-blob 1")]
    WrongFormat(String),
    #[error("blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no space left on the device")]
    NoSpace,
    #[error("the store is shutting down")]
    Closed,
    #[error("the index is being reopened after a failed write; try again")]
    Reopening,
    #[error("this file was deleted")]
    Deleted,
    #[error("this id already holds a different file; file ids are immutable")]
    Conflict,
    #[error("the bytes do not match their declared SHA-256")]
    ChecksumMismatch,
}

impl BlobError {
    pub(crate) fn from_io(e: io::Error) -> Self {
        if e.raw_os_error() == Some(28) {
            BlobError::NoSpace
        } else {
            BlobError::Io(e)
        }
    }
}

/// A redb storage error: a full disk is `NoSpace`, as for data files.
fn from_storage(e: redb::StorageError) -> BlobError {
    match e {
        redb::StorageError::Io(io) if io.raw_os_error() == Some(28) => BlobError::NoSpace,
        other => BlobError::Index(other.to_string()),
    }
}

impl From<redb::StorageError> for BlobError {
    fn from(e: redb::StorageError) -> Self {
        from_storage(e)
    }
}

impl From<redb::CommitError> for BlobError {
    fn from(e: redb::CommitError) -> Self {
        match e {
            redb::CommitError::Storage(s) => from_storage(s),
            other => BlobError::Index(other.to_string()),
        }
    }
}

impl From<redb::TransactionError> for BlobError {
    fn from(e: redb::TransactionError) -> Self {
        match e {
            redb::TransactionError::Storage(s) => from_storage(s),
            other => BlobError::Index(other.to_string()),
        }
    }
}

impl From<redb::TableError> for BlobError {
    fn from(e: redb::TableError) -> Self {
        match e {
            redb::TableError::Storage(s) => from_storage(s),
            other => BlobError::Index(other.to_string()),
        }
    }
}

impl From<redb::DatabaseError> for BlobError {
    fn from(e: redb::DatabaseError) -> Self {
        match e {
            redb::DatabaseError::Storage(s) => from_storage(s),
            other => BlobError::Index(other.to_string()),
        }
    }
}

impl From<redb::Error> for BlobError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) if io.raw_os_error() == Some(28) => BlobError::NoSpace,
            other => BlobError::Index(other.to_string()),
        }
    }
}

/// The block size a store uses unless told otherwise.
pub const DEFAULT_BLOCK_SIZE: u32 = 64 * 1024;

/// Tunables of a store.
#[derive(Debug, Clone)]
pub struct BlobStoreOptions {
    /// Size of a checksummed block. Smaller blocks make ranged reads of big files cheaper;
    /// larger ones cost less checksum space. 64 KiB matches what players ask for.
    pub block_size: u32,
    /// The cache of small, recently read files.
    pub hot_cache: HotCacheLimits,
    /// Small files packed into volumes; `None` gives every file its own data file.
    pub volumes: Option<VolumeOptions>,
}

impl Default for BlobStoreOptions {
    fn default() -> Self {
        Self {
            block_size: DEFAULT_BLOCK_SIZE,
            hot_cache: HotCacheLimits::default(),
            volumes: Some(VolumeOptions::default()),
        }
    }
}

/// A handle to an open store; cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    index: index::Index,
    options: BlobStoreOptions,
    hot: HotCache,
    writer_thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Keys with a writer at work: the sweep leaves their files alone, and commits of one key
    /// take turns.
    in_flight: std::sync::Mutex<std::collections::HashMap<BlobKey, KeyWriters>>,
    /// Set by `close` so background work (the sweep) lets go of the store.
    closing: std::sync::atomic::AtomicBool,
    volumes: Option<volumes::Volumes>,
    /// What loading the volume map found when the store opened.
    map_load: Option<VolumeMapLoad>,
    /// Dropped by `close` to stop the compaction thread.
    compaction_stop: std::sync::Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
}

impl BlobStore {
    /// Opens or creates a store in `root`; after a crash, starts a background sweep for what
    /// the crash left. Blocking: call it from `spawn_blocking` or before the runtime is busy.
    pub fn open(root: &Path, options: BlobStoreOptions) -> Result<Self, BlobError> {
        std::fs::create_dir_all(root)?;
        let fresh = check_format(root)?;
        // Temp files live beside their final place (see `tmp_path`); a `tmp/` directory is only
        // what a pre-release build left, and holds nothing worth keeping.
        let _ = std::fs::remove_dir_all(root.join("tmp"));
        std::fs::create_dir_all(root.join("blobs"))?;
        let marker = root.join(CLEAN_MARKER);
        let closed_cleanly = marker.exists();
        if closed_cleanly {
            std::fs::remove_file(&marker)?;
            std::fs::File::open(root)?.sync_all()?;
        }
        let index_existed = root.join("index.redb").exists();
        let volume_files = Arc::new(volumes::VolumeFiles::new(root));
        let (index, writer) = index::Index::open(&root.join("index.redb"), volume_files)?;
        let has_volumes = !index.counters.volumes.lock_or_recover().is_empty()
            || volumes::volume_paths(root).is_ok_and(|p| !p.is_empty());
        // With volumes off, a store that has some still reads, deletes, repairs and compacts
        // them; it only stores no new file in one.
        let volume_options = match &options.volumes {
            Some(v) => Some(VolumeOptions {
                max_file: v.max_file.min(MAX_VOLUME_FILE),
                ..v.clone()
            }),
            None if has_volumes => Some(VolumeOptions {
                max_file: 0,
                ..VolumeOptions::default()
            }),
            None => None,
        };
        let volumes = match volume_options {
            Some(v) => Some(volumes::Volumes::open(
                root,
                v,
                options.block_size,
                &index,
                index_existed,
            )?),
            None => None,
        };
        let mut map_load = None;
        if let Some(v) = &volumes {
            // The volumes are cut to what the index committed: the map loads from there.
            // (The writer is idle, so its queue has room: no waiting to send.)
            let (done, loaded) = std::sync::mpsc::sync_channel(1);
            index
                .sender()
                .try_send(index::IndexOp::LoadVolumeMap {
                    checkpoint_entries: v.options().checkpoint_entries,
                    checkpoint_bytes: v.options().checkpoint_bytes,
                    done,
                })
                .map_err(|_| BlobError::Closed)?;
            map_load = Some(loaded.recv().map_err(|_| BlobError::Closed)??);
        }
        let (compaction_stop, stopped) = std::sync::mpsc::sync_channel(1);
        let store = Self {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                index,
                hot: HotCache::new(options.hot_cache),
                options,
                writer_thread: std::sync::Mutex::new(Some(writer)),
                closing: std::sync::atomic::AtomicBool::new(false),
                in_flight: std::sync::Mutex::new(std::collections::HashMap::new()),
                volumes,
                map_load,
                compaction_stop: std::sync::Mutex::new(Some(compaction_stop)),
            }),
        };
        if store.inner.volumes.is_some() {
            let compactor = store.clone();
            std::thread::Builder::new()
                .name("sluice-compaction".into())
                .spawn(move || volumes::compaction_loop(compactor, stopped))?;
        }
        if !closed_cleanly && !fresh {
            sweep::start(store.clone());
        }
        Ok(store)
    }

    /// A fresh key that no blob in this store has. 128 random bits from the OS; the index check
    /// keeps the guarantee even against a broken random source.
    pub fn new_key(&self) -> Result<BlobKey, BlobError> {
        loop {
            let mut bytes = [0u8; sluice_proto::fileid::KEY_BYTES];
            getrandom::fill(&mut bytes)
                .map_err(|e| BlobError::Io(io::Error::other(e.to_string())))?;
            let key = BlobKey::from_bytes(bytes);
            if self.stat(key)?.is_none() {
                return Ok(key);
            }
        }
    }

    /// Starts writing a blob. Nothing is visible until [`BlobWriter::commit`] returns.
    pub fn writer(&self, key: BlobKey, content_type: String, limit: u64) -> BlobWriter {
        BlobWriter::new(self.clone(), key, content_type, limit)
    }

    /// The index record of a key. Like [`Self::open_reader`], a lookup runs on the calling thread.
    pub fn stat(&self, key: BlobKey) -> Result<Option<BlobMeta>, BlobError> {
        self.inner.index.get(&key)
    }

    /// Opens a blob for reading; `None` if the store has no such key.
    ///
    /// Runs on the calling thread: an index lookup (served from redb's cache once warm) and an
    /// `open` of a path whose directories stay in the dentry cache. Handing these to the
    /// blocking pool doubled the cost of a small download; the data reads, which can wait on
    /// the disk, still avoid blocking (see [`BlobReader::read_chunk`]).
    pub fn open_reader(&self, key: BlobKey) -> Result<Option<BlobReader>, BlobError> {
        let Some(mut meta) = self.inner.index.get(&key)? else {
            return Ok(None);
        };
        // An incomplete blob can be replaced by a longer one between the lookup and the open
        // (its old data file is then unlinked), and a volume compacted away: look again, a
        // few times.
        for _ in 0..4 {
            if let Location::Volume {
                volume,
                offset,
                body,
            } = meta.location
            {
                let volumes = self.inner.volumes.as_ref().ok_or(BlobError::BadRecord)?;
                let opened = match volumes.reader(volume) {
                    // A volume whose header is damaged: its files are, as far as a read knows
                    // (a peer's copy repairs them).
                    Err(BlobError::WrongFormat(why)) => {
                        tracing::error!(%key, volume, %why, "volume header damaged");
                        return Err(BlobError::Corrupt { key, block: 0 });
                    }
                    other => other?,
                };
                match opened {
                    Some(reader) => {
                        let base = offset + u64::from(body);
                        return Ok(Some(BlobReader::new(key, meta, reader.file(), base)));
                    }
                    None => match self.inner.index.get(&key)? {
                        None => return Ok(None),
                        Some(now) if now != meta => {
                            meta = now;
                            continue;
                        }
                        Some(_) => break,
                    },
                }
            }
            match std::fs::File::open(self.data_path(&key, &meta)) {
                Ok(file) => {
                    // A data file of another length than its record says is damaged (cut
                    // short by a disk fault, say): reads would otherwise end early.
                    let expected = layout::BlockLayout::new(meta.block_size).file_len(meta.size);
                    if file.metadata()?.len() != expected {
                        tracing::error!(%key, "data file is not the length its record says");
                        return Err(BlobError::Corrupt { key, block: 0 });
                    }
                    let base = layout::HEADER_LEN;
                    return Ok(Some(BlobReader::new(key, meta, Arc::new(file), base)));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Deleted between the lookup and the open, replaced, or lost: tell which.
                    match self.inner.index.get(&key)? {
                        None => return Ok(None),
                        Some(now) if now != meta => meta = now,
                        Some(_) => break,
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        tracing::error!(%key, "indexed blob has no data file or volume");
        Err(BlobError::Corrupt { key, block: 0 })
    }

    /// Up to `limit` keys of indexed blobs after `after` (from the first when `None`), in key
    /// order: for passes over everything the index names (the scrub). Blocking.
    pub fn keys_after(
        &self,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<Vec<BlobKey>, BlobError> {
        self.inner.index.keys_after(after, limit)
    }

    /// The SHA-256 of a blob's stored bytes, read through (and so verified by) its checksums.
    pub async fn sha256_of(&self, key: BlobKey) -> Result<[u8; SHA256_LEN], BlobError> {
        use sha2::Digest;
        let reader = self.open_reader(key)?.ok_or(BlobError::Deleted)?;
        let mut hasher = sha2::Sha256::new();
        reader.read_from(0, |part| hasher.update(part)).await?;
        Ok(hasher.finalize().into())
    }

    /// Deletes a blob; `false` if there was none. The index entry goes first, so a crash
    /// between the two steps leaves an orphan file for the sweep, never a dangling entry.
    pub async fn delete(&self, key: BlobKey) -> Result<bool, BlobError> {
        self.remove(key, true).await
    }

    /// Forgets a blob without remembering it was deleted, so the same key may be stored again
    /// later (a cache evicting a copy). Not logged in the oplog.
    pub async fn evict(&self, key: BlobKey) -> Result<bool, BlobError> {
        self.remove(key, false).await
    }

    async fn remove(&self, key: BlobKey, tombstone: bool) -> Result<bool, BlobError> {
        // With volumes, every delete leaves a delete record, whatever held the file.
        let removed = match &self.inner.volumes {
            Some(volumes) => volumes.delete(key, tombstone).await?,
            None => self.inner.index.remove(key, tombstone).await?,
        };
        let Some(old) = removed else {
            return Ok(false);
        };
        // After the index entry is gone, never before: see `HotCache::insert_if_indexed`.
        self.inner.hot.remove(&key);
        if old.location != Location::DataFile {
            return Ok(true);
        }
        let path = self.data_path(&key, &old);
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::Io(e)),
        })
        .await?;
        Ok(true)
    }

    /// Up to `limit` oplog entries after sequence number `after`, oldest first.
    pub fn oplog_after(&self, after: u64, limit: usize) -> Result<Vec<OplogEntry>, BlobError> {
        self.inner.index.oplog_after(after, limit)
    }

    /// This node's newest oplog sequence number.
    pub fn oplog_head(&self) -> Result<u64, BlobError> {
        self.inner.index.oplog_head()
    }

    /// Whether `key` was deleted here (it can never come back).
    pub fn is_deleted(&self, key: BlobKey) -> Result<bool, BlobError> {
        self.inner.index.is_tombstoned(&key)
    }

    pub fn hot(&self) -> &HotCache {
        &self.inner.hot
    }

    /// Offers a whole file, just read and verified from disk, to the hot cache.
    pub fn offer_to_hot_cache(&self, key: BlobKey, meta: BlobMeta, parts: Chunk) {
        let hot = &self.inner.hot;
        // Incomplete blobs are replaced as they grow: only complete ones may be cached.
        if hot.admits(meta.size) && meta.state.is_complete() {
            hot.insert_if_indexed(key, HotFile { meta, parts }, || {
                matches!(self.inner.index.get(&key), Ok(Some(_)))
            });
        }
    }

    /// `Some(reason)` while writes fail (the index's disk is full, say); they resume by
    /// themselves once they work again.
    pub fn write_trouble(&self) -> Option<String> {
        self.inner.index.write_trouble()
    }

    pub fn counters(&self) -> &StoreCounters {
        &self.inner.index.counters
    }

    pub fn files(&self) -> u64 {
        self.counters().files.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.counters().bytes.load(Ordering::Relaxed)
    }

    /// Bytes free for us on the filesystem holding the store.
    pub fn free_bytes(&self) -> Result<u64, BlobError> {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(self.inner.root.as_os_str().as_bytes())
            .map_err(|e| BlobError::Io(io::Error::other(e)))?;
        let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `path` is a valid NUL-terminated string and `stat` points to writable memory
        // of the right type; statvfs fills it on success.
        let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
        if rc != 0 {
            return Err(BlobError::Io(io::Error::last_os_error()));
        }
        // SAFETY: statvfs returned 0, so it initialised the struct.
        let stat = unsafe { stat.assume_init() };
        // The field types differ between platforms (u32 on some 32-bit ones).
        #[allow(clippy::useless_conversion)]
        let (blocks, size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
        Ok(blocks.saturating_mul(size))
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn options(&self) -> &BlobStoreOptions {
        &self.inner.options
    }

    /// Stops background work, waits (briefly) for other handles to go, then lets the index
    /// writer finish its queue and closes the database cleanly, so the next open needs no
    /// repair. Every acknowledged write was committed long before this; call it at shutdown,
    /// after the servers stop.
    pub async fn close(self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        self.inner.compaction_stop.lock_or_recover().take();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut this = self.inner;
        let inner = loop {
            match Arc::try_unwrap(this) {
                Ok(inner) => break inner,
                Err(shared) if tokio::time::Instant::now() < deadline => {
                    this = shared;
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                Err(_) => {
                    tracing::warn!("blob store still in use at shutdown; closing without waiting");
                    return;
                }
            }
        };
        let handle = inner.writer_thread.lock_or_recover().take();
        // The volume writer's thread holds a sender of the index: once it has written what
        // it holds and let go, the index writer drains and ends.
        if let Some(volumes) = &inner.volumes {
            volumes.close();
        }
        drop(inner.volumes);
        inner.index.close();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Only now is every write on disk and nothing half-done: the next open may skip the sweep.
        let marker = inner.root.join(CLEAN_MARKER);
        if let Err(e) = blocking(move || write_durably(&marker, b"")).await {
            tracing::warn!(error = %e, "could not mark the clean shutdown; the next start will sweep");
        }
    }

    pub(crate) fn blob_path(&self, key: &BlobKey) -> PathBuf {
        let b = key.as_bytes();
        self.inner
            .root
            .join("blobs")
            .join(format!("{:02x}", b[0]))
            .join(format!("{:02x}", b[1]))
            .join(key.to_string())
    }

    /// The data file of one version of a blob: `KEY` once complete; `KEY.SIZE.part` for a
    /// prefix still short of the whole, so each longer prefix is a new file and a reader of an
    /// older one keeps reading what it opened.
    pub(crate) fn data_path(&self, key: &BlobKey, meta: &BlobMeta) -> PathBuf {
        let mut path = self.blob_path(key);
        if !meta.state.is_complete() {
            path.set_extension(format!("{}.{}", meta.size, sweep::PART_SUFFIX));
        }
        path
    }

    /// Where a blob is written before it is durable: beside its final place, so concurrent
    /// uploads spread over the shard directories instead of queueing on one directory's lock,
    /// and the final rename stays within one directory.
    /// Each writer gets its own name, so two writers of one key (a replica pushed by a peer
    /// while catch-up fetches the same file) never touch each other's temp file.
    pub(crate) fn tmp_path(&self, key: &BlobKey) -> PathBuf {
        let mut nonce = [0u8; 4];
        // Uniqueness among concurrent writers of one key is all that matters here; a failed
        // random read falls back to the clock.
        if getrandom::fill(&mut nonce).is_err() {
            nonce = (now_ms() as u32).to_le_bytes();
        }
        let mut path = self.blob_path(key);
        path.set_extension(format!(
            "{:08x}.{}",
            u32::from_le_bytes(nonce),
            sweep::TEMP_SUFFIX
        ));
        path
    }

    /// Removes what a crash left (temp files, unindexed data files) now, on this thread;
    /// returns how many files went. Files of writers at work are left alone, so this is safe
    /// while the store is in use. (The open after a crash starts it in the background.)
    pub fn sweep_orphans(&self) -> io::Result<usize> {
        sweep::sweep(self, &mut |_| {})
    }

    /// [`Self::sweep_orphans`], calling `before_unlink` with each key whose file it is about
    /// to remove, after deciding to: for tests that race writers against the sweep.
    #[doc(hidden)]
    pub fn sweep_orphans_with(&self, before_unlink: &mut dyn FnMut(&BlobKey)) -> io::Result<usize> {
        sweep::sweep(self, before_unlink)
    }

    /// Marks `key` as being written until the returned guard drops.
    pub(crate) fn begin_write(&self, key: BlobKey) -> InFlight {
        let turn = {
            let mut map = self.inner.in_flight.lock_or_recover();
            let entry = map.entry(key).or_default();
            entry.writers += 1;
            entry.turn.clone()
        };
        InFlight {
            store: self.clone(),
            key,
            turn,
        }
    }

    /// Volume figures (`None` with volumes off).
    /// What loading the volume map found when the store opened (`None` without volumes).
    pub fn volume_map_load(&self) -> Option<VolumeMapLoad> {
        self.inner.map_load.clone()
    }

    pub fn volume_stats(&self) -> Option<VolumeStats> {
        self.inner.volumes.as_ref().map(volumes::Volumes::stats)
    }

    /// Compacts every volume due now, on this thread (the compaction thread does it every
    /// `compact_interval`); returns how many were compacted.
    pub fn compact_now(&self) -> Result<usize, BlobError> {
        volumes::compact_due(self)
    }

    pub(crate) fn volumes(&self) -> Option<&volumes::Volumes> {
        self.inner.volumes.as_ref()
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.inner.closing.load(Ordering::Relaxed)
    }

    pub(crate) fn index(&self) -> &index::Index {
        &self.inner.index
    }
}

/// The writers at work on one key, and the lock their commits take in turn (so deciding what
/// the index holds, placing the data file and indexing it are one step per key).
#[derive(Default)]
struct KeyWriters {
    writers: usize,
    turn: Arc<tokio::sync::Mutex<()>>,
}

/// A writer at work on a key; see [`BlobStore::begin_write`].
pub(crate) struct InFlight {
    store: BlobStore,
    key: BlobKey,
    turn: Arc<tokio::sync::Mutex<()>>,
}

impl InFlight {
    /// Waits for this key's commit turn.
    pub(crate) async fn commit_turn(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.turn.clone().lock_owned().await
    }

    /// The commit turn if nobody holds it now.
    pub(crate) fn try_commit_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        self.turn.clone().try_lock_owned().ok()
    }

    /// Whether this is the only writer of its key at work.
    pub(crate) fn alone(&self) -> bool {
        self.store
            .inner
            .in_flight
            .lock_or_recover()
            .get(&self.key)
            .is_some_and(|e| e.writers == 1)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut map = self.store.inner.in_flight.lock_or_recover();
        if let Some(entry) = map.get_mut(&self.key) {
            entry.writers -= 1;
            if entry.writers == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Checks (or, in an empty directory, writes) the format marker; true for a fresh store.
fn check_format(root: &Path) -> Result<bool, BlobError> {
    let path = root.join(FORMAT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) if text == FORMAT_LINE => Ok(false),
        Ok(text) => Err(BlobError::WrongFormat(text.trim().to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let non_empty = std::fs::read_dir(root)?.next().is_some();
            if non_empty {
                return Err(BlobError::WrongFormat(
                    "no FORMAT file in a non-empty directory".into(),
                ));
            }
            write_durably(&path, FORMAT_LINE.as_bytes()).map(|()| true)
        }
        Err(e) => Err(e.into()),
    }
}

fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), BlobError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Runs blocking file or index work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, BlobError> + Send + 'static,
) -> Result<T, BlobError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BlobError::Io(io::Error::other(e.to_string())))?
}

/// A crash point for tests: when the environment variable `SLUICE_FAILPOINT` names `name`
/// (`name`, or `name@N` for its Nth passing), the process kills itself there (SIGKILL: no
/// cleanup, no flush), so a test can stop a real server at an exact step of a protocol and
/// check what a restart finds.
pub(crate) fn failpoint(name: &str) {
    use std::sync::atomic::AtomicU64;
    static POINT: std::sync::OnceLock<Option<(String, u64)>> = std::sync::OnceLock::new();
    static PASSED: AtomicU64 = AtomicU64::new(0);
    let point = POINT.get_or_init(|| {
        let text = std::env::var("SLUICE_FAILPOINT").ok()?;
        Some(match text.split_once('@') {
            Some((name, n)) => (name.to_owned(), n.parse().unwrap_or(1)),
            None => (text, 1),
        })
    });
    let Some((point, nth)) = point else {
        return;
    };
    if point == name && PASSED.fetch_add(1, Ordering::Relaxed) + 1 == *nth {
        tracing::warn!(failpoint = name, "killing the process at a test failpoint");
        // SAFETY: kill(2) with our own pid and a valid signal number.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
