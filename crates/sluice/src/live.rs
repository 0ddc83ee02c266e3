//! `sluice live`: the live role alone (RTMP in; RTMP, HTTP-FLV and HLS out).

use std::time::Duration;

use anyhow::Context;

use crate::cli::LiveArgs;
use crate::roles::{bind, init_logging, shutdown_requested, until_stopped};

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
    let rtmp = bind(args.rtmp, "RTMP").await?;
    let http = bind(args.http, "HTTP").await?;
    let shutdown = sluice_http::ShutdownLimits {
        grace: Duration::from_secs(10),
        ..Default::default()
    };
    let running = sluice_live::start(http, rtmp, live, shutdown, shutdown_requested())?;
    until_stopped(running).await
}
