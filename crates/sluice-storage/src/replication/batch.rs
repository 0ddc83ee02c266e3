//! Replicas of small files go to each peer in batches: one `POST /v1/internal/replicas`
//! carries every replica queued for that peer while its previous batches were under way (up
//! to [`IN_FLIGHT`] of them at once, so a slow answer does not stall the queue). The peer
//! stores a batch's files together (one volume batch, one `fdatasync`) and answers each.
//!
//! Bounds: a replica waits at most the replication timeout in all (queueing included), and is
//! skipped if its upload stopped waiting for it; a peer's queue holds at most
//! [`QUEUED_BYTES`] of file bytes (a sender waits for room, within its deadline); a queue with
//! nothing to send for [`IDLE`] goes away with its task, so peers that moved or left leave
//! nothing behind.
//!
//! A peer of an older build has no such route: a 404 or 405 turns batching off for it for
//! [`UNSUPPORTED_FOR`], and its replicas go one request per file meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::FileId;
use sluice_proto::replicas::{self, ReplicaResults};
use sluice_state::LockRecover;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// Files up to this size are batched; larger ones travel alone.
pub(crate) const MAX_BATCHED_FILE: usize = 1 << 20;
/// File bytes in one batch at most.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Batches to one peer under way at once.
const IN_FLIGHT: usize = 4;
/// File bytes waiting for one peer at most.
const QUEUED_BYTES: usize = 64 << 20;
/// A peer's queue with nothing to send this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// How long a peer that has no batch route gets one request per file.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(5);

/// What became of one batched replica.
#[derive(Debug)]
pub(crate) enum Sent {
    /// The peer answered this status for it.
    Status(u16, Option<String>),
    /// The peer has no batch route: send it alone.
    Unsupported,
    /// The request failed (timeout, connection): the peer took nothing we know of.
    Failed(String),
    /// The queue closed (idle) as this replica arrived: queue it again.
    Closed,
}

#[derive(Clone)]
pub(crate) struct Replica {
    pub id: FileId,
    pub content_type: String,
    pub sha256: [u8; 32],
    pub body: Bytes,
}

struct Queued {
    replica: Replica,
    reply: oneshot::Sender<Sent>,
    /// Its share of the queue's room, given back once the batch is answered.
    _room: OwnedSemaphorePermit,
}

/// One peer's queue and its sender task.
#[derive(Clone)]
struct PeerQueue {
    queue: mpsc::UnboundedSender<Queued>,
    /// KiB of file bytes the queue may still take.
    room: Arc<Semaphore>,
    /// Until when the peer gets no batches (it has no route for them).
    unsupported_until: Arc<Mutex<Option<Instant>>>,
}

/// Every peer's queue, made on first use.
pub(crate) struct Batchers {
    peers: Mutex<HashMap<String, PeerQueue>>,
    /// How long a replica may take in all.
    deadline: Duration,
}

/// How a batch goes out: the request (URL, authorisation, timeout) is the caller's to build.
pub(crate) type Post = Arc<dyn Fn(Vec<u8>) -> reqwest::RequestBuilder + Send + Sync>;

impl Batchers {
    pub(crate) fn new(deadline: Duration) -> Self {
        Self {
            peers: Mutex::new(HashMap::new()),
            deadline,
        }
    }

    /// Sends `replica` to the peer at `url` in its next batch and waits for the peer's answer,
    /// at most the replication timeout in all.
    pub(crate) async fn send(&self, url: &str, post: impl Fn() -> Post, replica: Replica) -> Sent {
        let work = async {
            let kib = u32::try_from(replica.body.len().div_ceil(1024).max(1)).unwrap_or(u32::MAX);
            // A second try only when the queue closed for idleness under our feet.
            for _ in 0..2 {
                let peer = self.queue_for(url, &post);
                if peer
                    .unsupported_until
                    .lock_or_recover()
                    .is_some_and(|until| Instant::now() < until)
                {
                    return Sent::Unsupported;
                }
                let Ok(room) = peer.room.clone().acquire_many_owned(kib).await else {
                    return Sent::Failed("the replica queue is closed".into());
                };
                let (reply, answer) = oneshot::channel();
                let queued = Queued {
                    replica: replica.clone(),
                    reply,
                    _room: room,
                };
                if peer.queue.send(queued).is_err() {
                    self.forget(url, &peer);
                    continue;
                }
                match answer.await {
                    Ok(Sent::Closed) | Err(_) => self.forget(url, &peer),
                    Ok(sent) => return sent,
                }
            }
            Sent::Failed("the replica queue is closed".into())
        };
        tokio::time::timeout(self.deadline, work)
            .await
            .unwrap_or_else(|_| {
                Sent::Failed(format!(
                    "no answer within the replication timeout ({:?})",
                    self.deadline
                ))
            })
    }

