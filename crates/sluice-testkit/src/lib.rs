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
use tokio::task::JoinHandle;

/// A storage node running inside the test process.
pub struct TestNode {
    pub url: String,
    pub state: StorageState,
    dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
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
        let state = open_state(dir.path(), &settings).await;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let state_for_server = state.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (stop_watchdog, watchdog_stopped) = oneshot::channel::<()>();
        tokio::spawn(sluice_storage::progressive::run_watchdog(
            state.clone(),
            async move {
                let _ = watchdog_stopped.await;
            },
        ));
        let task = tokio::spawn(async move {
            let served = sluice_storage::run(listener, state_for_server, async move {
                let _ = stopped.await;
            })
            .await;
            let _ = stop_watchdog.send(());
            served
        });
        Self {
            url,
            state,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Temp files of the store: uploads not yet committed.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        sluice_blob::temp_file_paths(self.dir.path()).unwrap_or_default()
    }

    /// Stops serving and waits for the server task to end.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn open_state(dir: &Path, settings: &NodeSettings) -> StorageState {
    let dir = dir.to_owned();
    let block_size = settings.block_size;
    let store = tokio::task::spawn_blocking(move || sluice_blob_open(&dir, block_size))
        .await
        .expect("open task")
        .expect("open blob store");
    StorageState::new(
        store,
        StorageConfig {
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
    )
    .expect("storage state")
}

fn sluice_blob_open(
    dir: &Path,
    block_size: u32,
) -> Result<sluice_storage::BlobStore, sluice_storage::BlobError> {
    sluice_storage::BlobStore::open(
        dir,
        BlobStoreOptions {
            block_size,
            ..BlobStoreOptions::default()
        },
    )
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

/// An edge running inside the test process, in front of `origin`.
pub struct TestEdge {
    pub url: String,
    pub state: sluice_edge::EdgeState,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestEdge {
    /// Starts an edge whose cache lives in `cache_dir` (pass the same one to a restarted edge).
    pub async fn start(cache_dir: &Path, config: sluice_edge::EdgeConfig) -> Self {
        let dir = cache_dir.to_owned();
        let state = tokio::task::spawn_blocking(move || sluice_edge::EdgeState::open(&dir, config))
            .await
            .expect("open task")
            .expect("open edge cache");
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(sluice_edge::run(listener, state.clone(), async move {
            let _ = stopped.await;
        }));
        Self {
            url,
            state,
            stop: Some(stop),
            task: Some(task),
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
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let store = self.state.store().clone();
        drop(self.state);
        store.close().await;
    }
}
