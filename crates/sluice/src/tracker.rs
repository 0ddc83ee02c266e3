//! `sluice tracker`: the registry of storage nodes, upload placement and read routing.

use anyhow::Context;
use sluice_tracker::{Placement, TrackerConfig, TrackerState};

use crate::cli::{PlacementArg, TrackerArgs};
use crate::config::{ConfigFile, TrackerKeys};
use crate::roles::{bind, init_logging, shutdown_requested, until_stopped};

pub async fn run(args: TrackerArgs) -> anyhow::Result<()> {
    init_logging();
    let keys = keys(&args)?;
    let cluster = crate::roles::cluster_access("tracker", args.insecure_no_cluster_secret, true)?;
    std::fs::create_dir_all(&keys.place.data)
        .with_context(|| format!("data directory {}", keys.place.data.display()))?;
    let state = TrackerState::new(TrackerConfig {
        offline_after: keys.place.offline_after.0,
        placement: keys.place.placement,
        cluster,
        members_file: Some(keys.place.data.join("members.json")),
        access: crate::roles::access_policy(),
        cors: sluice_http::CorsPolicy::AnyOrigin,
        http: keys.http.limits(),
        regions: keys.routing.regions()?,
        trusted_proxies: crate::config::parse_prefixes(&keys.routing.trusted_proxies)?,
    })
    .context("the members file holds the retired nodes; restore it from a backup, or move it away to start with no retirements")?;
    let listener = bind(keys.place.http, "HTTP").await?;
    let running =
        sluice_tracker::start(listener, state, keys.http.shutdown(), shutdown_requested())?;
    until_stopped(running).await
}

/// The file's `[tracker]`, then flags.
fn keys(args: &TrackerArgs) -> anyhow::Result<TrackerKeys> {
    let file = ConfigFile::read(args.config.as_deref())?;
    let mut keys = TrackerKeys::from_table(file.section("tracker"), &file.at("tracker"))?;
    let place = &mut keys.place;
    if let Some(v) = args.http {
        place.http = v;
    }
    if let Some(v) = &args.data {
        place.data = v.clone();
    }
    if let Some(v) = args.offline_after_ms {
        place.offline_after = sluice_proto::TimeSpan(std::time::Duration::from_millis(v));
    }
    if let Some(v) = args.placement {
        place.placement = match v {
            PlacementArg::MostFree => Placement::MostFree,
            PlacementArg::RoundRobin => Placement::RoundRobin,
        };
    }
    if !args.region_map.is_empty() {
        keys.routing.regions = args
            .region_map
            .iter()
            .map(|pair| {
                let (prefix, region) = pair.split_once('=').unwrap_or((pair.as_str(), ""));
                (prefix.to_owned(), region.to_owned())
            })
            .collect();
    }
    if !args.trusted_proxies.is_empty() {
        keys.routing.trusted_proxies = args.trusted_proxies.clone();
    }
    keys.validate()?;
    Ok(keys)
}
