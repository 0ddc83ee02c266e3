//! `sluice serve`: every role this build has, in one process, on one data directory: a storage
//! node of one group, a tracker that knows just that node (so `GET /v1/cluster` and
//! `GET /v1/assign` answer as they do in a cluster), and with `--rtmp` the live role. Each
//! role contributes its router and workers; they share one HTTP server.

use anyhow::Context;
use sluice_tracker::{Placement, TrackerConfig, TrackerState};

use crate::cli::ServeCmd;
use crate::config::ServeConfig;
use crate::roles::{bind, init_logging, shutdown_requested, until_stopped};

pub async fn run(args: ServeCmd) -> anyhow::Result<()> {
    init_logging();
    let mut config = ServeConfig::load(&args.node)?;
    if args.rtmp.is_some() {
        config.raw.live.rtmp = args.rtmp;
    }
    if args.record {
        config.raw.live.record = true;
    }
    // Without a cluster secret, serve takes no registrations and serves no internal route:
    // it needs none to work alone.
    let cluster = sluice_http::ClusterAccess::from_secret(
        crate::roles::cluster_secret(),
        sluice_http::ClusterAccess::Closed,
    );
    let listener = bind(config.raw.node.http, "HTTP").await?;
    let addr = listener.local_addr()?;
    let url = format!("http://{addr}");
    let mut node_config = config.node(cluster.clone());
    // A node on its own: its embedded tracker hears from it directly, not over HTTP.
    node_config.membership = None;
    node_config.storage.role = "serve";
    let node = sluice_storage::node::open(&node_config, &url).await?;
    let mut parts = sluice_storage::node::parts(&node, &node_config);

    let interval = config.raw.node.heartbeat_interval.0;
    let tracker = TrackerState::new(TrackerConfig {
        offline_after: interval * 3,
        placement: Placement::MostFree,
        cluster,
        members_file: None,
        access: crate::roles::access_policy(),
        cors: sluice_http::CorsPolicy::AnyOrigin,
        http: config.raw.http.limits(),
        regions: config.raw.routing.regions()?,
        trusted_proxies: crate::config::parse_prefixes(&config.raw.routing.trusted_proxies)?,
    })?;
    let mut link = node.link.clone();
    link.advertise = config
        .raw
        .node
        .advertise
        .clone()
        .unwrap_or_else(|| url.clone());
    link.interval = interval;
    link.free_space_reserve = config.raw.node.free_space_reserve.0;
    parts.workers.spawn("embedded-heartbeats", {
        let (state, tracker) = (node.state.clone(), tracker.clone());
        move |stopping| {
            let deliver = move |beat| {
                tracker.registry().heartbeat(beat);
            };
            sluice_storage::cluster::run_local_heartbeats(state, link, deliver, stopping)
        }
    });

    let live = live_state(&config, &url)?;
    let rtmp_addr = match config.raw.live.rtmp {
        None => None,
        Some(addr) => {
            let rtmp = bind(addr, "RTMP").await?;
            let bound = rtmp.local_addr()?;
            sluice_live::spawn_workers(&live, rtmp, &mut parts.first);
            Some(bound)
        }
    };
    tracing::info!(
        http = %url,
        console = %format!("{url}/console/"),
        rtmp = %rtmp_addr.map(|a| format!("rtmp://{a}")).unwrap_or_else(|| "off".into()),
        data = %config.raw.node.data.display(),
        group = %config.group,
        files = node.state.store().files(),
        workers = ?parts.workers.names(),
        "sluice serve is ready"
    );
    if !addr.ip().is_loopback() && crate::roles::access_policy().api_tokens.is_none() {
        tracing::warn!(
            "listening on {addr}, beyond loopback, with no API token: anyone who can reach it can upload and delete"
        );
    }
    parts.router = parts
        .router
        .merge(sluice_tracker::cluster_routes(tracker.config()).with_state(tracker.clone()))
        .merge(sluice_live::routes(live));
    let running = sluice_http::role::run(listener, parts, node.state, shutdown_requested())?;
    until_stopped(running).await
}

/// The live role's state; with recording, recordings are uploaded to this very server, like
/// any other file.
fn live_state(
    config: &crate::config::serve::ValidServeConfig,
    url: &str,
) -> anyhow::Result<sluice_live::LiveState> {
    let live_config = config.live();
    if !config.raw.live.record {
        return Ok(sluice_live::LiveState::new(live_config));
    }
    let store =
        sluice_client::cluster::Endpoint::new(Some(url), &[], crate::client_cmds::api_token())
            .context("recording upload client")?;
    let record = sluice_live::record::RecordConfig {
        dir: config.raw.node.data.join("live"),
        store,
    };
    sluice_live::LiveState::with_recording(live_config, record).context("recordings")
}
