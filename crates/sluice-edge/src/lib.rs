//! The edge role (DESIGN.md §1 on `000_*.txt`): a caching proxy near users. A request for
//! `/v1/files/{fileid}` is answered from the disk cache when the file is there
//! (`Sluice-Cache: hit`); otherwise it joins the one origin fetch of that file and streams the
//! bytes as they arrive (`Sluice-Cache: miss`). Signed URLs are checked here exactly as on
//! storage nodes, and signature parameters are never part of the cache key.
//!
//! [`start`] takes a bound listener and a shutdown future, like every role.

pub mod cache;
mod error;
mod files;
pub mod fill;
mod metrics;
pub mod origin;
pub mod registration;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use sluice_blob::{BlobStore, BlobStoreOptions};
use sluice_http::{AccessPolicy, CorsPolicy, HttpLimits};
use tokio::net::TcpListener;

pub use error::EdgeError;
pub use metrics::EdgeMetrics;

/// What an edge needs to know; the binary builds it from flags, env and config file.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// A `sluice serve`, a storage node or a tracker.
    pub origin: String,
    /// The cluster's trackers: the edge registers with them, and follows the origin's
    /// redirects only to storage nodes they (or the origin) list.
    pub trackers: Vec<String>,
    /// Bytes of files the cache holds at most; least recently used files go first.
    pub cache_size: u64,
    pub region: Option<String>,
    pub access: AccessPolicy,
    /// Whether HTML, SVG, XML and JavaScript files are served inline (still sandboxed).
    pub active_content: sluice_http::ActiveContent,
    pub cors: CorsPolicy,
    pub http: HttpLimits,
    /// Who may call `/v1/internal` (preload requests from trackers), and the secret sent to
    /// trackers with heartbeats.
    pub cluster: sluice_http::ClusterAccess,
    /// Memory for the hot cache of small files.
    pub hot_cache: sluice_blob::HotCacheLimits,
}

/// Shared state of one edge; cheap to clone.
#[derive(Clone)]
pub struct EdgeState {
    inner: Arc<Inner>,
}

struct Inner {
    config: EdgeConfig,
    store: BlobStore,
    cache: cache::CacheIndex,
    fills: fill::Fills,
    origin: origin::Origin,
    metrics: EdgeMetrics,
    http_metrics: Arc<sluice_http::HttpMetrics>,
    spool: PathBuf,
}

impl EdgeState {
    /// Opens the cache in `dir` (files in `dir/files`, fills in progress in `dir/spool`).
    /// Blocking: walks the cache to rebuild its LRU order.
    pub fn open(dir: &Path, config: EdgeConfig) -> Result<Self, EdgeError> {
        let spool = dir.join("spool");
        // Spools belong to fills of a previous run: nothing in them is worth keeping.
        let _ = std::fs::remove_dir_all(&spool);
        std::fs::create_dir_all(&spool).map_err(|e| EdgeError::Setup(e.to_string()))?;
        let store = BlobStore::open(
            &dir.join("files"),
            BlobStoreOptions {
                hot_cache: config.hot_cache,
                // A cache evicts all the time: in volumes that would be compaction's work
                // over and over, while a data file is simply unlinked.
                volumes: None,
                ..BlobStoreOptions::default()
            },
        )
        .map_err(|e| EdgeError::Setup(e.to_string()))?;
        let cache = cache::CacheIndex::load(&store, config.cache_size)
            .map_err(|e| EdgeError::Setup(e.to_string()))?;
        let origin = origin::Origin::new(
            &config.origin,
            config.access.url_secret.clone(),
            &config.trackers,
        )
        .map_err(EdgeError::Setup)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                cache,
                fills: fill::Fills::default(),
                origin,
                metrics: EdgeMetrics::default(),
                http_metrics: Arc::default(),
                spool,
            }),
        })
    }

    pub fn config(&self) -> &EdgeConfig {
        &self.inner.config
    }

    pub fn store(&self) -> &BlobStore {
        &self.inner.store
    }

    pub fn cache(&self) -> &cache::CacheIndex {
        &self.inner.cache
    }

    pub fn fills(&self) -> &fill::Fills {
        &self.inner.fills
    }

    pub fn origin(&self) -> &origin::Origin {
        &self.inner.origin
    }

    pub fn metrics(&self) -> &EdgeMetrics {
        &self.inner.metrics
    }

    pub(crate) fn spool_dir(&self) -> &Path {
        &self.inner.spool
    }
}

/// The edge's HTTP routes.
pub fn router(state: EdgeState) -> Router {
    let config = state.config();
    let preload = sluice_http::cluster::cluster_only(
        Router::new().route("/v1/internal/preload/{*fileid}", post(files::preload)),
        config.cluster.clone(),
        config.access.clone(),
    );
    let routes = Router::new()
        .route("/v1/files/{*fileid}", get(files::get_file))
        .merge(preload);
    let common = sluice_http::CommonRoutes {
        role: "edge",
        healthz: sluice_http::healthz_ok(),
        metrics: get(metrics::render),
        cors: config.cors.clone(),
        recorder: state.inner.http_metrics.clone(),
        access: config.access.clone(),
    };
    sluice_http::role_router(routes, common, state)
}

/// How an edge starts: its cache directory, its settings, and how it registers.
#[derive(Debug, Clone)]
pub struct EdgeStart {
    /// The cache directory (created if missing; survives restarts).
    pub cache_dir: PathBuf,
    pub config: EdgeConfig,
    /// The URL clients should use for this edge; default: the listen address.
    pub advertise: Option<String>,
    /// Between heartbeats to the trackers (when `config.trackers` names any).
    pub heartbeat_interval: std::time::Duration,
    pub shutdown: sluice_http::ShutdownLimits,
}

/// Opens the cache and serves the edge on `listener` until `shutdown` resolves: the one way an
/// edge starts, for `sluice edge` and the tests alike. With trackers, its `registration`
/// worker sends heartbeats; the cache is closed last.
pub async fn start(
    listener: TcpListener,
    start: EdgeStart,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<sluice_http::Running<EdgeState>, EdgeError> {
    let listen = listener
        .local_addr()
        .map_err(|e| EdgeError::Setup(e.to_string()))?;
    let (dir, config) = (start.cache_dir.clone(), start.config.clone());
    let state = tokio::task::spawn_blocking(move || EdgeState::open(&dir, config))
        .await
        .map_err(|e| EdgeError::Setup(e.to_string()))??;
    let mut parts = sluice_http::RoleParts::new(
        router(state.clone()),
        state.config().http.clone(),
        start.shutdown,
    );
    if !state.config().trackers.is_empty() {
        let registration = registration::Registration {
            trackers: state.config().trackers.clone(),
            advertise: start
                .advertise
                .clone()
                .unwrap_or_else(|| format!("http://{listen}")),
            interval: start.heartbeat_interval,
        };
        let edge = state.clone();
        parts.workers.spawn("registration", |stopping| {
            registration::run(edge, registration, stopping)
        });
    }
    let store = state.store().clone();
    parts.close = Box::pin(async move { store.close().await });
    tracing::info!(
        http = %format!("http://{listen}"),
        origin = %state.config().origin,
        cache = %start.cache_dir.display(),
        cached_files = state.cache().files(),
        region = state.config().region.as_deref().unwrap_or("-"),
        "edge is ready"
    );
    sluice_http::role::run(listener, parts, state, shutdown)
        .map_err(|e| EdgeError::Setup(e.to_string()))
}
