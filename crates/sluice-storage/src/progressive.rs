//! Progressive uploads (DESIGN.md §1 on `001_*.txt`): a file that gets its id once its
//! minimal transport size (MTS) has arrived, while the rest keeps coming.
//!
//! An upload session owns `DATA/uploads/ID.json` (what was declared, and the file id once
//! chosen) and `DATA/uploads/ID.data` (the bytes received, appended and fsynced before each
//! acknowledgement). Its one mutex is held by whoever changes it: a PATCH, the finish, or the
//! watchdog that finalises a session whose sender went quiet. Readers never take it: they
//! follow a `watch` channel of the session's [`View`] and read the data file.
//!
//! The blob store sees three moments: at the MTS the prefix is stored as a `Partial` blob under
//! the new id (and replicated like any upload); at the end the whole file replaces it as
//! `Complete`; a sender that vanishes leaves an `Abandoned` blob of everything that arrived.
//! For a JPEG the MTS moves up to the next scan boundary ([`ScanTracker`]), so the prefix is
//! always a whole, viewable image.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sluice_blob::{BlobState, BlobStore};
use sluice_media::jpeg::ScanTracker;
use sluice_proto::{BlobKey, FileId};
use tokio::sync::watch;

use crate::StorageState;
use crate::error::ApiError;
use crate::events::{EventKind, FileEvent};
use crate::replication::ReplicaSource;

const RECORD_VERSION: u32 = 1;
/// Bytes read from a data file at a time (copies into the blob store, follow streams).
pub(crate) const READ_CHUNK: usize = 256 * 1024;

/// Settings of progressive uploads.
#[derive(Debug, Clone)]
pub struct ProgressiveConfig {
    /// The share of a file that must arrive before it is committed, when the upload names
    /// neither `q` nor `mts`. 1.0: an upload without either gets its id when it is whole.
    pub default_q: f64,
    /// A session whose sender sends nothing for this long is finalised at what arrived (or,
    /// before its MTS, dropped). Also tus's `Upload-Expires`.
    pub abandon_after: Duration,
    /// Most bytes of one JPEG scan held while it arrives; past it the file is treated as
    /// opaque bytes.
    pub max_scan_tail: usize,
    /// Absolute URL of this node for tus `Location` headers (a tracker's 307 sends clients
    /// here, so they must come back here, not to the tracker). Relative when `None`.
    pub public_url: Option<String>,
}

impl Default for ProgressiveConfig {
    fn default() -> Self {
        Self {
            default_q: 1.0,
            abandon_after: Duration::from_secs(600),
            max_scan_tail: 64 << 20,
            public_url: None,
        }
    }
}

/// What a session declared at creation; `DATA/uploads/ID.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub version: u32,
    pub length: u64,
    /// The minimal transport size in bytes, as asked (a JPEG's is moved up to a scan end).
    pub mts: u64,
    pub content_type: String,
    /// The `Upload-Metadata` header as sent, echoed by HEAD.
    pub metadata_header: String,
    pub sender: String,
    pub receiver: String,
    /// The key of the file id, chosen (and saved) before the first commit.
    pub key: Option<String>,
    pub created_ms: u64,
    /// Created through a signed upload link: the unguessable upload id is the credential for
    /// its later PATCH, HEAD and DELETE.
    pub signed: bool,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Completed,
    /// Finalised at what arrived (sender quiet, or the upload terminated after its commit).
    Abandoned,
    /// Dropped before its MTS: no file came of it.
    Dropped,
}

/// What readers see of a session.
#[derive(Debug, Clone)]
pub(crate) struct View {
    pub received: u64,
    pub total: u64,
    /// Whether the bytes are a JPEG being tracked scan by scan.
    pub jpeg: bool,
    /// A JPEG's end of its last complete scan (where to cut and close with EOI).
    pub viewable: Option<u64>,
    /// Bytes stored in the blob store under the file id (`None` before the MTS).
    pub committed: Option<u64>,
    pub ending: Option<Ending>,
}

pub(crate) struct Session {
    pub id: String,
    /// The declared length and content kind never change: kept apart from the record so the
    /// per-chunk path reads them without a lock or a clone.
    length: u64,
    expects_jpeg: bool,
    data_path: PathBuf,
    record_path: PathBuf,
    record: Mutex<SessionRecord>,
    progress: tokio::sync::Mutex<Progress>,
    view: watch::Sender<View>,
    /// Bumped by a PATCH that wants the session while another holds it: the holder stops
    /// reading its (probably dead) connection and lets go.
    interrupt: watch::Sender<u64>,
    last_activity_ms: AtomicU64,
}

