//! `sluice live`: the live role alone (RTMP in; RTMP, HTTP-FLV and HLS out).

use anyhow::Context;

use crate::cli::LiveArgs;
use crate::config::{ConfigFile, LiveRoleKeys};
use crate::roles::{bind, init_logging, shutdown_requested, until_stopped};

pub async fn run(args: LiveArgs) -> anyhow::Result<()> {
    init_logging();
    let keys = keys(&args)?;
    // Live servers join the cluster's trust like every other role (recordings go to its
    // storage; streams will be relayed through its edges).
    crate::roles::cluster_access("live server", args.insecure_no_cluster_secret, false)?;
    let config = sluice_live::LiveConfig {
        http: keys.http.limits(),
        ..keys.live.live_config()
    };
    let live = if keys.live.record {
        let store = sluice_client::cluster::Endpoint::new(
            None,
            &keys.place.trackers,
            crate::client_cmds::api_token(),
        )
        .context("trackers")?;
        let record = sluice_live::record::RecordConfig {
            dir: keys.place.data.clone(),
            store,
        };
        sluice_live::LiveState::with_recording(config, record).context("recordings")?
    } else {
        sluice_live::LiveState::new(config)
    };
    let rtmp_addr = keys
        .live
        .rtmp
        .unwrap_or_else(|| std::net::SocketAddr::from(([127, 0, 0, 1], 1935)));
    let rtmp = bind(rtmp_addr, "RTMP").await?;
    let http = bind(keys.place.http, "HTTP").await?;
    let running = sluice_live::start(http, rtmp, live, keys.http.shutdown(), shutdown_requested())?;
    until_stopped(running).await
}

/// The file's `[live]`, then flags.
fn keys(args: &LiveArgs) -> anyhow::Result<LiveRoleKeys> {
    let file = ConfigFile::read(args.config.as_deref())?;
    let mut keys = LiveRoleKeys::from_table(file.section("live"), &file.at("live"))?;
    if let Some(v) = args.rtmp {
        keys.live.rtmp = Some(v);
    }
    if let Some(v) = args.http {
        keys.place.http = v;
    }
    if !args.trackers.is_empty() {
        keys.place.trackers = args.trackers.clone();
    }
    if let Some(v) = &args.data {
        keys.place.data = v.clone();
    }
    if args.record {
        keys.live.record = true;
    }
    keys.validate()?;
    Ok(keys)
}
