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

mod record;
mod registry;
mod session;
#[cfg(test)]
mod tests;
mod watchdog;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sluice_blob::BlobStore;
use sluice_http::HttpMetrics;
use sluice_proto::GroupName;

use crate::error::ApiError;
use crate::events::Events;
use crate::replication::Replication;

pub(crate) use record::new_record;
pub(crate) use registry::Uploads;
pub(crate) use session::{PatchBody, Session};
pub use watchdog::run_watchdog;

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

/// What upload sessions need of their node, and no more: where files go, who hears of
/// them, and the registry of sessions. Cheap to clone.
#[derive(Clone)]
pub struct UploadContext {
    pub(crate) store: BlobStore,
    /// The node's group: file ids are minted in it.
    pub(crate) group: GroupName,
    pub(crate) uploads: Arc<Uploads>,
    pub(crate) events: Events,
    /// The group's replication, when the node has peers.
    pub(crate) replication: Option<Arc<Replication>>,
    pub(crate) config: ProgressiveConfig,
    /// How long a request waits for a session another request holds (and a body may stall).
    pub(crate) lock_wait: Duration,
    /// Where received bytes are counted.
    pub(crate) metrics: Arc<HttpMetrics>,
}

impl UploadContext {
    /// Opens the store's upload sessions (`DATA/uploads`, blocking: reloads what a previous
    /// run left).
    pub fn open(
        store: BlobStore,
        group: GroupName,
        events: Events,
        replication: Option<Arc<Replication>>,
        config: ProgressiveConfig,
        lock_wait: Duration,
        metrics: Arc<HttpMetrics>,
    ) -> std::io::Result<Self> {
        let uploads = Arc::new(Uploads::open(&store, &config)?);
        Ok(Self {
            store,
            group,
            uploads,
            events,
            replication,
            config,
            lock_wait,
            metrics,
        })
    }

    /// Sessions held.
    pub fn sessions(&self) -> usize {
        self.uploads.count()
    }
}

pub(crate) fn io_error(e: std::io::Error) -> ApiError {
    if e.raw_os_error() == Some(28) {
        return ApiError::NoSpace;
    }
    tracing::error!(error = %e, "upload session I/O failed");
    ApiError::Internal
}

pub(crate) async fn run_blocking<T: Send + 'static>(
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

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
