//! Cache fills: one origin fetch per file however many clients miss it at once.
//!
//! nginx's `proxy_cache_lock` makes the waiters of a miss poll (every 500 ms) until the whole
//! object is cached. Here the fetch writes into a spool file and publishes how far it got on a
//! `watch` channel; every client that joins streams from the spool as the bytes land, so the
//! first byte reaches all of them as soon as it reaches the edge. The fetch belongs to the
//! fill, not to any client: a slow or vanished client holds nothing back, and the file is
//! cached even if every client left.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use sluice_proto::{BlobKey, FileId};
use sluice_state::LockRecover;
use tokio::sync::watch;

use crate::EdgeState;

/// What the origin said of a file, enough to answer clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginHead {
    pub size: u64,
    pub content_type: String,
}

/// Why a fill gives clients something other than the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The origin answered with an error status: pass it on (404, 403, 416...).
    Status { status: u16, body: Bytes },
    /// The file is still arriving at the origin (progressive upload): never cached; each
    /// client is proxied.
    Incomplete,
    /// The origin could not be reached or broke off: 502.
    Unavailable(String),
    /// The edge could not spool the file (its disk is full, say): clients are proxied.
    NoSpool(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillState {
    Connecting,
    Receiving {
        head: OriginHead,
        received: u64,
    },
    /// Whole, and in the cache (unless too large for it).
    Done {
        head: OriginHead,
    },
    Refused(Refusal),
}

pub struct Fill {
    pub key: BlobKey,
    state: watch::Sender<FillState>,
    pub spool: PathBuf,
}

impl Fill {
    pub fn watch(&self) -> watch::Receiver<FillState> {
        self.state.subscribe()
    }
}

/// The fills in progress; one owner of the map.
#[derive(Default)]
pub struct Fills {
    map: Mutex<HashMap<BlobKey, Arc<Fill>>>,
}

impl Fills {
    /// The fill of `id` in progress, or a new one started now.
    pub fn join_or_start(&self, edge: &EdgeState, id: &FileId, key: BlobKey) -> Arc<Fill> {
        let mut map = self.map.lock_or_recover();
        if let Some(fill) = map.get(&key) {
            return fill.clone();
        }
        let fill = start(edge, id, key);
        map.insert(key, fill.clone());
        fill
    }

    fn finish(&self, key: &BlobKey) {
        self.map.lock_or_recover().remove(key);
    }

    pub fn in_progress(&self) -> usize {
        self.map.lock_or_recover().len()
    }
}

fn start(edge: &EdgeState, id: &FileId, key: BlobKey) -> Arc<Fill> {
    let mut nonce = [0u8; 8];
    if getrandom::fill(&mut nonce).is_err() {
        // The spool name only has to be unique among fills of one key: the clock will do.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nonce = now.to_le_bytes();
    }
    let spool = edge.spool_dir().join(format!(
        "{key}.{}.spool",
        nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    let fill = Arc::new(Fill {
        key,
        state: watch::channel(FillState::Connecting).0,
        spool,
    });
    let (edge, id, task_fill) = (edge.clone(), id.clone(), fill.clone());
    tokio::spawn(async move {
        let outcome = run(&edge, &id, &task_fill).await;
        // New requests go to the cache (or start afresh) from now on.
        edge.fills().finish(&task_fill.key);
        let _ = std::fs::remove_file(&task_fill.spool);
        task_fill.state.send_replace(outcome);
    });
    fill
}

/// Fetches the file into the spool, publishing progress, then caches it.
async fn run(edge: &EdgeState, id: &FileId, fill: &Fill) -> FillState {
    crate::EdgeMetrics::add(&edge.metrics().origin_fetches, 1);
    let response = match edge.origin().get(id, None).await {
        Ok(r) => r,
        Err(e) => return FillState::Refused(Refusal::Unavailable(e)),
    };
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.bytes().await.unwrap_or_default();
        return FillState::Refused(if status >= 500 {
            Refusal::Unavailable(format!("origin answered {status}"))
        } else {
            Refusal::Status { status, body }
        });
    }
    let headers = response.headers();
    if headers
        .get("sluice-complete")
        .is_some_and(|v| v.as_bytes() == b"false")
    {
        return FillState::Refused(Refusal::Incomplete);
    }
    let Some(size) = response.content_length() else {
        return FillState::Refused(Refusal::Unavailable("origin sent no Content-Length".into()));
    };
    let head = OriginHead {
        size,
        content_type: headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(sluice_proto::api::DEFAULT_CONTENT_TYPE)
            .to_owned(),
    };
    let spool = match File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&fill.spool)
    {
        Ok(f) => Arc::new(f),
        Err(e) => {
            tracing::warn!(error = %e, "cannot spool a fill; proxying its clients");
            return FillState::Refused(Refusal::NoSpool(e.to_string()));
        }
    };
    // Clients join once the first bytes are safely in the spool: if the spool cannot take
    // them (a full disk), they are proxied instead of starting a body that cannot finish.
    let mut received = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => return FillState::Refused(Refusal::Unavailable(e.to_string())),
        };
        if received + chunk.len() as u64 > size {
            return FillState::Refused(Refusal::Unavailable(
                "origin sent more than its Content-Length".into(),
            ));
        }
        let (file, at, bytes) = (spool.clone(), received, chunk.clone());
        let written = tokio::task::spawn_blocking(move || file.write_all_at(&bytes, at)).await;
        if !matches!(written, Ok(Ok(()))) {
            tracing::warn!("spool write failed; proxying the fill's clients");
            return FillState::Refused(Refusal::NoSpool("spool write failed".into()));
        }
        received += chunk.len() as u64;
        crate::EdgeMetrics::add(&edge.metrics().bytes_from_origin, chunk.len() as u64);
        fill.state.send_replace(FillState::Receiving {
            head: head.clone(),
            received,
        });
    }
    if received != size {
        return FillState::Refused(Refusal::Unavailable(format!(
            "origin broke off after {received} of {size} bytes"
        )));
    }
    if edge.cache().admits(size) {
        if let Err(e) = store(edge, fill.key, &head, spool).await {
            // Clients got their bytes from the spool; only the caching failed (a full disk,
            // say). The next request fetches again.
            tracing::warn!(fileid = %id, error = %e, "could not cache a file");
        }
    }
    FillState::Done { head }
}

/// Copies a whole spool into the cache.
async fn store(
    edge: &EdgeState,
    key: BlobKey,
    head: &OriginHead,
    spool: Arc<File>,
) -> Result<(), sluice_blob::BlobError> {
    let store = edge.store();
    let mut writer = store.writer(key, head.content_type.clone(), head.size);
    let mut at = 0u64;
    while at < head.size {
        let len = (head.size - at).min(1 << 20) as usize;
        let file = spool.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, at).map(|()| buf)
        })
        .await
        .map_err(|e| sluice_blob::BlobError::Io(std::io::Error::other(e.to_string())))??;
        at += chunk.len() as u64;
        writer.write(Bytes::from(chunk)).await?;
    }
    writer.commit().await?;
    edge.cache().insert(store, key, head.size).await;
    Ok(())
}
