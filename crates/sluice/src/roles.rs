//! What every role's command shares: logging, signals, opening a storage node, and serving
//! until SIGTERM/Ctrl-C with a bounded drain.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use sluice_storage::{BlobStore, StorageConfig, StorageState};

use crate::config::ValidServeConfig;

/// Opens (or creates) the data directory's blob store.
pub async fn open_store(config: &ValidServeConfig) -> anyhow::Result<BlobStore> {
    let data = config.raw.data.clone();
    let options = config.blob.clone();
    tokio::task::spawn_blocking(move || BlobStore::open(&data, options))
        .await
        .context("opening the data directory")?
        .with_context(|| format!("data directory {}", config.raw.data.display()))
}

/// The storage node's state over an open store.
pub fn storage_state(
    config: &ValidServeConfig,
    store: BlobStore,
    cluster: sluice_http::ClusterAccess,
    node_id: &str,
    replication: Option<std::sync::Arc<sluice_storage::replication::Replication>>,
) -> anyhow::Result<StorageState> {
    let state = StorageState::with_replication(
        store,
        StorageConfig {
            group: config.group.clone(),
            max_upload_size: config.raw.max_upload_size.0,
            body_idle_timeout: Duration::from_secs(config.raw.body_idle_timeout_secs),
            http: config.http_limits(),
            cluster,
            node_id: Some(node_id.to_owned()),
            capacity: config.raw.capacity.map(|c| c.0),
            access: access_policy(),
            active_content: config.active_content(),
            cors: sluice_http::CorsPolicy::from_list(&config.raw.cors_origins),
            progressive: config.progressive(),
            webhook: config.webhook(),
        },
        replication,
    )
    .context("reloading upload sessions")?;
    Ok(state)
}

/// `SLUICE_URL_SECRET` and `SLUICE_API_TOKEN` from the environment: comma-separated lists,
/// the first signs, all verify.
pub fn access_policy() -> sluice_http::AccessPolicy {
    let list = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| sluice_proto::SecretSet::parse(&v))
    };
    sluice_http::AccessPolicy {
        url_secret: list("SLUICE_URL_SECRET"),
        api_tokens: list("SLUICE_API_TOKEN"),
    }
}

/// `SLUICE_CLUSTER_SECRET`: a comma-separated list; the first is sent, all are accepted.
pub fn cluster_secret() -> Option<sluice_proto::SecretSet> {
    std::env::var("SLUICE_CLUSTER_SECRET")
        .ok()
        .and_then(|v| sluice_proto::SecretSet::parse(&v))
}

/// How a cluster role (`tracker`, `storage`, `edge`, `live`) admits cluster calls: with the
/// cluster secret, or, only when asked for by `--insecure-no-cluster-secret`, from anyone.
/// `serves_cluster_routes`: whether the role has routes that open mode would open (beside a
/// URL secret or API token they would be the way round them, so that is refused).
pub fn cluster_access(
    role: &str,
    insecure: bool,
    serves_cluster_routes: bool,
) -> anyhow::Result<sluice_http::ClusterAccess> {
    if let Some(secret) = cluster_secret() {
        return Ok(sluice_http::ClusterAccess::Secret(secret));
    }
    anyhow::ensure!(
        insecure,
        "SLUICE_CLUSTER_SECRET is not set: without it anyone who reaches this {role} could join \
         the cluster, register nodes or edges, or read and write files around every other \
         secret. Set it (the same value on every tracker, node, edge and live server), or pass \
         --insecure-no-cluster-secret for a lab"
    );
    let access = access_policy();
    anyhow::ensure!(
        !serves_cluster_routes || (access.url_secret.is_none() && access.api_tokens.is_none()),
        "--insecure-no-cluster-secret cannot be used with SLUICE_URL_SECRET or SLUICE_API_TOKEN: \
         open cluster routes would be the way round them; set SLUICE_CLUSTER_SECRET"
    );
    tracing::warn!(
        "INSECURE: running without SLUICE_CLUSTER_SECRET (--insecure-no-cluster-secret): anyone \
         who can reach this {role} can register nodes and edges and read and write every file \
         through the cluster routes; use this in a lab only"
    );
    Ok(sluice_http::ClusterAccess::Open)
}

/// The background tasks of a role, stopped together at shutdown.
pub struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Background {
    pub fn new() -> Self {
        Self {
            stop: tokio::sync::watch::channel(false).0,
            tasks: Vec::new(),
        }
    }

    /// A future that resolves when [`Background::stop`] is called; hand one to each task.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.stop.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Tells every task to stop and waits for them.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

/// The scrub settings from config.
pub fn scrub_config(config: &ValidServeConfig) -> sluice_storage::scrub::ScrubConfig {
    sluice_storage::scrub::ScrubConfig {
        interval: Duration::from_secs(config.raw.scrub_interval_secs),
        bytes_per_sec: config.raw.scrub_bytes_per_sec.0,
    }
}

/// Runs `server` (which stops accepting when its shutdown future resolves) until a signal,
/// then gives requests in flight `grace` to finish.
pub async fn serve_until_signal<F, Fut>(grace: Duration, server: F) -> anyhow::Result<()>
where
    F: FnOnce(tokio::sync::oneshot::Receiver<()>) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut task = tokio::spawn(server(stop_rx));
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, grace_secs = grace.as_secs(), "shutting down: finishing requests in flight");
            let _ = stop_tx.send(());
        }
        ended = &mut task => {
            return match ended {
                Ok(result) => result.context("HTTP server"),
                Err(e) => Err(e).context("HTTP server task"),
            };
        }
    }
    match tokio::time::timeout(grace, &mut task).await {
        Ok(Ok(result)) => result.context("HTTP server"),
        Ok(Err(e)) => Err(e).context("HTTP server task"),
        Err(_) => {
            tracing::warn!(
                "requests still running after the grace period; stopping them (their uploads leave nothing behind)"
            );
            task.abort();
            Ok(())
        }
    }
}

/// Resolves with the name of the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
