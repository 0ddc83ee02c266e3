//! Keeping the nodes of a group identical.
//!
//! - **On upload**: once a file is durable here, it is sent to every active peer
//!   (`PUT /v1/internal/blobs/{id}`), in parallel and each within `timeout`; the upload is
//!   acknowledged when at least `min_copies` nodes hold it. A peer that failed catches up later.
//! - **On delete**: the delete is applied here (tombstone and oplog) and forwarded to the peers.
//! - **Catch-up**: every node pulls each peer's oplog from where it left off and applies what
//!   it lacks (fetching files, applying deletes). A node that was down, or is new to the group,
//!   thus fills itself in; it reports `syncing` until it has caught up with every peer.
//! - **Peer fetch**: a read of a file this node lacks (not caught up yet) fetches it from a
//!   peer and keeps it, so no read fails for "not synced yet".
//!
//! Peers are learnt from the trackers' answers to heartbeats. Every call carries the cluster
//! secret when one is set. Catch-up is in [`catch_up`].

mod batch;
mod catch_up;
pub(crate) mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use sluice_blob::{BlobError, BlobStore, CHUNK_BYTES};
use sluice_proto::cluster::{
    CLUSTER_SECRET_HEADER, NodeState, NodeView, OplogOp, OplogPage, SHA256_HEADER,
    parse_sha256_hex, sha256_hex,
};
use sluice_proto::{FileId, GroupName, SecretSet};
use sluice_state::{LockRecover, RwLockRecover};

/// Entries asked for per oplog request.
const OPLOG_PAGE: usize = 1000;
/// How long a peer that pulled our oplog counts as a replication target without the trackers
/// confirming it.
const PULLER_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ReplicationConfig {
    /// Copies (this node included) an upload needs before it is acknowledged.
    pub min_copies: usize,
    /// How long a peer may take to store a replica before the upload goes on without it.
    pub timeout: Duration,
    /// Pause between catch-up rounds.
    pub catch_up_interval: Duration,
    pub secret: Option<SecretSet>,
    /// Where catch-up keeps its progress (per-peer oplog cursors, files to fetch again).
    pub cursors_file: PathBuf,
    /// Trackers to tell when a peer stops answering.
    pub trackers: Vec<String>,
}

pub struct Replication {
    config: ReplicationConfig,
    node_id: String,
    client: reqwest::Client,
    peers: RwLock<Vec<NodeView>>,
    /// How far catch-up got with each peer, and the files it could not fetch yet.
    progress: Mutex<catch_up::Progress>,
    /// Writes `peers.json` off the async threads.
    progress_file: Option<sluice_state::Saver<catch_up::Progress>>,
    /// Files catch-up failed to fetch, ever.
    catch_up_failures: std::sync::atomic::AtomicU64,
    /// False until a catch-up round found this node level with every peer.
    caught_up: AtomicBool,
    /// Peers this node has been level with since it started, by id. One it has not (down
    /// since before we came back) may hold writes we missed while we were away.
    level_with: Mutex<std::collections::HashSet<String>>,
    /// Operations each peer has that we have not applied yet, by peer id.
    lag: Mutex<BTreeMap<String, u64>>,
    /// Peers that pulled our oplog: id -> (url, when).
    pullers: Mutex<BTreeMap<String, (String, std::time::Instant)>>,
    /// Our own URL, sent with oplog pulls so peers learn of us at once.
    advertise: String,
    /// False until a tracker has told us who the peers are: until then we cannot know we are
    /// level (a node back from an outage must not call itself active too soon).
    peers_known: AtomicBool,
    /// Each peer's queue of small replicas, sent in batches.
    batchers: batch::Batchers,
}

/// What a fetch from one peer came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fetched {
    /// The file is here now.
    Stored,
    /// Deleted, there or here: nothing to fetch.
    Gone,
    /// The peer does not have it (404) or could not say (another status).
    NotThere(u16),
}

/// Where the bytes of a replica come from.
pub enum ReplicaSource {
    Memory {
        body: bytes::Bytes,
        content_type: String,
        sha256: [u8; sluice_blob::SHA256_LEN],
    },
    Stored,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error("only {have} of the {need} copies required are possible or were made")]
    TooFewCopies { have: usize, need: usize },
    #[error(
        "this node has not joined its cluster yet (no tracker has accepted its heartbeat), so it cannot know its peers"
    )]
    NotJoined,
    #[error(transparent)]
    Blob(#[from] BlobError),
}