struct Progress {
    file: Option<Arc<File>>,
    offset: u64,
    tracker: ScanTracker,
    committed: Option<u64>,
    ending: Option<Ending>,
}

/// A PATCH's body, with an optional checksum it must match.
pub(crate) struct PatchBody<S> {
    pub stream: S,
    pub checksum: Option<sluice_proto::tus::UploadChecksum>,
    pub idle: Duration,
}

/// The node's progressive upload sessions: the one owner of the registry.
pub(crate) struct Uploads {
    dir: PathBuf,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    by_key: Mutex<HashMap<BlobKey, Arc<Session>>>,
}

impl Uploads {
    /// Opens `DATA/uploads`, reloading the sessions a previous run left (blocking).
    pub fn open(store: &BlobStore, config: &ProgressiveConfig) -> std::io::Result<Self> {
        let dir = store.root().join("uploads");
        std::fs::create_dir_all(&dir)?;
        let uploads = Self {
            dir,
            sessions: Mutex::default(),
            by_key: Mutex::default(),
        };
        for entry in std::fs::read_dir(&uploads.dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if BlobKey::parse(id).is_err() {
                continue;
            }
            match uploads.reload(id, store, config) {
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(upload = id, error = %e, "could not reload an upload session; it is left on disk")
                }
            }
        }
        // Data files without a record: a creation cut off by a crash.
        for entry in std::fs::read_dir(&uploads.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "data")
                && !path.with_extension("json").exists()
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(uploads)
    }

    fn reload(
        &self,
        id: &str,
        store: &BlobStore,
        config: &ProgressiveConfig,
    ) -> std::io::Result<()> {
        let record_path = self.dir.join(format!("{id}.json"));
        let data_path = self.dir.join(format!("{id}.data"));
        let record: SessionRecord =
            serde_json::from_slice(&std::fs::read(&record_path)?).map_err(std::io::Error::other)?;
        if record.version != RECORD_VERSION {
            return Err(std::io::Error::other("unknown session record version"));
        }
        let file = File::options().read(true).write(true).open(&data_path)?;
        let offset = file.metadata()?.len().min(record.length);
        let tracker = track_file(&file, offset, config.max_scan_tail)?;
        let key = record.key.as_deref().and_then(|k| BlobKey::parse(k).ok());
        let committed = match key {
            Some(k) => store
                .stat(k)
                .map_err(std::io::Error::other)?
                .map(|m| m.size),
            None => None,
        };
        let session = Session::new(
            id.to_owned(),
            data_path,
            record_path,
            record,
            Progress {
                file: Some(Arc::new(file)),
                offset,
                tracker,
                committed,
                ending: None,
            },
        );
        tracing::info!(upload = id, offset, "upload session reloaded");
        self.insert(session, key);
        Ok(())
    }

    /// Creates a session durably: its record and an empty data file, both fsynced.
    pub async fn create(
        &self,
        record: SessionRecord,
        config: &ProgressiveConfig,
    ) -> Result<Arc<Session>, ApiError> {
        let mut raw = [0u8; sluice_proto::fileid::KEY_BYTES];
        getrandom::fill(&mut raw).map_err(|_| ApiError::Internal)?;
        let id = BlobKey::from_bytes(raw).to_string();
        let record_path = self.dir.join(format!("{id}.json"));
        let data_path = self.dir.join(format!("{id}.data"));
        let (rp, dp, rec) = (record_path.clone(), data_path.clone(), record.clone());
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&dp)?;
            write_record(&rp, &rec)?;
            Ok(file)
        })
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(io_error)?;
        let session = Session::new(
            id,
            data_path,
            record_path,
            record,
            Progress {
                file: Some(Arc::new(file)),
                offset: 0,
                tracker: ScanTracker::new(config.max_scan_tail),
                committed: None,
                ending: None,
            },
        );
        self.insert(session.clone(), None);
        Ok(session)
    }

    fn insert(&self, session: Arc<Session>, key: Option<BlobKey>) {
        if let Ok(mut map) = self.sessions.lock() {
            map.insert(session.id.clone(), session.clone());
        }
        if let Some(key) = key {
            self.index_key(key, &session);
        }
    }

    fn index_key(&self, key: BlobKey, session: &Arc<Session>) {
        if let Ok(mut map) = self.by_key.lock() {
            map.insert(key, session.clone());
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.lock().ok()?.get(id).cloned()
    }

    /// The session still receiving the file with this key, if any.
    pub fn live(&self, key: &BlobKey) -> Option<Arc<Session>> {
        self.by_key.lock().ok()?.get(key).cloned()
    }

    fn forget_key(&self, key: &BlobKey) {
        if let Ok(mut map) = self.by_key.lock() {
            map.remove(key);
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut map) = self.sessions.lock() {
            map.remove(id);
        }
    }

    /// Sessions held (ended ones linger until the watchdog forgets them).
    pub fn count(&self) -> usize {
        self.sessions.lock().map_or(0, |m| m.len())
    }

    /// Every session, for the watchdog sweep.
    fn all(&self) -> Vec<Arc<Session>> {
        self.sessions
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }
}

