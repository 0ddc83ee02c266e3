//! The background scrub: reads every file of the node now and then, checking each block's
//! checksum, so damage is found before a reader meets it; in a group, a damaged copy is
//! replaced with a peer's. Reading is paced (`bytes_per_sec`) so serving traffic comes first.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sluice_blob::{BlobError, CHUNK_BYTES};
use sluice_proto::FileId;

use crate::StorageState;

#[derive(Debug, Clone)]
pub struct ScrubConfig {
    /// Pause between the end of one pass and the start of the next.
    pub interval: Duration,
    /// Reading pace.
    pub bytes_per_sec: u64,
}

/// Scrubs until `shutdown` resolves.
pub async fn run_scrub(
    state: StorageState,
    config: ScrubConfig,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = pin!(shutdown);
    loop {
        tokio::select! {
            () = tokio::time::sleep(config.interval) => {}
            () = &mut shutdown => return,
        }
        let pass = scrub_pass(&state, &config);
        tokio::select! {
            result = pass => match result {
                Ok((files, damaged)) => tracing::info!(files, damaged, "scrub pass done"),
                Err(e) => tracing::warn!(error = %e, "scrub pass stopped early"),
            },
            () = &mut shutdown => return,
        }
    }
}

/// Keys read from the index at a time.
const KEYS_PER_PAGE: usize = 1024;

/// One pass over every file the index names (so a data file that went missing is found too);
/// returns (files checked, damaged found).
async fn scrub_pass(state: &StorageState, config: &ScrubConfig) -> Result<(u64, u64), BlobError> {
    let (mut files, mut damaged) = (0, 0);
    let mut after = None;
    loop {
        let store = state.store().clone();
        let keys =
            tokio::task::spawn_blocking(move || store.keys_after(after.as_ref(), KEYS_PER_PAGE))
                .await
                .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))??;
        let Some(last) = keys.last() else {
            return Ok((files, damaged));
        };
        after = Some(*last);
        for key in keys {
            let intact = match check(state, config, key).await? {
                None => continue,
                Some(intact) => intact,
            };
            files += 1;
            state
                .counters()
                .scrubbed_files
                .fetch_add(1, Ordering::Relaxed);
            if !intact {
                damaged += 1;
                state
                    .counters()
                    .scrub_damaged
                    .fetch_add(1, Ordering::Relaxed);
                let id = FileId::new(state.config().group.clone(), key);
                state.repair_from_peers(&id).await;
            }
        }
    }
}

/// Reads a file through its checksums at the scrub's pace: `Some(intact)`, or `None` if it
/// was deleted meanwhile.
async fn check(
    state: &StorageState,
    config: &ScrubConfig,
    key: sluice_proto::BlobKey,
) -> Result<Option<bool>, BlobError> {
    let reader = match state.store().open_reader(key) {
        Ok(Some(reader)) => reader,
        Ok(None) => return Ok(None),
        // Its data file is missing or of the wrong length.
        Err(BlobError::Corrupt { .. }) => return Ok(Some(false)),
        Err(e) => return Err(e),
    };
    let size = reader.meta().size;
    let mut at = 0;
    while at < size {
        match reader.read_chunk(at, size, CHUNK_BYTES).await {
            Ok(chunk) => {
                let len: u64 = chunk.iter().map(|b| b.len() as u64).sum();
                at += len;
                let pause =
                    Duration::from_secs_f64(len as f64 / config.bytes_per_sec.max(1) as f64);
                tokio::time::sleep(pause).await;
            }
            Err(BlobError::Corrupt { .. }) => return Ok(Some(false)),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(true))
}
