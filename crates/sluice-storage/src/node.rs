//! Starting a storage node: open the data directory, start the node's workers, serve.
//!
//! [`start`] is the one way a node starts: `sluice storage` and the tests call it alike.
//! `sluice serve` composes [`open`] and [`spawn_workers`] with the other roles' parts.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_blob::{BlobStore, BlobStoreOptions};
use sluice_http::{RoleParts, Running, ShutdownLimits, Workers};
use tokio::net::TcpListener;

use crate::cluster::ClusterLink;
use crate::replication::{Replication, ReplicationConfig};
use crate::scrub::ScrubConfig;
use crate::{StorageConfig, StorageState};

/// Everything a storage node is started with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The data directory (created if missing).
    pub data: PathBuf,
    pub store: BlobStoreOptions,
    /// What the HTTP handlers need. `node_id` is filled in from `DATA/NODE_ID`.
    pub storage: StorageConfig,
    pub scrub: ScrubConfig,
    pub shutdown: ShutdownLimits,
    /// A member of a cluster group; `None` for a node on its own.
    pub membership: Option<Membership>,
}

/// How a node takes part in its cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Trackers it sends heartbeats to.
    pub trackers: Vec<String>,
    /// The URL clients and peers use; default: the listen address.
    pub advertise: Option<String>,
    pub heartbeat_interval: Duration,
    /// Free bytes kept back; below it, the node asks for no uploads.
    pub free_space_reserve: u64,
    /// Copies (this node included) an upload needs before its 201.
    pub min_copies: usize,
    /// How long a peer may take to store a replica.
    pub replication_timeout: Duration,
    /// Pause between catch-up rounds.
    pub catch_up_interval: Duration,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {path}: {source}")]
    Data {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    Store {
        path: PathBuf,
        source: sluice_blob::BlobError,
    },
    #[error("reloading upload sessions: {0}")]
    Sessions(std::io::Error),
    #[error("replication client: {0}")]
    Replication(reqwest::Error),
    #[error("listener: {0}")]
    Listener(std::io::Error),
}

/// A node's state and how it reaches its trackers, once its data directory is open.
pub struct OpenNode {
    pub state: StorageState,
    /// How it sends heartbeats: to its trackers, or (`serve`) to the embedded one.
    pub link: ClusterLink,
}

/// Opens the data directory (blob store, the node's lasting id, upload sessions) for a node
/// that will be reached at `listen_url` unless its membership advertises another.
pub async fn open(config: &NodeConfig, listen_url: &str) -> Result<OpenNode, StartError> {
    let (data, options) = (config.data.clone(), config.store.clone());
    let opened = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&data).map_err(|source| StartError::Data {
            path: data.clone(),
            source,
        })?;
        let store = BlobStore::open(&data, options).map_err(|source| StartError::Store {
            path: data.clone(),
            source,
        })?;
        let node_id = crate::cluster::node_id(&data).map_err(|source| StartError::Data {
            path: data.clone(),
            source,
        })?;
        Ok::<_, StartError>((store, node_id))
    })
    .await
    .map_err(|e| StartError::Data {
        path: config.data.clone(),
        source: std::io::Error::other(e.to_string()),
    })??;
    let (store, node_id) = opened;
    let membership = config.membership.as_ref();
    let advertise = membership
        .and_then(|m| m.advertise.clone())
        .unwrap_or_else(|| listen_url.to_owned());
    let mut storage = config.storage.clone();
    storage.node_id = Some(node_id.clone());
    let secret = storage.cluster.secret().cloned();
    let replication = match membership {
        None => None,
        Some(m) => {
            // Clients a tracker redirected here must come back here for their PATCHes.
            storage
                .progressive
                .public_url
                .get_or_insert_with(|| advertise.clone());
            Some(Arc::new(
                Replication::new(
                    ReplicationConfig {
                        min_copies: m.min_copies,
                        timeout: m.replication_timeout,
                        catch_up_interval: m.catch_up_interval,
                        secret: secret.clone(),
                        cursors_file: config.data.join("peers.json"),
                        trackers: m.trackers.clone(),
                    },
                    node_id.clone(),
                    advertise.clone(),
                )
                .map_err(StartError::Replication)?,
            ))
        }
    };
    let state = StorageState::with_replication(store, storage, replication)
        .map_err(StartError::Sessions)?;
    let link = ClusterLink {
        trackers: membership.map(|m| m.trackers.clone()).unwrap_or_default(),
        node_id,
        advertise,
        secret,
        interval: membership.map_or(Duration::from_secs(2), |m| m.heartbeat_interval),
        free_space_reserve: membership.map_or(0, |m| m.free_space_reserve),
    };
    Ok(OpenNode { state, link })
}

/// Starts the node's own workers: the upload watchdog, the scrub and the webhook sender; and,
/// for a member of a cluster, heartbeats and catch-up.
pub fn spawn_workers(node: &OpenNode, config: &NodeConfig, workers: &mut Workers) {
    let state = &node.state;
    workers.spawn("upload-watchdog", {
        let uploads = state.upload_context().clone();
        |stopping| crate::progressive::run_watchdog(uploads, stopping)
    });
    workers.spawn("scrub", {
        let (state, scrub) = (state.clone(), config.scrub.clone());
        |stopping| crate::scrub::run_scrub(state, scrub, stopping)
    });
    if let Some(sender) = state.events().take_webhook_sender() {
        workers.spawn("webhook", |stopping| sender.run(stopping));
    }
    if let Some(replication) = state.replication().cloned() {
        workers.spawn("heartbeats", {
            let (state, link) = (state.clone(), node.link.clone());
            |stopping| crate::cluster::run_heartbeats(state, link, stopping)
        });
        let (store, group) = (state.store().clone(), state.config().group.clone());
        let limit = state.config().max_upload_size;
        workers.spawn("catch-up", move |stopping| async move {
            replication
                .run_catch_up(store, group, limit, stopping)
                .await;
        });
    }
}

/// The parts of a node's service: its router, limits and workers, closing the store last.
pub fn parts(node: &OpenNode, config: &NodeConfig) -> RoleParts {
    let state = &node.state;
    let mut parts = RoleParts::new(
        crate::router(state.clone()),
        state.config().http.clone(),
        config.shutdown,
    );
    spawn_workers(node, config, &mut parts.workers);
    let store = state.store().clone();
    parts.close = Box::pin(async move { store.close().await });
    parts
}

/// Opens the node and serves it on `listener` until `shutdown` resolves (see
/// [`sluice_http::role::run`] for the order things stop in).
pub async fn start(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running<StorageState>, StartError> {
    let listen = listener.local_addr().map_err(StartError::Listener)?;
    let node = open(&config, &format!("http://{listen}")).await?;
    let parts = parts(&node, &config);
    let store = node.state.store();
    tracing::info!(
        http = %format!("http://{listen}"),
        advertise = %node.link.advertise,
        node = %node.link.node_id,
        group = %node.state.config().group,
        trackers = ?node.link.trackers,
        files = store.files(),
        workers = ?parts.workers.names(),
        "storage node is ready"
    );
    sluice_http::role::run(listener, parts, node.state, shutdown).map_err(StartError::Listener)
}