    fn queue_for(&self, url: &str, post: &impl Fn() -> Post) -> PeerQueue {
        let mut peers = self.peers.lock_or_recover();
        if let Some(peer) = peers.get(url).filter(|p| !p.queue.is_closed()) {
            return peer.clone();
        }
        let peer = start(post());
        peers.insert(url.to_owned(), peer.clone());
        peer
    }

    /// Drops `url`'s queue if it is still `peer`'s (its task ended).
    fn forget(&self, url: &str, peer: &PeerQueue) {
        let mut peers = self.peers.lock_or_recover();
        if peers
            .get(url)
            .is_some_and(|p| p.queue.same_channel(&peer.queue))
        {
            peers.remove(url);
        }
    }
}

fn start(post: Post) -> PeerQueue {
    let (queue, mut waiting) = mpsc::unbounded_channel::<Queued>();
    let unsupported_until = Arc::new(Mutex::new(None));
    let flag = unsupported_until.clone();
    let room_kib = u32::try_from(QUEUED_BYTES / 1024).unwrap_or(u32::MAX);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let first = match tokio::time::timeout(IDLE, waiting.recv()).await {
                Ok(Some(first)) => first,
                Ok(None) => break,
                Err(_) => {
                    // Idle: close, and send back whatever slipped in as it closed.
                    waiting.close();
                    while let Ok(late) = waiting.try_recv() {
                        let _ = late.reply.send(Sent::Closed);
                    }
                    break;
                }
            };
            // Wait for a slot first: whatever queues meanwhile joins this batch.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut batch = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(q) = next.take() {
                // An upload that stopped waiting (its deadline passed) needs no replica.
                if !q.reply.is_closed() {
                    bytes += q.replica.body.len();
                    batch.push(q);
                }
                if batch.len() < replicas::MAX_RECORDS && bytes < MAX_BATCH_BYTES {
                    next = waiting.try_recv().ok();
                }
            }
            if batch.is_empty() {
                continue;
            }
            let (post, flag) = (post.clone(), flag.clone());
            tokio::spawn(async move {
                send_batch(&post, &flag, batch, bytes).await;
                drop(slot);
            });
        }
    });
    PeerQueue {
        queue,
        room: Arc::new(Semaphore::new(room_kib as usize)),
        unsupported_until,
    }
}

async fn send_batch(
    post: &Post,
    unsupported_until: &Mutex<Option<Instant>>,
    batch: Vec<Queued>,
    bytes: usize,
) {
    let mut body = replicas::start(bytes + batch.len() * 128);
    for q in &batch {
        let r = &q.replica;
        replicas::push(
            &mut body,
            &r.id.to_string(),
            &r.content_type,
            &r.sha256,
            &r.body,
        );
    }
    let answer = match post(body).send().await {
        Ok(response) => match response.status().as_u16() {
            200 => response
                .json::<ReplicaResults>()
                .await
                .map_err(|e| Sent::Failed(format!("unreadable batch answer: {e}"))),
            404 | 405 => {
                *unsupported_until.lock_or_recover() = Some(Instant::now() + UNSUPPORTED_FOR);
                Err(Sent::Unsupported)
            }
            status => Err(Sent::Failed(format!("peer answered {status} to a batch"))),
        },
        Err(e) => Err(Sent::Failed(e.to_string())),
    };
    match answer {
        Ok(results) if results.results.len() == batch.len() => {
            for (q, result) in batch.into_iter().zip(results.results) {
                let _ = q.reply.send(Sent::Status(result.status, result.error));
            }
        }
        Ok(results) => {
            let why = format!(
                "peer answered {} results for {} replicas",
                results.results.len(),
                batch.len()
            );
            for q in batch {
                let _ = q.reply.send(Sent::Failed(why.clone()));
            }
        }
        Err(sent) => {
            for q in batch {
                let _ = q.reply.send(match &sent {
                    Sent::Unsupported => Sent::Unsupported,
                    Sent::Failed(why) => Sent::Failed(why.clone()),
                    Sent::Status(s, e) => Sent::Status(*s, e.clone()),
                    Sent::Closed => Sent::Closed,
                });
            }
        }
    }
}
