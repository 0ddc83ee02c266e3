//! `sluice edge`: a caching proxy near users, in front of an origin.

use std::time::Duration;

use anyhow::Context;
use sluice_edge::{EdgeConfig, EdgeState};
use tokio::net::TcpListener;

use crate::cli::EdgeArgs;
use crate::roles::{Background, init_logging, serve_until_signal};

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
    let cache = args.cache.clone();
    let state = tokio::task::spawn_blocking(move || EdgeState::open(&cache, config))
        .await
        .context("opening the cache")??;
    let listener = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("listening on {}", args.http))?;
    let addr = listener.local_addr()?;
    let advertise = args
        .advertise
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    tracing::info!(
        http = %format!("http://{addr}"),
        origin = %args.origin,
        cache = %args.cache.display(),
        cached_files = state.cache().files(),
        region = args.region.as_deref().unwrap_or("-"),
        "sluice edge is ready"
    );
    let mut background = Background::new();
    if !args.trackers.is_empty() {
        background.spawn(sluice_edge::registration::run(
            state.clone(),
            sluice_edge::registration::Registration {
                trackers: args.trackers.clone(),
                advertise,
                interval: Duration::from_secs(2),
            },
            background.stopped(),
        ));
    }
    let store = state.store().clone();
    let result = serve_until_signal(Duration::from_secs(30), move |stop| {
        sluice_edge::run(listener, state, async move {
            let _ = stop.await;
        })
    })
    .await;
    background.stop().await;
    store.close().await;
    tracing::info!("stopped");
    result
}