impl Replication {
    pub fn new(
        config: ReplicationConfig,
        node_id: String,
        advertise: String,
    ) -> Result<Self, reqwest::Error> {
        // Replicas pushed with an upload have a total timeout each (the upload waits for them);
        // fetches have none, only this one between reads, so a file of any size streams.
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .read_timeout(config.timeout)
            .pool_max_idle_per_host(64)
            .build()?;
        let progress = catch_up::Progress::load(&config.cursors_file);
        let shown = config.cursors_file.display().to_string();
        let failing = AtomicBool::new(false);
        let progress_file = sluice_state::Saver::start(
            &config.cursors_file,
            catch_up::PROGRESS_VERSION,
            // Said once per failure spell, not per oplog page.
            move |result| match result {
                Err(e) if !failing.swap(true, Ordering::Relaxed) => {
                    tracing::warn!(path = %shown, error = %e, "could not save catch-up progress; each change tries again");
                }
                Err(_) => {}
                Ok(()) => {
                    if failing.swap(false, Ordering::Relaxed) {
                        tracing::info!(path = %shown, "catch-up progress saved again");
                    }
                }
            },
        )
        .inspect_err(|e| tracing::error!(error = %e, "cannot start the catch-up progress writer"))
        .ok();
        let batchers = batch::Batchers::new(config.timeout);
        Ok(Self {
            config,
            node_id,
            client,
            peers: RwLock::new(Vec::new()),
            progress: Mutex::new(progress),
            progress_file,
            catch_up_failures: std::sync::atomic::AtomicU64::new(0),
            caught_up: AtomicBool::new(false),
            level_with: Mutex::new(std::collections::HashSet::new()),
            peers_known: AtomicBool::new(false),
            pullers: Mutex::new(BTreeMap::new()),
            lag: Mutex::new(BTreeMap::new()),
            advertise,
            batchers,
        })
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Replaces the peer list with a tracker's latest answer.
    pub fn set_peers(&self, peers: Vec<NodeView>) {
        *self.peers.write_or_recover() = peers;
        self.peers_known.store(true, Ordering::Relaxed);
    }

    fn peers(&self) -> Vec<NodeView> {
        self.peers.read_or_recover().clone()
    }

    /// The peers that get replicas: every member the trackers do not call offline (a syncing
    /// peer is a member catching up; sending it new files now shortens its catch-up), plus
    /// peers that pulled our oplog lately. The latter closes a race: a node joins, catches up
    /// and turns active before our next heartbeat tells us of it; its pulls tell us first.
    fn targets(&self) -> Vec<NodeView> {
        let mut targets: Vec<NodeView> = self
            .peers()
            .into_iter()
            .filter(|p| p.state != NodeState::Offline)
            .collect();
        let offline: Vec<String> = self
            .peers()
            .into_iter()
            .filter(|p| p.state == NodeState::Offline)
            .map(|p| p.id)
            .collect();
        for (id, (url, seen)) in self.pullers.lock_or_recover().iter() {
            let fresh = seen.elapsed() < PULLER_TTL;
            if fresh && !offline.contains(id) && !targets.iter().any(|t| t.id == *id) {
                targets.push(NodeView {
                    id: id.clone(),
                    url: url.clone(),
                    state: NodeState::Syncing,
                    files: 0,
                    bytes: 0,
                    free_bytes: 0,
                    writable: false,
                    last_seen_ms: 0,
                    sync_lag: 0,
                    catch_up_pending: 0,
                });
            }
        }
        targets
    }

    fn set_lag(&self, peer: &str, ops: u64) {
        self.lag.lock_or_recover().insert(peer.to_owned(), ops);
    }

    /// Operations of peers not applied here yet, as of the latest oplog page read from each:
    /// the "sync lag" a heartbeat reports.
    pub fn sync_lag(&self) -> u64 {
        let peers: Vec<String> = self.peers().into_iter().map(|p| p.id).collect();
        self.lag
            .lock_or_recover()
            .iter()
            .filter(|(id, _)| peers.contains(id))
            .map(|(_, ops)| ops)
            .sum()
    }

    /// Tells the trackers a peer did not take a replica, so they stop sending it traffic (each
    /// checks for itself). In the background: an upload does not wait for it.
    fn report_unreachable(&self, peer_url: &str) {
        for tracker in &self.config.trackers {
            let request = self
                .client
                .post(format!("{tracker}/v1/cluster/unreachable"))
                .json(&serde_json::json!({ "url": peer_url }))
                .timeout(self.config.timeout);
            tokio::spawn(async move {
                let _ = request.send().await;
            });
        }
    }

    /// Records that a peer pulled our oplog (it is a member, and alive).
    pub fn note_puller(&self, id: &str, url: &str) {
        if id == self.node_id
            || id.len() > 64
            || !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return;
        }
        let mut pullers = self.pullers.lock_or_recover();
        // Those not heard from lately are no targets any more: forget them.
        pullers.retain(|_, (_, seen)| seen.elapsed() < PULLER_TTL);
        pullers.insert(id.to_owned(), (url.to_owned(), std::time::Instant::now()));
    }

