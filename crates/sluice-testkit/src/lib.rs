//! Boots Sluice nodes on 127.0.0.1 with ephemeral ports and temporary data directories, so
//! tests talk to real servers over real sockets and never share a port or a directory.

pub mod browser;
pub mod http;
pub mod images;
pub mod link;
pub mod small_disk;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice_storage::{BlobStoreOptions, StorageConfig, StorageState};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A storage node running inside the test process, started by the same
/// [`sluice_storage::start`] as `sluice storage`.
pub struct TestNode {
    pub url: String,
    pub state: StorageState,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    running: Option<sluice_http::Running<StorageState>>,
}

/// The settings a test may change before boot.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub group: String,
    pub max_upload_size: u64,
    pub block_size: u32,
    pub body_idle_timeout: Duration,
    pub max_connections: usize,
    pub capacity: Option<u64>,
    pub access: sluice_storage::AccessPolicy,
    pub active_content: sluice_storage::ActiveContent,
    pub cors: sluice_storage::CorsPolicy,
    pub cluster: sluice_storage::ClusterAccess,
    pub progressive: sluice_storage::progressive::ProgressiveConfig,
    pub webhook: Option<sluice_storage::events::WebhookConfig>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            group: "g1".into(),
            max_upload_size: 64 << 20,
            block_size: 64 * 1024,
            body_idle_timeout: Duration::from_secs(60),
            max_connections: 1000,
            capacity: None,
            access: sluice_storage::AccessPolicy::default(),
            active_content: sluice_storage::ActiveContent::Attachment,
            cors: sluice_storage::CorsPolicy::AnyOrigin,
            cluster: sluice_storage::ClusterAccess::Closed,
            progressive: Default::default(),
            webhook: None,
        }
    }
}

impl TestNode {
    pub async fn start() -> Self {
        Self::start_with(NodeSettings::default()).await
    }

    pub async fn start_with(settings: NodeSettings) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let (stop, stopped) = oneshot::channel::<()>();
        let running = sluice_storage::start(listener, node_config(dir.path(), &settings), async {
            let _ = stopped.await;
        })
        .await
        .expect("start the storage node");
        Self {
            url: running.url(),
            state: running.state.clone(),
            dir,
            stop: Some(stop),
            running: Some(running),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Temp files of the store: uploads not yet committed.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        sluice_blob::temp_file_paths(self.dir.path()).unwrap_or_default()
    }

    /// Stops serving, and waits for the node's workers to stop and its store to close.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(self.state);
        if let Some(running) = self.running.take() {
            let _ = running.stopped().await;
        }
    }
}

fn node_config(dir: &Path, settings: &NodeSettings) -> sluice_storage::NodeConfig {
    sluice_storage::NodeConfig {
        data: dir.to_owned(),
        store: BlobStoreOptions {
            block_size: settings.block_size,
            ..BlobStoreOptions::default()
        },
        storage: StorageConfig {
            role: "storage",
            group: settings.group.parse().expect("valid group"),
            max_upload_size: settings.max_upload_size,
            body_idle_timeout: settings.body_idle_timeout,
            cluster: settings.cluster.clone(),
            node_id: None,
            capacity: settings.capacity,
            access: settings.access.clone(),
            active_content: settings.active_content,
            cors: settings.cors.clone(),
            http: sluice_storage::HttpLimits {
                max_connections: settings.max_connections,
                ..sluice_storage::HttpLimits::default()
            },
            progressive: settings.progressive.clone(),
            webhook: settings.webhook.clone(),
        },
        scrub: sluice_storage::scrub::ScrubConfig {
            interval: Duration::from_secs(24 * 3600),
            bytes_per_sec: 20 << 20,
        },
        shutdown: sluice_http::ShutdownLimits::default(),
        membership: None,
    }
}

/// How often [`wait_until`] re-checks.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns true or `timeout` passes; panics with `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// An edge running inside the test process, in front of `origin`, started by the same
/// [`sluice_edge::start`] as `sluice edge`.
pub struct TestEdge {
    pub url: String,
    pub state: sluice_edge::EdgeState,
    stop: Option<oneshot::Sender<()>>,
    running: Option<sluice_http::Running<sluice_edge::EdgeState>>,
}

impl TestEdge {
    /// Starts an edge whose cache lives in `cache_dir` (pass the same one to a restarted edge).
    pub async fn start(cache_dir: &Path, config: sluice_edge::EdgeConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let (stop, stopped) = oneshot::channel::<()>();
        let start = sluice_edge::EdgeStart {
            cache_dir: cache_dir.to_owned(),
            config,
            advertise: None,
            heartbeat_interval: Duration::from_secs(2),
            shutdown: sluice_http::ShutdownLimits::default(),
        };
        let running = sluice_edge::start(listener, start, async move {
            let _ = stopped.await;
        })
        .await
        .expect("open edge cache");
        Self {
            url: running.url(),
            state: running.state.clone(),
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// An edge config for `origin` with a cache of `cache_size` bytes and everything else open.
    pub fn config(origin: &str, cache_size: u64) -> sluice_edge::EdgeConfig {
        sluice_edge::EdgeConfig {
            origin: origin.to_owned(),
            trackers: Vec::new(),
            cache_size,
            region: None,
            access: sluice_storage::AccessPolicy::default(),
            active_content: sluice_storage::ActiveContent::Attachment,
            cors: sluice_storage::CorsPolicy::AnyOrigin,
            http: sluice_storage::HttpLimits::default(),
            cluster: sluice_storage::ClusterAccess::Closed,
            hot_cache: sluice_blob::HotCacheLimits::default(),
        }
    }

    /// Stops serving, waits for the server, and closes the cache cleanly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        drop(self.state);
        if let Some(running) = self.running.take() {
            let _ = running.stopped().await;
        }
    }
}
