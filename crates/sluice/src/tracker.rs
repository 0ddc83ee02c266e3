//! `sluice tracker`: the registry of storage nodes, upload placement and read routing.

use std::time::Duration;

use anyhow::Context;
use sluice_tracker::{Placement, TrackerConfig, TrackerState};

use crate::cli::{PlacementArg, TrackerArgs};
use crate::roles::{bind, init_logging, shutdown_requested, until_stopped};

pub async fn run(args: TrackerArgs) -> anyhow::Result<()> {
    init_logging();
    let cluster = crate::roles::cluster_access("tracker", args.insecure_no_cluster_secret, true)?;
    anyhow::ensure!(
        args.offline_after_ms >= 100,
        "--offline-after-ms must be at least 100"
    );
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("data directory {}", args.data.display()))?;
    let regions = crate::config::parse_regions(
        args.region_map
            .iter()
            .map(|pair| pair.split_once('=').unwrap_or((pair.as_str(), ""))),
    )
    .context("--region-map PREFIX=REGION")?;
    let trusted_proxies =
        crate::config::parse_prefixes(&args.trusted_proxies).context("--trusted-proxy")?;
    let state = TrackerState::new(TrackerConfig {
        offline_after: Duration::from_millis(args.offline_after_ms),
        placement: match args.placement {
            PlacementArg::MostFree => Placement::MostFree,
            PlacementArg::RoundRobin => Placement::RoundRobin,
        },
        cluster,
        members_file: Some(args.data.join("members.json")),
        access: crate::roles::access_policy(),
        cors: sluice_http::CorsPolicy::AnyOrigin,
        http: sluice_http::HttpLimits::default(),
        regions,
        trusted_proxies,
    });
    let listener = bind(args.http, "HTTP").await?;
    let shutdown = sluice_http::ShutdownLimits {
        grace: Duration::from_secs(10),
        ..Default::default()
    };
    let running = sluice_tracker::start(listener, state, shutdown, shutdown_requested())?;
    until_stopped(running).await
}
