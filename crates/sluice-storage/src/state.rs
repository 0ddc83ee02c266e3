//! The node's shared state: its store, config, upload sessions, events and replication.
//! Handlers (`http`) and workers (`cluster`, `scrub`) sit on top of it.

use std::sync::Arc;

use sluice_blob::BlobStore;
use sluice_http::{HttpLimits, HttpMetrics};
use sluice_proto::{FileId, GroupName};

use crate::{events, progressive, replication};

/// What a storage node needs to know; the binary builds it from flags, env and config file.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// What `/v1/about` calls this process: `storage`, or `serve` for all roles in one.
    pub role: &'static str,
    /// The group this node belongs to; every file id it mints starts with it.
    pub group: GroupName,
    /// Largest upload accepted, in bytes (413 beyond it).
    pub max_upload_size: u64,
    /// Longest pause allowed between two pieces of an upload body (408 beyond it), so a
    /// client that goes quiet cannot hold a writer and its buffer forever.
    pub body_idle_timeout: std::time::Duration,
    /// Connection limit and request-head deadline.
    pub http: HttpLimits,
    /// Which web origins may read.
    pub cors: sluice_http::CorsPolicy,
    /// Signed-link and API-token rules for reads and writes.
    pub access: sluice_http::AccessPolicy,
    /// Whether HTML, SVG, XML and JavaScript files are served inline (still sandboxed)
    /// rather than as attachments.
    pub active_content: sluice_http::ActiveContent,
    /// Most bytes of files this node holds; `None`: as much as the disk takes.
    pub capacity: Option<u64>,
    /// Who may call `/v1/internal` (peers holding `SLUICE_CLUSTER_SECRET`).
    pub cluster: sluice_http::ClusterAccess,
    /// This node's lasting id (`DATA/NODE_ID`), which it tells trackers that ask
    /// (`GET /v1/internal/identity`); `None` for a node outside any cluster.
    pub node_id: Option<String>,
    /// Progressive uploads (tus at `/v1/uploads`).
    pub progressive: progressive::ProgressiveConfig,
    /// Where `file.*` events are posted besides `/v1/events`.
    pub webhook: Option<events::WebhookConfig>,
}

/// Shared state of one storage node; cheap to clone.
#[derive(Clone)]
pub struct StorageState {
    inner: Arc<Inner>,
}

struct Inner {
    store: BlobStore,
    config: StorageConfig,
    /// Present when the node belongs to a cluster group.
    replication: Option<Arc<replication::Replication>>,
    metrics: Arc<HttpMetrics>,
    counters: NodeCounters,
    uploads: progressive::UploadContext,
    events: events::Events,
    /// Random for this run of the node (see `NodeIdentity::instance`).
    instance: String,
}

/// What the node counts besides HTTP traffic.
#[derive(Default)]
pub struct NodeCounters {
    /// Damaged copies replaced with a peer's.
    pub repaired: std::sync::atomic::AtomicU64,
    /// Files the scrub has read through.
    pub scrubbed_files: std::sync::atomic::AtomicU64,
    /// Damaged files the scrub found.
    pub scrub_damaged: std::sync::atomic::AtomicU64,
}

impl StorageState {
    /// Blocking (reloads upload sessions from disk).
    pub fn new(store: BlobStore, config: StorageConfig) -> std::io::Result<Self> {
        Self::with_replication(store, config, None)
    }

    pub fn with_replication(
        store: BlobStore,
        config: StorageConfig,
        replication: Option<Arc<replication::Replication>>,
    ) -> std::io::Result<Self> {
        let events = events::Events::new(config.webhook.clone());
        let metrics = Arc::<HttpMetrics>::default();
        let uploads = progressive::UploadContext::open(
            store.clone(),
            config.group.clone(),
            events.clone(),
            replication.clone(),
            config.progressive.clone(),
            config.body_idle_timeout,
            metrics.clone(),
        )?;
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                config,
                replication,
                metrics,
                counters: NodeCounters::default(),
                uploads,
                events,
                instance: nonce.iter().map(|b| format!("{b:02x}")).collect(),
            }),
        })
    }

    pub(crate) fn uploads(&self) -> &progressive::Uploads {
        &self.inner.uploads.uploads
    }

    /// What upload sessions work with (the watchdog's, and each PATCH's, context).
    pub fn upload_context(&self) -> &progressive::UploadContext {
        &self.inner.uploads
    }

    pub fn events(&self) -> &events::Events {
        &self.inner.events
    }

    pub fn progressive_config(&self) -> &progressive::ProgressiveConfig {
        &self.inner.config.progressive
    }

    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    pub fn config(&self) -> &StorageConfig {
        &self.inner.config
    }

    pub fn replication(&self) -> Option<&Arc<replication::Replication>> {
        self.inner.replication.as_ref()
    }

    /// Random for this run of the node.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }

    pub fn counters(&self) -> &NodeCounters {
        &self.inner.counters
    }

    /// Replaces a damaged local copy with a peer's; false when no peer could provide one.
    pub(crate) async fn repair_from_peers(&self, id: &FileId) -> bool {
        let Some(r) = self.replication() else {
            return false;
        };
        match r
            .fetch_from_peers(self.store(), id, self.config().max_upload_size, true)
            .await
        {
            Ok(true) => {
                tracing::warn!(fileid = %id, "damaged copy replaced with a peer's");
                self.metrics_repaired();
                true
            }
            Ok(false) => {
                tracing::error!(fileid = %id, "damaged copy and no peer has a good one");
                false
            }
            Err(e) => {
                tracing::error!(fileid = %id, error = %e, "repair from a peer failed");
                false
            }
        }
    }

    pub(crate) fn metrics_repaired(&self) {
        self.inner
            .counters
            .repaired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn metrics(&self) -> &HttpMetrics {
        &self.inner.metrics
    }

    /// Where the router counts requests.
    pub(crate) fn metrics_recorder(&self) -> Arc<HttpMetrics> {
        self.inner.metrics.clone()
    }
}
