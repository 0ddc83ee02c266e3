//! The storage role: Sluice's HTTP file API (`/v1/files`) over the local blob store, plus
//! `/healthz` and `/metrics`.
//!
//! [`start`] takes an already bound listener, the node's config and a shutdown future, so tests
//! bind port 0 and the binary binds what the user asked for; both start a node the same way.

pub mod cluster;
mod error;
pub mod events;
mod files;
mod internal;
mod metrics;
pub mod node;
mod partial;
pub mod progressive;
pub mod replication;
pub mod scrub;
mod tus;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};
use sluice_proto::GroupName;

pub use error::ApiError;
pub use node::{Membership, NodeConfig, StartError, start};
pub use sluice_blob::{BlobError, BlobStore, BlobStoreOptions, HotCacheLimits};
pub use sluice_http::{
    AccessPolicy, ActiveContent, ClusterAccess, CorsPolicy, HttpLimits, HttpMetrics,
};

/// What a storage node needs to know; the binary builds it from flags, env and config file.
#[derive(Debug, Clone)]
pub struct StorageConfig {
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
    uploads: progressive::Uploads,
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
    /// Blocking (reloads upload sessions from disk); call it inside the runtime, since the
    /// webhook sender starts here.
    pub fn new(store: BlobStore, config: StorageConfig) -> std::io::Result<Self> {
        Self::with_replication(store, config, None)
    }

    pub fn with_replication(
        store: BlobStore,
        config: StorageConfig,
        replication: Option<Arc<replication::Replication>>,
    ) -> std::io::Result<Self> {
        let uploads = progressive::Uploads::open(&store, &config.progressive)?;
        let events = events::Events::new(config.webhook.clone());
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                config,
                replication,
                metrics: Arc::default(),
                counters: NodeCounters::default(),
                uploads,
                events,
                instance: nonce.iter().map(|b| format!("{b:02x}")).collect(),
            }),
        })
    }

    pub(crate) fn uploads(&self) -> &progressive::Uploads {
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

    pub(crate) fn metrics_repaired(&self) {
        self.inner
            .counters
            .repaired
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn metrics(&self) -> &HttpMetrics {
        &self.inner.metrics
    }
}

/// The node's HTTP routes.
pub fn router(state: StorageState) -> Router {
    use error::ApiError::MethodNotAllowed;
    let config = state.config();
    let internal = sluice_http::cluster::cluster_only(
        Router::new()
            .route(
                "/v1/internal/blobs/{*fileid}",
                get(internal::get_local)
                    .put(internal::put_replica)
                    .delete(internal::delete_replica),
            )
            .route("/v1/internal/oplog", get(internal::oplog))
            .route("/v1/internal/identity", get(internal::identity)),
        config.cluster.clone(),
        config.access.clone(),
    );
    let routes = Router::new()
        .route(
            "/v1/files",
            post(files::upload).fallback(|| async { MethodNotAllowed { allow: "POST" } }),
        )
        .route(
            "/v1/files/{*fileid}",
            get(files::download)
                .delete(files::delete)
                .fallback(|| async {
                    MethodNotAllowed {
                        allow: "GET, HEAD, DELETE",
                    }
                }),
        )
        .route(
            "/v1/uploads",
            post(tus::create).options(tus::options).fallback(tus::other),
        )
        .route(
            "/v1/uploads/{id}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::terminate)
                .options(tus::options)
                .fallback(tus::other),
        )
        .route("/v1/events", get(events::stream))
        .merge(internal)
        // Upload size is enforced by the handlers against the configured limit, for raw and
        // multipart bodies alike.
        .layer(DefaultBodyLimit::disable());
    let common = sluice_http::CommonRoutes {
        healthz: get(healthz),
        metrics: get(metrics::render),
        cors: config.cors.clone(),
        recorder: state.inner.metrics.clone(),
    };
    sluice_http::role_router(routes, common, state)
}

/// Alive (the process answers), and whether it can take writes now: a node whose index writes
/// fail says why, and is still "ok" (it serves reads, and recovers by itself).
async fn healthz(State(state): State<StorageState>) -> axum::Json<serde_json::Value> {
    axum::Json(match state.store().write_trouble() {
        None => serde_json::json!({"status": "ok", "writable": true}),
        Some(reason) => serde_json::json!({"status": "ok", "writable": false, "reason": reason}),
    })
}
