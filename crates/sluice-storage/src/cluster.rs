//! A storage node's place in a cluster: its lasting identity, and the heartbeats that tell
//! every tracker it is alive, where to reach it, and how full it is.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::time::Duration;

use sluice_proto::SecretSet;
use sluice_proto::cluster::{CLUSTER_SECRET_HEADER, Heartbeat, HeartbeatAnswer, NodeState};

use crate::StorageState;

/// How this node talks to the trackers.
#[derive(Debug, Clone)]
pub struct ClusterLink {
    pub trackers: Vec<String>,
    pub node_id: String,
    /// The URL clients and peers should use (`--advertise`, default the listen address).
    pub advertise: String,
    pub secret: Option<SecretSet>,
    pub interval: Duration,
    /// Free bytes the node keeps back; below it, it asks for no more uploads.
    pub free_space_reserve: u64,
}

/// Reads the node's id from `DATA/NODE_ID`, creating it (random, durable) on first start, so a
/// node keeps its identity across restarts and address changes.
pub fn node_id(data: &Path) -> std::io::Result<String> {
    Ok(sluice_state::load_or_create_id(
        &data.join("NODE_ID"),
        new_id,
        |id| sluice_proto::BlobKey::parse(id).is_ok(),
    )?)
}

/// A fresh random id (as unguessable as a file id's key).
pub fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; sluice_proto::fileid::KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(sluice_proto::BlobKey::from_bytes(bytes).to_string())
}

/// What this node would say in a heartbeat now.
pub fn heartbeat(state: &StorageState, link: &ClusterLink) -> Heartbeat {
    let store = state.store();
    let disk_free = store.free_bytes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "cannot read free space; reporting none");
        0
    });
    let room = state
        .config()
        .capacity
        .map_or(u64::MAX, |c| c.saturating_sub(store.bytes()));
    let free_bytes = disk_free.min(room);
    Heartbeat {
        node_id: link.node_id.clone(),
        group: state.config().group.to_string(),
        url: link.advertise.clone(),
        state: state.replication().map_or(NodeState::Active, |r| r.state()),
        files: store.files(),
        bytes: store.bytes(),
        free_bytes,
        // A store whose index writes fail (its disk filled) takes no uploads until they work.
        writable: free_bytes > link.free_space_reserve && store.write_trouble().is_none(),
        sync_lag: state.replication().map_or(0, |r| r.sync_lag()),
        catch_up_pending: state.replication().map_or(0, |r| r.catch_up_pending()),
        min_copies: state.replication().map_or(1, |r| r.min_copies() as u32),
    }
}

/// Sends a heartbeat to every tracker each interval until `shutdown` resolves. A tracker that
/// does not answer within the interval is skipped this round; the others are not held up.
pub async fn run_heartbeats(
    state: StorageState,
    link: ClusterLink,
    shutdown: impl Future<Output = ()>,
) {
    let client = match reqwest::Client::builder().timeout(link.interval).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the heartbeat client; this node will not join the cluster");
            return;
        }
    };
    let mut up = vec![None::<bool>; link.trackers.len()];
    let mut shutdown = pin!(shutdown);
    let mut ticks = tokio::time::interval(link.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut shutdown => return,
        }
        let hb = heartbeat(&state, &link);
        let sends = link.trackers.iter().map(|tracker| {
            let mut request = client
                .post(format!("{tracker}/v1/cluster/heartbeat"))
                .json(&hb);
            if let Some(secret) = &link.secret {
                request = request.header(CLUSTER_SECRET_HEADER, secret.current());
            }
            async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => r
                        .json::<HeartbeatAnswer>()
                        .await
                        .map_err(|e| format!("unreadable answer: {e}")),
                    Ok(r) => {
                        let status = r.status();
                        Err(format!(
                            "answered {status}: {}",
                            r.text().await.unwrap_or_default()
                        ))
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
        });
        let results = futures_util::future::join_all(sends).await;
        for ((tracker, result), was_up) in link.trackers.iter().zip(results).zip(up.iter_mut()) {
            let now_up = result.is_ok();
            if let (Ok(answer), Some(r)) = (&result, state.replication()) {
                r.set_peers(answer.peers.clone());
            }
            if *was_up != Some(now_up) {
                match result {
                    Ok(_) => tracing::info!(%tracker, "registered with tracker"),
                    Err(e) => {
                        tracing::warn!(%tracker, error = %e, "heartbeat not taken (unreachable or refused); will keep trying")
                    }
                }
                *was_up = Some(now_up);
            }
        }
    }
}

/// Hands a heartbeat to `deliver` each interval until `shutdown`: `sluice serve`'s embedded
/// tracker hears from its node this way, with no HTTP in between.
pub async fn run_local_heartbeats(
    state: StorageState,
    link: ClusterLink,
    deliver: impl Fn(Heartbeat) + Send,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    let mut ticks = tokio::time::interval(link.interval);
    loop {
        tokio::select! {
            _ = ticks.tick() => deliver(heartbeat(&state, &link)),
            () = &mut shutdown => return,
        }
    }
}