    pub fn min_copies(&self) -> usize {
        self.config.min_copies
    }

    /// What this node should call itself in heartbeats.
    pub fn state(&self) -> NodeState {
        if self.caught_up.load(Ordering::Relaxed) {
            NodeState::Active
        } else {
            NodeState::Syncing
        }
    }

    fn authorise(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.config.secret {
            Some(s) => request.header(CLUSTER_SECRET_HEADER, s.current()),
            None => request,
        }
    }

    /// Refuses early when the group cannot reach `min_copies` even if every active peer
    /// answers, so nothing is stored for an upload that would be refused anyway; and before
    /// any tracker has accepted this node, since until then it cannot know whom the write rule
    /// names (a node refused for taking another's id must not acknowledge uploads alone).
    pub fn check_possible(&self) -> Result<(), ReplicationError> {
        if !self.peers_known.load(Ordering::Relaxed) {
            return Err(ReplicationError::NotJoined);
        }
        let have = 1 + self.targets().len();
        if have < self.config.min_copies {
            return Err(ReplicationError::TooFewCopies {
                have,
                need: self.config.min_copies,
            });
        }
        Ok(())
    }

    /// What a replica is made from: bytes still in memory (small uploads, sent while the local
    /// commit runs), or the file as stored here.
    pub async fn replicate_put(
        &self,
        store: &BlobStore,
        id: &FileId,
        source: ReplicaSource,
    ) -> Result<usize, ReplicationError> {
        let peers = self.targets();
        let sends = peers
            .iter()
            .map(|peer| self.send_replica(store, id, peer, &source));
        let results = futures_util::future::join_all(sends).await;
        let mut copies = 1;
        for (peer, result) in peers.iter().zip(results) {
            match result {
                Ok(()) => copies += 1,
                Err(e) => {
                    tracing::warn!(peer = %peer.url, fileid = %id, error = %e, "replica not stored; the peer will catch up");
                    self.report_unreachable(&peer.url);
                }
            }
        }
        if copies < self.config.min_copies {
            return Err(ReplicationError::TooFewCopies {
                have: copies,
                need: self.config.min_copies,
            });
        }
        Ok(copies)
    }

    async fn send_replica(
        &self,
        store: &BlobStore,
        id: &FileId,
        peer: &NodeView,
        source: &ReplicaSource,
    ) -> Result<(), String> {
        if let ReplicaSource::Memory {
            body,
            content_type,
            sha256,
        } = source
        {
            if body.len() <= batch::MAX_BATCHED_FILE {
                let replica = batch::Replica {
                    id: id.clone(),
                    content_type: content_type.clone(),
                    sha256: *sha256,
                    body: body.clone(),
                };
                match self
                    .batchers
                    .send(&peer.url, || self.batch_post(&peer.url), replica)
                    .await
                {
                    // As for one file: stored, or deleted there meanwhile.
                    batch::Sent::Status(200..=299 | 410, _) => return Ok(()),
                    batch::Sent::Status(status, error) => {
                        return Err(format!(
                            "peer answered {status}: {}",
                            error.unwrap_or_default()
                        ));
                    }
                    batch::Sent::Failed(why) => return Err(why),
                    // (Never out of `send`, which queues again.)
                    batch::Sent::Closed => return Err("the replica queue closed".into()),
                    // A peer of an older build: one request for this file.
                    batch::Sent::Unsupported => {}
                }
            }
        }
        self.send_one_replica(store, id, peer, source).await
    }

