//! One upload session's state machine: PATCHes appended and fsynced, the commit at the MTS
//! (a scan end for a JPEG), the finish (complete, abandoned, or dropped before its MTS).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sluice_blob::BlobState;
use sluice_media::jpeg::ScanTracker;
use sluice_proto::{BlobKey, FileId};
use sluice_state::LockRecover;
use tokio::sync::watch;

use super::record::{SessionRecord, expects_jpeg, write_record};
use super::{ProgressiveConfig, READ_CHUNK, UploadContext, now_ms, run_blocking};
use crate::error::ApiError;
use crate::events::{EventKind, FileEvent};
use crate::replication::ReplicaSource;

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
    pub(super) progress: tokio::sync::Mutex<Progress>,
    view: watch::Sender<View>,
    /// Bumped by a PATCH that wants the session while another holds it: the holder stops
    /// reading its (probably dead) connection and lets go.
    interrupt: watch::Sender<u64>,
    last_activity_ms: AtomicU64,
}

/// What a PATCH, the finish and the watchdog change, under the session's one lock.
pub(crate) struct Progress {
    pub(crate) file: Option<Arc<File>>,
    pub(crate) offset: u64,
    pub(crate) tracker: ScanTracker,
    pub(crate) committed: Option<u64>,
    pub(crate) ending: Option<Ending>,
}

/// A PATCH's body, with an optional checksum it must match.
pub(crate) struct PatchBody<S> {
    pub stream: S,
    pub checksum: Option<sluice_proto::tus::UploadChecksum>,
    pub idle: Duration,
}

