//! `sluice live`: the live role alone (RTMP in; RTMP, HTTP-FLV and HLS out).

use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::cli::LiveArgs;
use crate::roles::{Background, init_logging, serve_until_signal};

pub async fn run(args: LiveArgs) -> anyhow::Result<()> {
    init_logging();
    // Live servers join the cluster's trust like every other role (recordings go to its
    // storage; streams will be relayed through its edges).
    crate::roles::cluster_access("live server", args.insecure_no_cluster_secret, false)?;
    let config = sluice_live::LiveConfig {
        access: crate::roles::access_policy(),
        ..sluice_live::LiveConfig::default()
    };
    let live = if args.record {
        anyhow::ensure!(
            !args.trackers.is_empty(),
            "--record needs --tracker (where recordings are stored)"
        );
        let store = sluice_client::cluster::Endpoint::new(
            None,
            &args.trackers,
            crate::client_cmds::api_token(),
        )
        .context("trackers")?;
        let record = sluice_live::record::RecordConfig {
            dir: args.data.clone(),
            store,
        };
        sluice_live::LiveState::with_recording(config, record).context("recordings")?
    } else {
        sluice_live::LiveState::new(config)
    };
    let rtmp = TcpListener::bind(args.rtmp)
        .await
        .with_context(|| format!("listening for RTMP on {}", args.rtmp))?;
    let http = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("listening on {}", args.http))?;
    tracing::info!(
        http = %format!("http://{}", http.local_addr()?),
        rtmp = %format!("rtmp://{}", rtmp.local_addr()?),
        trackers = ?args.trackers,
        "sluice live is ready"
    );
    let mut background = Background::new();
    background.spawn({
        let (live, stopped) = (live.clone(), background.stopped());
        async move {
            if let Err(e) = sluice_live::run_rtmp(rtmp, live, stopped).await {
                tracing::error!(error = %e, "RTMP listener failed");
            }
        }
    });
    let router = sluice_live::routes(live).route(
        "/healthz",
        axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
    );
    let result = serve_until_signal(Duration::from_secs(10), move |stop| {
        sluice_http::serve(
            http,
            router,
            sluice_http::HttpLimits::default(),
            async move {
                let _ = stop.await;
            },
        )
    })
    .await;
    background.stop().await;
    result
}
