//! `sluice edge`: a caching proxy near users, in front of an origin.

use std::time::Duration;

use sluice_edge::{EdgeConfig, EdgeStart};

use crate::cli::EdgeArgs;
use crate::roles::{bind, init_logging, shutdown_requested, until_stopped};

pub async fn run(args: EdgeArgs) -> anyhow::Result<()> {
    init_logging();
    anyhow::ensure!(args.cache_size.0 > 0, "--cache-size must be more than 0");
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    let config = EdgeConfig {
        origin: args.origin.clone(),
        trackers: args.trackers.clone(),
        cache_size: args.cache_size.0,
        region: args.region.clone(),
        access: crate::roles::access_policy(),
        active_content: if args.active_content_inline {
            sluice_http::ActiveContent::Inline
        } else {
            sluice_http::ActiveContent::Attachment
        },
        cors: sluice_http::CorsPolicy::AnyOrigin,
        http: sluice_http::HttpLimits {
            max_connections: args.max_connections,
            ..sluice_http::HttpLimits::default()
        },
        cluster: crate::roles::cluster_access("edge", args.insecure_no_cluster_secret, true)?,
        hot_cache: sluice_blob::HotCacheLimits {
            capacity: args.hot_cache_size.0,
            ..sluice_blob::HotCacheLimits::default()
        },
    };
    let listener = bind(args.http, "HTTP").await?;
    let start = EdgeStart {
        cache_dir: args.cache.clone(),
        config,
        advertise: args.advertise.clone(),
        heartbeat_interval: Duration::from_secs(2),
        shutdown: sluice_http::ShutdownLimits::default(),
    };
    let running = sluice_edge::start(listener, start, shutdown_requested()).await?;
    until_stopped(running).await
}
