//! Edges register with the trackers by heartbeat (URL, region, free cache), so trackers can
//! send each region's clients to a live edge of that region and ask its edges to preload.

use std::time::Duration;

use sluice_proto::cluster::EdgeHeartbeat;

use crate::EdgeState;

pub struct Registration {
    pub trackers: Vec<String>,
    /// The URL clients should use for this edge.
    pub advertise: String,
    pub interval: Duration,
}

/// This edge's id: made once and kept in the cache directory, so it survives restarts.
pub fn edge_id(dir: &std::path::Path) -> std::io::Result<String> {
    Ok(sluice_state::load_or_create_id(
        &dir.join("EDGE_ID"),
        || {
            let mut bytes = [0u8; sluice_proto::fileid::KEY_BYTES];
            getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
            Ok(sluice_proto::BlobKey::from_bytes(bytes).to_string())
        },
        |id| sluice_proto::BlobKey::parse(id).is_ok(),
    )?)
}

/// Heartbeats every tracker each interval until `shutdown`.
pub async fn run(
    edge: EdgeState,
    registration: Registration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let dir = edge
        .store()
        .root()
        .parent()
        .unwrap_or(edge.store().root())
        .to_owned();
    let id = match tokio::task::spawn_blocking(move || edge_id(&dir)).await {
        Ok(Ok(id)) => id,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot make an edge id; not registering with trackers");
            return;
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot make an edge id; not registering with trackers");
            return;
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(registration.interval)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the tracker client");
            return;
        }
    };
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticks = tokio::time::interval(registration.interval);
    // Whether each tracker took the last heartbeat: a change is logged, not every failure.
    let mut taken: Vec<Option<bool>> = vec![None; registration.trackers.len()];
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut shutdown => return,
        }
        let cache = edge.cache();
        let beat = EdgeHeartbeat {
            edge_id: id.clone(),
            url: registration.advertise.clone(),
            region: edge.config().region.clone(),
            cache_free: cache.capacity().saturating_sub(cache.bytes()),
            cache_files: cache.files(),
        };
        let sends = registration.trackers.iter().map(|tracker| {
            let mut request = client
                .post(format!(
                    "{}/v1/edges/heartbeat",
                    tracker.trim_end_matches('/')
                ))
                .json(&beat);
            if let Some((name, value)) = edge.config().cluster.secret_header() {
                request = request.header(name, value);
            }
            async move {
                // The tracker's reason, for the log, when it refuses.
                let answer = match request.send().await {
                    Ok(r) if r.status().is_success() => Ok(None),
                    Ok(r) => {
                        let status = r.status();
                        let why = r.text().await.unwrap_or_default();
                        Ok(Some(format!("answered {status}: {}", why.trim())))
                    }
                    Err(e) => Err(e),
                };
                (tracker, answer)
            }
        });
        let results = futures_util::future::join_all(sends).await;
        for ((tracker, result), was) in results.into_iter().zip(taken.iter_mut()) {
            let failure = match result {
                Ok(refused) => refused,
                Err(e) => Some(e.to_string()),
            };
            if *was != Some(failure.is_none()) {
                match &failure {
                    None => tracing::info!(%tracker, "registered with tracker"),
                    Some(error) => {
                        tracing::warn!(%tracker, %error, "edge heartbeat not taken (unreachable or refused); will keep trying")
                    }
                }
                *was = Some(failure.is_none());
            }
        }
    }
}