impl Session {
    fn new(
        id: String,
        data_path: PathBuf,
        record_path: PathBuf,
        record: SessionRecord,
        progress: Progress,
    ) -> Arc<Self> {
        let view = View {
            received: progress.offset,
            total: record.length,
            jpeg: false,
            viewable: None,
            committed: progress.committed,
            ending: None,
        };
        let session = Arc::new(Self {
            id,
            length: record.length,
            expects_jpeg: expects_jpeg(&record),
            data_path,
            record_path,
            record: Mutex::new(record),
            progress: tokio::sync::Mutex::new(progress),
            view: watch::channel(view).0,
            interrupt: watch::channel(0).0,
            last_activity_ms: AtomicU64::new(now_ms()),
        });
        if let Ok(progress) = session.progress.try_lock() {
            session.publish(&progress);
        }
        session
    }

    pub fn record(&self) -> SessionRecord {
        self.record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn view(&self) -> View {
        self.view.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<View> {
        self.view.subscribe()
    }

    pub fn data_path(&self) -> &Path {
        &self.data_path
    }

    /// The file id's key, once chosen.
    pub fn key(&self) -> Option<BlobKey> {
        self.record().key.and_then(|k| BlobKey::parse(&k).ok())
    }

    fn touch(&self) {
        self.last_activity_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// When the session expires if nothing more arrives (milliseconds since the epoch).
    pub fn expires_ms(&self, config: &ProgressiveConfig) -> u64 {
        self.last_activity_ms.load(Ordering::Relaxed) + config.abandon_after.as_millis() as u64
    }

    /// Takes the session for a change, interrupting a PATCH that holds it (its client is
    /// most likely gone: a tus client resumes only after its previous request failed).
    async fn lock(
        &self,
        wait: Duration,
    ) -> Result<tokio::sync::MutexGuard<'_, Progress>, ApiError> {
        if let Ok(guard) = self.progress.try_lock() {
            return Ok(guard);
        }
        self.interrupt.send_modify(|n| *n += 1);
        tokio::time::timeout(wait, self.progress.lock())
            .await
            .map_err(|_| ApiError::Busy)
    }

    /// Appends a PATCH body at `offset`, then commits or finishes as far as the bytes allow.
    pub async fn patch<S, E>(
        self: &Arc<Self>,
        state: &StorageState,
        offset: u64,
        body: PatchBody<S>,
        mts_override: Option<u64>,
    ) -> Result<u64, ApiError>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let mut progress = self.lock(state.config().body_idle_timeout).await?;
        if progress.ending.is_some() {
            return Err(ApiError::NotFound);
        }
        if offset != progress.offset {
            return Err(ApiError::OffsetMismatch {
                expected: progress.offset,
            });
        }
        if let Some(mts) = mts_override {
            self.set_mts(&progress, mts)?;
        }
        self.touch();
        let file = progress.file.clone().ok_or(ApiError::Internal)?;
        let mut hasher = body.checksum.as_ref().map(|c| Digest::new(c.algorithm));
        let mut interrupted = self.interrupt.subscribe();
        interrupted.mark_unchanged();
        let mut stream = body.stream;
        let start = progress.offset;
        let mut failure = None;
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(body.idle, stream.next()) => next,
                _ = interrupted.changed() => break,
            };
            let chunk = match next {
                Err(_) => {
                    failure = Some(ApiError::BodyTimeout(body.idle));
                    break;
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    tracing::debug!(upload = %self.id, error = %e, "PATCH body ended early; keeping what arrived");
                    break;
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
            if progress.offset + chunk.len() as u64 > self.length {
                failure = Some(ApiError::BadRequest(format!(
                    "the body goes past Upload-Length ({})",
                    self.length
                )));
                break;
            }
            state.metrics().received(chunk.len());
            if let Some(h) = &mut hasher {
                h.update(&chunk);
            }
            let at = progress.offset;
            let (f, c) = (file.clone(), chunk.clone());
            run_blocking(move || f.write_all_at(&c, at)).await?;
            progress.offset += chunk.len() as u64;
            if let Err(why) = progress.tracker.push(&chunk) {
                if self.expects_jpeg {
                    failure = Some(ApiError::BadRequest(format!(
                        "the bytes are not a valid JPEG ({why}); the upload cannot go on"
                    )));
                    break;
                }
            }
            if hasher.is_none() {
                self.publish(&progress);
            }
            self.touch();
        }
        let checksum_failed = match (hasher, &body.checksum) {
            (Some(h), Some(want)) if failure.is_none() => h.finish() != want.digest,
            _ => false,
        };
        let not_jpeg = self.expects_jpeg && !progress.tracker.is_jpeg();
        if checksum_failed || not_jpeg || (failure.is_some() && body.checksum.is_some()) {
            // Nothing of a body that fails its checksum, or that breaks the JPEG, is kept: the
            // file stays a valid image whatever becomes of the upload.
            self.truncate(&mut progress, start, state).await?;
            return Err(failure.unwrap_or(ApiError::ChecksumMismatch));
        }
        let f = file.clone();
        run_blocking(move || f.sync_data()).await?;
        self.publish(&progress);
        if let Some(e) = failure {
            return Err(e);
        }
        self.advance(&mut progress, state).await?;
        Ok(progress.offset)
    }

    /// Lowers or raises the MTS before the commit (the client measured its link).
    fn set_mts(&self, progress: &Progress, mts: u64) -> Result<(), ApiError> {
        if progress.committed.is_some() {
            return Ok(());
        }
        let mut record = self.record();
        if mts > record.length {
            return Err(ApiError::BadRequest(
                "Sluice-Mts is larger than Upload-Length".into(),
            ));
        }
        record.mts = mts;
        write_record(&self.record_path, &record).map_err(io_error)?;
        if let Ok(mut r) = self.record.lock() {
            *r = record;
        }
        Ok(())
    }

    /// Drops bytes after `to` (a body that failed its checksum) and re-reads the tracker.
    async fn truncate(
        &self,
        progress: &mut Progress,
        to: u64,
        state: &StorageState,
    ) -> Result<(), ApiError> {
        let file = progress.file.clone().ok_or(ApiError::Internal)?;
        let max_tail = state.progressive_config().max_scan_tail;
        let tracker = run_blocking(move || {
            file.set_len(to)?;
            file.sync_data()?;
            track_file(&file, to, max_tail)
        })
        .await?;
        progress.offset = to;
        progress.tracker = tracker;
        self.publish(progress);
        Ok(())
    }

    fn publish(&self, progress: &Progress) {
        let layout = progress.tracker.layout();
        let jpeg = progress.tracker.is_jpeg() && layout.header_end > 0;
        self.view.send_replace(View {
            received: progress.offset,
            total: self.length,
            jpeg,
            viewable: if jpeg {
                layout
                    .eoi_end
                    .or(layout.last_complete_scan())
                    .map(|v| v as u64)
            } else {
                None
            },
            committed: progress.committed,
            ending: progress.ending,
        });
    }

    /// Where the file can be committed now, if it can: the MTS, moved up to a scan end for a
    /// JPEG.
    fn commit_point(&self, progress: &Progress) -> Option<u64> {
        let record = self.record();
        let layout = progress.tracker.layout();
        if progress.tracker.is_jpeg() && layout.header_end > 0 {
            let mts = usize::try_from(record.mts).ok()?;
            return layout.boundary_at_or_after(mts).map(|b| b as u64);
        }
        (progress.offset >= record.mts).then_some(record.mts)
    }

    /// Commits at the MTS and finishes at the end, as far as the bytes received allow.
    async fn advance(
        self: &Arc<Self>,
        progress: &mut Progress,
        state: &StorageState,
    ) -> Result<(), ApiError> {
        let length = self.length;
        if progress.offset >= length {
            return self.finish(progress, state, Ending::Completed).await;
        }
        if progress.committed.is_none() {
            if let Some(cut) = self.commit_point(progress) {
                match self
                    .store_version(progress, state, cut, BlobState::Partial { total: length })
                    .await
                {
                    Ok(()) => self.emit(state, EventKind::Committed, progress.offset),
                    // The bytes are safe in the session; the next PATCH tries again.
                    Err(e) => {
                        tracing::warn!(upload = %self.id, error = %e, "commit at the MTS failed; retrying with the next PATCH")
                    }
                }
            }
        }
        self.publish(progress);
        Ok(())
    }

    /// Stores the first `len` bytes under the file id as `blob_state`, replicated by the
    /// group's write rule.
    async fn store_version(
        self: &Arc<Self>,
        progress: &mut Progress,
        state: &StorageState,
        len: u64,
        blob_state: BlobState,
    ) -> Result<(), ApiError> {
        let key = self.ensure_key(state).await?;
        let record = self.record();
        let mut writer = state
            .store()
            .writer(key, record.content_type.clone(), u64::MAX);
        writer.set_state(blob_state);
        let file = progress.file.clone().ok_or(ApiError::Internal)?;
        let mut at = 0;
        while at < len {
            let want = READ_CHUNK.min((len - at) as usize);
            let f = file.clone();
            let chunk = run_blocking(move || {
                let mut buf = vec![0u8; want];
                f.read_exact_at(&mut buf, at)?;
                Ok(buf)
            })
            .await?;
            at += chunk.len() as u64;
            writer.write(Bytes::from(chunk)).await?;
        }
        let stored = writer.commit().await?;
        let id = FileId::new(state.config().group.clone(), key);
        if let Some(r) = state.replication() {
            r.replicate_put(state.store(), &id, ReplicaSource::Stored)
                .await?;
        }
        progress.committed = Some(stored.size);
        Ok(())
    }

    /// Chooses the file id's key and saves it before anything is stored under it, so a crash
    /// can never leave a stored file no session knows.
    async fn ensure_key(self: &Arc<Self>, state: &StorageState) -> Result<BlobKey, ApiError> {
        if let Some(key) = self.key() {
            return Ok(key);
        }
        let key = state.store().new_key()?;
        let mut record = self.record();
        record.key = Some(key.to_string());
        let path = self.record_path.clone();
        let saved = record.clone();
        run_blocking(move || write_record(&path, &saved)).await?;
        if let Ok(mut r) = self.record.lock() {
            *r = record;
        }
        state.uploads().index_key(key, self);
        Ok(key)
    }

    /// Ends the session: stores the final version (whole, or what arrived), tells the
    /// listeners, and removes the session's files.
    async fn finish(
        self: &Arc<Self>,
        progress: &mut Progress,
        state: &StorageState,
        ending: Ending,
    ) -> Result<(), ApiError> {
        let record = self.record();
        let first_commit = progress.committed.is_none();
        let ending = match ending {
            Ending::Abandoned if first_commit => Ending::Dropped,
            other => other,
        };
        match ending {
            Ending::Completed => {
                self.store_version(progress, state, progress.offset, BlobState::Complete)
                    .await?;
                if first_commit {
                    self.emit(state, EventKind::Committed, progress.offset);
                }
                self.emit(state, EventKind::Completed, progress.offset);
            }
            Ending::Abandoned => {
                let total = record.length;
                if let Err(e) = self
                    .store_version(
                        progress,
                        state,
                        progress.offset,
                        BlobState::Abandoned { total },
                    )
                    .await
                {
                    // The committed prefix stays; what came after it is lost with the session.
                    tracing::warn!(upload = %self.id, error = %e, "could not store the abandoned upload's last bytes; the committed part stays");
                }
                self.emit(state, EventKind::Abandoned, progress.offset);
            }
            Ending::Dropped => {
                tracing::info!(upload = %self.id, received = progress.offset, "upload dropped before its MTS");
            }
        }
        progress.ending = Some(ending);
        progress.file = None;
        self.publish(progress);
        if let Some(key) = self.key() {
            state.uploads().forget_key(&key);
        }
        let (data, rec) = (self.data_path.clone(), self.record_path.clone());
        run_blocking(move || {
            for path in [rec, data] {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            Ok(())
        })
        .await?;
        Ok(())
    }

    fn emit(&self, state: &StorageState, kind: EventKind, received: u64) {
        let record = self.record();
        let Some(key) = self.key() else {
            return;
        };
        state.events().emit(FileEvent {
            kind,
            fileid: FileId::new(state.config().group.clone(), key).to_string(),
            sender: record.sender,
            receiver: record.receiver,
            received,
            total: record.length,
        });
    }

    /// tus termination: before the MTS the upload is dropped; after it the file is finalised
    /// at what arrived (its id is already out).
    pub async fn terminate(self: &Arc<Self>, state: &StorageState) -> Result<(), ApiError> {
        let mut progress = self.lock(state.config().body_idle_timeout).await?;
        if progress.ending.is_some() {
            return Err(ApiError::NotFound);
        }
        self.finish(&mut progress, state, Ending::Abandoned).await?;
        state.uploads().forget(&self.id);
        Ok(())
    }
}

/// Completes sessions that hold every byte but were never finished (a crash between the last
/// PATCH's fsync and its completion, or a completion that failed), finalises sessions whose
/// sender went quiet, and forgets ended ones, every `tick`, until `shutdown`. Its first pass
/// runs at once, so a restart completes what the crash left.
pub async fn run_watchdog(state: StorageState, shutdown: impl std::future::Future<Output = ()>) {
    let config = state.progressive_config().clone();
    let tick = (config.abandon_after / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticks = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut shutdown => return,
        }
        let now = now_ms();
        for session in state.uploads().all() {
            // A PATCH in progress is activity: leave it.
            let Ok(mut progress) = session.progress.try_lock() else {
                continue;
            };
            let whole = progress.offset == session.record().length;
            if !whole && session.expires_ms(&config) > now {
                continue;
            }
            if progress.ending.is_none() {
                let (ending, what) = if whole {
                    (Ending::Completed, "complete")
                } else {
                    (Ending::Abandoned, "finalise a quiet")
                };
                if let Err(e) = session.finish(&mut progress, &state, ending).await {
                    tracing::warn!(upload = %session.id, error = %e, "could not {what} upload; will retry");
                    continue;
                }
                if whole {
                    tracing::info!(upload = %session.id, "an upload that had every byte is completed");
                }
            }
            drop(progress);
            state.uploads().forget(&session.id);
        }
    }
}

/// A scan tracker fed the first `len` bytes of a data file (after a restart or a truncation).
fn track_file(file: &File, len: u64, max_tail: usize) -> std::io::Result<ScanTracker> {
    let mut tracker = ScanTracker::new(max_tail);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut at = 0;
    while at < len {
        let n = file.read_at(&mut buf[..READ_CHUNK.min((len - at) as usize)], at)?;
        if n == 0 {
            break;
        }
        // A tracker that fails stays failed; what it says is read from it later.
        let _ = tracker.push(&buf[..n]);
        at += n as u64;
    }
    Ok(tracker)
}

fn expects_jpeg(record: &SessionRecord) -> bool {
    let ct = record.content_type.to_ascii_lowercase();
    ct.starts_with("image/jpeg") || ct.starts_with("image/pjpeg")
}

fn write_record(path: &Path, record: &SessionRecord) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

pub(crate) fn new_record(
    length: u64,
    mts: u64,
    content_type: String,
    metadata_header: String,
    metadata: &BTreeMap<String, String>,
    signed: bool,
) -> SessionRecord {
    SessionRecord {
        version: RECORD_VERSION,
        length,
        mts,
        content_type,
        metadata_header,
        sender: metadata.get("sender").cloned().unwrap_or_default(),
        receiver: metadata.get("receiver").cloned().unwrap_or_default(),
        key: None,
        created_ms: now_ms(),
        signed,
    }
}

fn io_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        return ApiError::NoSpace;
    }
    tracing::error!(error = %e, "upload session I/O failed");
    ApiError::Internal
}

async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(io_error)
}

/// Reads `len` bytes at `at` from a data file, off the async threads.
pub(crate) async fn read_at(file: Arc<File>, at: u64, len: usize) -> Result<Bytes, ApiError> {
    run_blocking(move || {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, at)?;
        Ok(Bytes::from(buf))
    })
    .await
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The digest a PATCH body is checked against.
enum Digest {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Digest {
    fn new(algorithm: sluice_proto::tus::ChecksumAlgorithm) -> Self {
        use sha2::Digest as _;
        match algorithm {
            sluice_proto::tus::ChecksumAlgorithm::Sha1 => Digest::Sha1(sha1::Sha1::new()),
            sluice_proto::tus::ChecksumAlgorithm::Sha256 => Digest::Sha256(sha2::Sha256::new()),
        }
    }

    fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Digest::Sha1(h) => h.update(data),
            Digest::Sha256(h) => h.update(data),
        }
    }

    fn finish(self) -> Vec<u8> {
        use sha2::Digest as _;
        match self {
            Digest::Sha1(h) => h.finalize().to_vec(),
            Digest::Sha256(h) => h.finalize().to_vec(),
        }
    }
}