impl Session {
    pub(crate) fn new(
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
        self.record.lock_or_recover().clone()
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
        let after = u64::try_from(config.abandon_after.as_millis()).unwrap_or(u64::MAX);
        self.last_activity_ms
            .load(Ordering::Relaxed)
            .saturating_add(after)
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
        cx: &UploadContext,
        offset: u64,
        body: PatchBody<S>,
        mts_override: Option<u64>,
    ) -> Result<u64, ApiError>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        use futures_util::StreamExt;
        let mut progress = self.lock(cx.lock_wait).await?;
        if progress.ending.is_some() {
            return Err(ApiError::NotFound);
        }
        if offset != progress.offset {
            return Err(ApiError::OffsetMismatch {
                expected: progress.offset,
            });
        }
        if let Some(mts) = mts_override {
            self.set_mts(&progress, mts).await?;
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
            cx.metrics.received(chunk.len());
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
            self.truncate(&mut progress, start, cx).await?;
            return Err(failure.unwrap_or(ApiError::ChecksumMismatch));
        }
        let f = file.clone();
        run_blocking(move || f.sync_data()).await?;
        self.publish(&progress);
        if let Some(e) = failure {
            return Err(e);
        }
        self.advance(&mut progress, cx).await?;
        Ok(progress.offset)
    }

    /// Lowers or raises the MTS before the commit (the client measured its link).
    async fn set_mts(&self, progress: &Progress, mts: u64) -> Result<(), ApiError> {
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
        let (path, saved) = (self.record_path.clone(), record.clone());
        run_blocking(move || write_record(&path, &saved)).await?;
        *self.record.lock_or_recover() = record;
        Ok(())
    }

    /// Drops bytes after `to` (a body that failed its checksum) and re-reads the tracker.
    async fn truncate(
        &self,
        progress: &mut Progress,
        to: u64,
        cx: &UploadContext,
    ) -> Result<(), ApiError> {
        let file = progress.file.clone().ok_or(ApiError::Internal)?;
        let max_tail = cx.config.max_scan_tail;
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
        cx: &UploadContext,
    ) -> Result<(), ApiError> {
        let length = self.length;
        if progress.offset >= length {
            return self.finish(progress, cx, Ending::Completed).await;
        }
        if progress.committed.is_none() {
            if let Some(cut) = self.commit_point(progress) {
                match self
                    .store_version(progress, cx, cut, BlobState::Partial { total: length })
                    .await
                {
                    Ok(()) => self.emit(cx, EventKind::Committed, progress.offset),
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
        cx: &UploadContext,
        len: u64,
        blob_state: BlobState,
    ) -> Result<(), ApiError> {
        let key = self.ensure_key(cx).await?;
        let record = self.record();
        let mut writer = cx.store.writer(key, record.content_type.clone(), u64::MAX);
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
        let id = FileId::new(cx.group.clone(), key);
        if let Some(r) = cx.replication.as_ref() {
            r.replicate_put(&cx.store, &id, ReplicaSource::Stored)
                .await?;
        }
        progress.committed = Some(stored.size);
        Ok(())
    }

    /// Chooses the file id's key and saves it before anything is stored under it, so a crash
    /// can never leave a stored file no session knows.
    async fn ensure_key(self: &Arc<Self>, cx: &UploadContext) -> Result<BlobKey, ApiError> {
        if let Some(key) = self.key() {
            return Ok(key);
        }
        let key = cx.store.new_key()?;
        let mut record = self.record();
        record.key = Some(key.to_string());
        let path = self.record_path.clone();
        let saved = record.clone();
        run_blocking(move || write_record(&path, &saved)).await?;
        *self.record.lock_or_recover() = record;
        cx.uploads.index_key(key, self);
        Ok(key)
    }

    /// Ends the session: stores the final version (whole, or what arrived), tells the
    /// listeners, and removes the session's files.
    pub(crate) async fn finish(
        self: &Arc<Self>,
        progress: &mut Progress,
        cx: &UploadContext,
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
                self.store_version(progress, cx, progress.offset, BlobState::Complete)
                    .await?;
                if first_commit {
                    self.emit(cx, EventKind::Committed, progress.offset);
                }
                self.emit(cx, EventKind::Completed, progress.offset);
            }
            Ending::Abandoned => {
                let total = record.length;
                if let Err(e) = self
                    .store_version(
                        progress,
                        cx,
                        progress.offset,
                        BlobState::Abandoned { total },
                    )
                    .await
                {
                    // The committed prefix stays; what came after it is lost with the session.
                    tracing::warn!(upload = %self.id, error = %e, "could not store the abandoned upload's last bytes; the committed part stays");
                }
                self.emit(cx, EventKind::Abandoned, progress.offset);
            }
            Ending::Dropped => {
                tracing::info!(upload = %self.id, received = progress.offset, "upload dropped before its MTS");
            }
        }
        progress.ending = Some(ending);
        progress.file = None;
        self.publish(progress);
        if let Some(key) = self.key() {
            cx.uploads.forget_key(&key);
        }
        // The file is stored and its events are out: the session's files going is cleanup.
        // Left behind (a read-only directory), the next start removes them without
        // finishing the upload again.
        let (data, rec) = (self.data_path.clone(), self.record_path.clone());
        let removed = run_blocking(move || {
            for path in [rec, data] {
                match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("{}: {e}", path.display()),
                        ));
                    }
                    _ => {}
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = removed {
            tracing::error!(upload = %self.id, error = ?e, "could not remove a finished upload's session files");
        }
        Ok(())
    }

    fn emit(&self, cx: &UploadContext, kind: EventKind, received: u64) {
        let record = self.record();
        let Some(key) = self.key() else {
            return;
        };
        cx.events.emit(FileEvent {
            kind,
            fileid: FileId::new(cx.group.clone(), key).to_string(),
            sender: record.sender,
            receiver: record.receiver,
            received,
            total: record.length,
        });
    }

    /// tus termination: before the MTS the upload is dropped; after it the file is finalised
    /// at what arrived (its id is already out).
    pub async fn terminate(self: &Arc<Self>, cx: &UploadContext) -> Result<(), ApiError> {
        let mut progress = self.lock(cx.lock_wait).await?;
        if progress.ending.is_some() {
            return Err(ApiError::NotFound);
        }
        self.finish(&mut progress, cx, Ending::Abandoned).await?;
        cx.uploads.forget(&self.id);
        Ok(())
    }
}

/// A scan tracker fed the first `len` bytes of a data file (after a restart or a truncation).
pub(crate) fn track_file(file: &File, len: u64, max_tail: usize) -> std::io::Result<ScanTracker> {
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
