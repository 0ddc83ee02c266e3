//! `sluice edge`: a caching proxy near users, in front of an origin.

use sluice_edge::{EdgeConfig, EdgeStart};

use crate::cli::EdgeArgs;
use crate::config::{ConfigFile, EdgeKeys};
use crate::roles::{bind, init_logging, shutdown_requested, until_stopped};

pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    init_logging();
    let keys = keys(&args)?;
    let place = &keys.place;
    let config = EdgeConfig {
        origin: place.origin.clone().unwrap_or_default(),
        trackers: place.trackers.clone(),
        cache_size: place.cache_size.0,
        region: place.region.clone(),
        access: crate::roles::access_policy(),
        active_content: if place.active_content_inline {
            sluice_http::ActiveContent::Inline
        } else {
            sluice_http::ActiveContent::Attachment
        },
        cors: sluice_http::CorsPolicy::AnyOrigin,
        http: keys.http.limits(),
        cluster: crate::roles::cluster_access("edge", args.insecure_no_cluster_secret, true)?,
        hot_cache: sluice_blob::HotCacheLimits {
            capacity: place.hot_cache_size.0,
            ..sluice_blob::HotCacheLimits::default()
        },
    };
    let listener = bind(place.http, "HTTP").await?;
    let start = EdgeStart {
        cache_dir: place.cache.clone(),
        config,
        advertise: place.advertise.clone(),
        heartbeat_interval: place.heartbeat_interval.0,
        shutdown: keys.http.shutdown(),
    };
    let running = sluice_edge::start(listener, start, shutdown_requested()).await?;
    until_stopped(running).await
}

/// The file's `[edge]`, then flags.
fn keys(args: &EdgeArgs) -> anyhow::Result<EdgeKeys> {
    let file = ConfigFile::read(args.config.as_deref())?;
    let mut keys = EdgeKeys::from_table(file.section("edge"), &file.at("edge"))?;
    let place = &mut keys.place;
    if let Some(v) = &args.origin {
        place.origin = Some(v.clone());
    }
    if let Some(v) = args.http {
        place.http = v;
    }
    if let Some(v) = &args.cache {
        place.cache = v.clone();
    }
    if let Some(v) = args.cache_size {
        place.cache_size = v;
    }
    if let Some(v) = &args.region {
        place.region = Some(v.clone());
    }
    if !args.trackers.is_empty() {
        place.trackers = args.trackers.clone();
    }
    if let Some(v) = &args.advertise {
        place.advertise = Some(v.clone());
    }
    if let Some(v) = args.hot_cache_size {
        place.hot_cache_size = v;
    }
    if args.active_content_inline {
        place.active_content_inline = true;
    }
    if let Some(v) = args.max_connections {
        keys.http.max_connections = v;
    }
    keys.validate()?;
    Ok(keys)
}
