//! `sluice storage`: one storage node of a group, registered with the trackers.

use std::time::Duration;

use anyhow::Context;
use std::sync::Arc;

use sluice_storage::cluster::{self, ClusterLink};
use sluice_storage::replication::{Replication, ReplicationConfig};
use tokio::net::TcpListener;

use crate::cli::StorageArgs;
use crate::config::ServeConfig;
use crate::roles::{
    Background, cluster_access, init_logging, open_store, scrub_config, serve_until_signal,
    storage_state,
};

pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    init_logging();
    let cluster = cluster_access("storage node", args.insecure_no_cluster_secret, true)?;
    let config = ServeConfig::load_storage(&args)?;
    let store = open_store(&config).await?;
    let node_id = cluster::node_id(&config.raw.data).context("node id")?;
    let listener = TcpListener::bind(config.raw.http)
        .await
        .with_context(|| format!("listening on {}", config.raw.http))?;
    let addr = listener.local_addr()?;
    let advertise = config
        .raw
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let replication = Arc::new(
        Replication::new(
            ReplicationConfig {
                min_copies: config.raw.min_copies,
                timeout: Duration::from_millis(config.raw.replication_timeout_ms),
                catch_up_interval: Duration::from_millis(config.raw.catch_up_interval_ms),
                secret: cluster.secret().cloned(),
                cursors_file: config.raw.data.join("peers.json"),
                trackers: config.raw.trackers.clone(),
            },
            node_id.clone(),
            advertise.clone(),
        )
        .context("replication client")?,
    );
    let mut config = config;
    // Clients redirected here by a tracker must come back here for their upload's PATCHes.
    config.raw.advertise = Some(advertise.clone());
    let secret = cluster.secret().cloned();
    let state = storage_state(
        &config,
        store.clone(),
        cluster,
        &node_id,
        Some(replication.clone()),
    )?;
    let link = ClusterLink {
        trackers: config.raw.trackers.clone(),
        node_id,
        advertise,
        secret,
        interval: Duration::from_millis(config.raw.heartbeat_interval_ms),
        free_space_reserve: config.raw.free_space_reserve.0,
    };
    tracing::info!(
        http = %format!("http://{addr}"),
        advertise = %link.advertise,
        node = %link.node_id,
        group = %config.group,
        trackers = ?link.trackers,
        files = store.files(),
        "sluice storage is ready"
    );
    let mut background = Background::new();
    {
        let (store, group, stopped) = (store.clone(), config.group.clone(), background.stopped());
        let limit = config.raw.max_upload_size.0;
        background
            .spawn(async move { replication.run_catch_up(store, group, limit, stopped).await });
    }
    background.spawn(cluster::run_heartbeats(
        state.clone(),
        link,
        background.stopped(),
    ));
    background.spawn(sluice_storage::progressive::run_watchdog(
        state.clone(),
        background.stopped(),
    ));
    background.spawn(sluice_storage::scrub::run_scrub(
        state.clone(),
        scrub_config(&config),
        background.stopped(),
    ));
    let result = serve_until_signal(
        Duration::from_secs(config.raw.shutdown_grace_secs),
        move |stop| {
            sluice_storage::run(listener, state, async move {
                let _ = stop.await;
            })
        },
    )
    .await;
    background.stop().await;
    store.close().await;
    tracing::info!("stopped");
    result
}
