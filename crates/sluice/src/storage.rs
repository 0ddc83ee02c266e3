//! `sluice storage`: one storage node of a group, registered with the trackers.

use crate::cli::StorageArgs;
use crate::config::ServeConfig;
use crate::roles::{bind, cluster_access, init_logging, shutdown_requested, until_stopped};

pub async fn run(args: StorageArgs) -> anyhow::Result<()> {
    init_logging();
    let config = ServeConfig::load_storage(&args)?;
    let cluster = cluster_access("storage node", args.insecure_no_cluster_secret, true)?;
    let listener = bind(config.raw.node.http, "HTTP").await?;
    let running =
        sluice_storage::start(listener, config.node(cluster), shutdown_requested()).await?;
    until_stopped(running).await
}