    /// How a batch of replicas goes to the peer at `url`.
    fn batch_post(&self, url: &str) -> batch::Post {
        let client = self.client.clone();
        let secret = self.config.secret.clone();
        let timeout = self.config.timeout;
        let url = format!("{url}/v1/internal/replicas");
        std::sync::Arc::new(move |body: Vec<u8>| {
            let request = client
                .post(&url)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    sluice_proto::replicas::CONTENT_TYPE,
                )
                .timeout(timeout)
                .body(body);
            match &secret {
                Some(s) => request.header(CLUSTER_SECRET_HEADER, s.current()),
                None => request,
            }
        })
    }

    /// One replica, one request: files too large to batch, files as stored, and peers
    /// without the batch route.
    async fn send_one_replica(
        &self,
        store: &BlobStore,
        id: &FileId,
        peer: &NodeView,
        source: &ReplicaSource,
    ) -> Result<(), String> {
        let (body, size, content_type, blob_state, sha256) = match source {
            ReplicaSource::Memory {
                body,
                content_type,
                sha256,
            } => (
                reqwest::Body::from(body.clone()),
                body.len() as u64,
                content_type.clone(),
                None,
                *sha256,
            ),
            ReplicaSource::Stored => {
                let reader = store
                    .open_reader(id.key)
                    .map_err(|e| e.to_string())?
                    .ok_or("file vanished")?;
                let size = reader.meta().size;
                let content_type = reader.meta().content_type.clone();
                let blob_state = wire::blob_state_header(reader.meta().state);
                // Every record this build writes has one; an older file cannot be pushed.
                let sha256 = reader
                    .meta()
                    .sha256
                    .ok_or("the file has no recorded SHA-256")?;
                let stream = futures_util::stream::try_unfold(
                    (reader, 0u64),
                    move |(reader, at)| async move {
                        if at >= size {
                            return Ok::<_, BlobError>(None);
                        }
                        let chunk = reader.read_chunk(at, size, CHUNK_BYTES).await?;
                        let len: u64 = chunk.iter().map(|b| b.len() as u64).sum();
                        Ok(Some((
                            futures_util::stream::iter(chunk.into_iter().map(Ok::<_, BlobError>)),
                            (reader, at + len),
                        )))
                    },
                )
                .try_flatten();
                (
                    reqwest::Body::wrap_stream(stream),
                    size,
                    content_type,
                    blob_state,
                    sha256,
                )
            }
        };
        let mut request = self
            .client
            .put(format!("{}/v1/internal/blobs/{id}", peer.url));
        if let Some(v) = blob_state {
            request = request.header(wire::BLOB_STATE_HEADER, v);
        }
        let request = request
            .header(SHA256_HEADER, sha256_hex(&sha256))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .header(reqwest::header::CONTENT_LENGTH, size)
            .timeout(self.config.timeout)
            .body(body);
        let response = self
            .authorise(request)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            // The peer deleted it meanwhile: nothing to copy.
            410 => Ok(()),
            s => Err(format!("peer answered {s}")),
        }
    }

    /// Forwards a delete to every active peer (best effort: offline peers catch up).
    pub async fn replicate_delete(&self, id: &FileId) {
        let peers = self.targets();
        let sends = peers.iter().map(|peer| {
            let request = self
                .client
                .delete(format!("{}/v1/internal/blobs/{id}", peer.url))
                .timeout(self.config.timeout);
            self.authorise(request).send()
        });
        for (peer, result) in peers
            .iter()
            .zip(futures_util::future::join_all(sends).await)
        {
            if let Err(e) = result {
                tracing::warn!(peer = %peer.url, fileid = %id, error = %e, "delete not forwarded; the peer will catch up");
            }
        }
    }

    /// Fetches a file this node lacks from a peer that has it, and keeps it. `Ok(false)` when
    /// no peer has it. With `repair`, the fetched bytes replace a damaged local copy, but only
    /// if they match the SHA-256 recorded for it.
    pub async fn fetch_from_peers(
        &self,
        store: &BlobStore,
        id: &FileId,
        limit: u64,
        repair: bool,
    ) -> Result<bool, BlobError> {
        // A peer had it but this node could not store it (a full disk): that, not "not
        // found", is the answer.
        let mut local_failure = None;
        for peer in self
            .peers()
            .into_iter()
            .filter(|p| p.state != NodeState::Offline)
        {
            match self.fetch_from(store, id, &peer.url, limit, repair).await {
                Ok(Fetched::Stored) => return Ok(true),
                Ok(Fetched::Gone | Fetched::NotThere(_)) => {}
                Err(e @ (BlobError::NoSpace | BlobError::Reopening | BlobError::Closed)) => {
                    tracing::warn!(peer = %peer.url, fileid = %id, error = %e, "a peer's copy could not be stored here");
                    local_failure = Some(e);
                }
                Err(e) => {
                    tracing::warn!(peer = %peer.url, fileid = %id, error = %e, "peer fetch failed")
                }
            }
        }
        local_failure.map_or(Ok(false), Err)
    }

    async fn fetch_from(
        &self,
        store: &BlobStore,
        id: &FileId,
        peer_url: &str,
        limit: u64,
        repair: bool,
    ) -> Result<Fetched, BlobError> {
        let io = |e: reqwest::Error| BlobError::Io(std::io::Error::other(e.to_string()));
        let request = self
            .client
            .get(format!("{peer_url}/v1/internal/blobs/{id}"));
        let response = self.authorise(request).send().await.map_err(io)?;
        match response.status().as_u16() {
            200..=299 => {}
            410 => return Ok(Fetched::Gone),
            status => return Ok(Fetched::NotThere(status)),
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(sluice_proto::api::DEFAULT_CONTENT_TYPE)
            .to_owned();
        let blob_state = wire::parse_blob_state(
            response
                .headers()
                .get(wire::BLOB_STATE_HEADER)
                .and_then(|v| v.to_str().ok()),
        )
        .ok_or_else(|| {
            BlobError::Io(std::io::Error::other(format!(
                "a peer sent a bad {}",
                wire::BLOB_STATE_HEADER
            )))
        })?;
        let declared = response
            .headers()
            .get(SHA256_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                parse_sha256_hex(v).ok_or_else(|| {
                    BlobError::Io(std::io::Error::other(format!("bad {SHA256_HEADER}")))
                })
            })
            .transpose()?;
        let mut writer = store.writer(id.key, content_type, limit);
        writer.set_state(blob_state);
        if let Some(digest) = declared {
            writer.expect_sha256(digest);
        }
        if repair {
            writer.allow_repair();
        }
        let mut body = response.bytes_stream();
        while let Some(chunk) = body.next().await {
            writer.write(chunk.map_err(io)?).await?;
        }
        match writer.commit().await {
            Ok(_) => Ok(Fetched::Stored),
            Err(BlobError::Deleted) => Ok(Fetched::Gone),
            Err(e) => Err(e),
        }
    }
}

/// Turns oplog entries of the local store into the wire page.
pub fn oplog_page(
    store: &BlobStore,
    group: &GroupName,
    after: u64,
    limit: usize,
) -> Result<OplogPage, BlobError> {
    let head = store.oplog_head()?;
    let entries = store
        .oplog_after(after, limit.min(OPLOG_PAGE))?
        .into_iter()
        .map(|e| sluice_proto::cluster::OplogItem {
            seq: e.seq,
            op: match e.kind {
                sluice_blob::OpKind::Put => OplogOp::Put,
                sluice_blob::OpKind::Delete => OplogOp::Delete,
            },
            fileid: FileId::new(group.clone(), e.key).to_string(),
        })
        .collect();
    Ok(OplogPage { head, entries })
}

/// A write the group could not take as its rule asks: 503, try another group.
impl From<ReplicationError> for crate::error::ApiError {
    fn from(e: ReplicationError) -> Self {
        match e {
            ReplicationError::Blob(b) => b.into(),
            other => crate::error::ApiError::NotEnoughCopies(other.to_string()),
        }
    }
}
