//! `sluice serve`: every role this build has, in one process, on one data directory: a storage
//! node of one group, and a tracker that knows just that node (so `GET /v1/cluster` and
//! `GET /v1/assign` answer as they do in a cluster).

use std::time::Duration;

use anyhow::Context;
use sluice_storage::cluster::{self, ClusterLink};
use sluice_tracker::{Placement, TrackerConfig, TrackerState};
use tokio::net::TcpListener;

use crate::cli::ServeCmd;
use crate::config::ServeConfig;
use crate::roles::{
    Background, init_logging, open_store, scrub_config, serve_until_signal, storage_state,
};

pub async fn run(args: ServeCmd) -> anyhow::Result<()> {
    init_logging();
    let mut config = ServeConfig::load(&args.node)?;
    if args.rtmp.is_some() {
        config.raw.rtmp = args.rtmp;
    }
    if args.record {
        config.raw.record = true;
    }
    // Without a cluster secret, serve takes no registrations and serves no internal route:
    // it needs none to work alone.
    let cluster = sluice_http::ClusterAccess::from_secret(
        crate::roles::cluster_secret(),
        sluice_http::ClusterAccess::Closed,
    );
    let store = open_store(&config).await?;
    let node_id = cluster::node_id(&config.raw.data).context("node id")?;
    let state = storage_state(&config, store, cluster.clone(), &node_id, None)?;
    let store = state.store().clone();
    let listener = TcpListener::bind(config.raw.http)
        .await
        .with_context(|| format!("listening on {}", config.raw.http))?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");

    // The embedded tracker hears from the embedded node directly, not over HTTP.
    let interval = Duration::from_millis(config.raw.heartbeat_interval_ms);
    let tracker = TrackerState::new(TrackerConfig {
        offline_after: interval * 3,
        placement: Placement::MostFree,
        cluster,
        members_file: None,
        access: crate::roles::access_policy(),
        cors: sluice_http::CorsPolicy::AnyOrigin,
        http: config.http_limits(),
        regions: crate::config::parse_regions(
            config
                .raw
                .regions
                .iter()
                .map(|(p, r)| (p.as_str(), r.as_str())),
        )?,
        trusted_proxies: crate::config::parse_prefixes(&config.raw.trusted_proxies)?,
    });
    let link = ClusterLink {
        trackers: Vec::new(),
        node_id,
        advertise: config.raw.advertise.clone().unwrap_or_else(|| url.clone()),
        secret: None,
        interval,
        free_space_reserve: config.raw.free_space_reserve.0,
    };
    let mut background = Background::new();
    {
        let (state, tracker, stopped) = (state.clone(), tracker.clone(), background.stopped());
        background.spawn(async move {
            let mut stopped = std::pin::pin!(stopped);
            let mut ticks = tokio::time::interval(link.interval);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {
                        tracker.registry().heartbeat(cluster::heartbeat(&state, &link));
                    }
                    () = &mut stopped => return,
                }
            }
        });
    }
    background.spawn(sluice_storage::progressive::run_watchdog(
        state.clone(),
        background.stopped(),
    ));
    background.spawn(sluice_storage::scrub::run_scrub(
        state.clone(),
        scrub_config(&config),
        background.stopped(),
    ));

    // Live streaming, when an RTMP address is configured.
    let live_config = config.live();
    let live = if config.raw.record {
        // Recordings are uploaded to this very server, like any other file.
        let store =
            sluice_client::cluster::Endpoint::new(Some(&url), &[], crate::client_cmds::api_token())
                .context("recording upload client")?;
        let record = sluice_live::record::RecordConfig {
            dir: config.raw.data.join("live"),
            store,
        };
        sluice_live::LiveState::with_recording(live_config, record).context("recordings")?
    } else {
        sluice_live::LiveState::new(live_config)
    };
    let rtmp_addr = match config.raw.rtmp {
        None => None,
        Some(addr) => {
            let rtmp = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening for RTMP on {addr}"))?;
            let bound = rtmp.local_addr()?;
            background.spawn({
                let (live, stopped) = (live.clone(), background.stopped());
                async move {
                    if let Err(e) = sluice_live::run_rtmp(rtmp, live, stopped).await {
                        tracing::error!(error = %e, "RTMP listener failed");
                    }
                }
            });
            Some(bound)
        }
    };
    tracing::info!(
        http = %url,
        rtmp = %rtmp_addr.map(|a| format!("rtmp://{a}")).unwrap_or_else(|| "off".into()),
        data = %config.raw.data.display(),
        group = %config.group,
        files = store.files(),
        "sluice serve is ready"
    );
    if !addr.ip().is_loopback() && crate::roles::access_policy().api_tokens.is_none() {
        tracing::warn!(
            "listening on {addr}, beyond loopback, with no API token: anyone who can reach it can upload and delete"
        );
    }
    let router = sluice_storage::router(state)
        .merge(sluice_tracker::cluster_routes().with_state(tracker))
        .merge(sluice_live::routes(live));
    let limits = config.http_limits();
    serve_until_signal(
        Duration::from_secs(config.raw.shutdown_grace_secs),
        move |stop| {
            sluice_http::serve(listener, router, limits, async move {
                let _ = stop.await;
            })
        },
    )
    .await?;
    background.stop().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}
