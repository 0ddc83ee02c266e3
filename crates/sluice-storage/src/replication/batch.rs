//! Replicas of small files go to each peer in batches: one `POST /v1/internal/replicas`
//! carries every replica queued for that peer while its previous batches were under way (up
//! to [`IN_FLIGHT`] of them at once, so a slow answer does not stall the queue). The peer
//! stores a batch's files together (one volume batch, one `fdatasync`) and answers each.
//!
//! A peer of an older build has no such route: the first 404 or 405 turns batching off for
//! it, and its replicas go one request per file as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use sluice_proto::FileId;
use sluice_proto::replicas::{self, ReplicaResults};
use sluice_state::LockRecover;
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Files up to this size are batched; larger ones travel alone.
pub(crate) const MAX_BATCHED_FILE: usize = 1 << 20;
/// File bytes in one batch at most.
const MAX_BATCH_BYTES: usize = 8 << 20;
/// Batches to one peer under way at once.
const IN_FLIGHT: usize = 4;
/// Replicas waiting for a peer at most; more wait to be queued.
const QUEUE: usize = 4096;

/// What became of one batched replica.
#[derive(Debug)]
pub(crate) enum Sent {
    /// The peer answered this status for it.
    Status(u16, Option<String>),
    /// The peer has no batch route: send it alone.
    Unsupported,
    /// The request failed (timeout, connection): the peer took nothing we know of.
    Failed(String),
}

pub(crate) struct Replica {
    pub id: FileId,
    pub content_type: String,
    pub sha256: [u8; 32],
    pub body: Bytes,
}

struct Queued {
    replica: Replica,
    reply: oneshot::Sender<Sent>,
}

/// One peer's queue and its sender task.
struct PeerQueue {
    queue: mpsc::Sender<Queued>,
    unsupported: Arc<AtomicBool>,
}

/// Every peer's queue, made on first use.
#[derive(Default)]
pub(crate) struct Batchers {
    peers: std::sync::Mutex<HashMap<String, PeerQueue>>,
}

/// How a batch goes out: the request (URL, authorisation, timeout) is the caller's to build.
pub(crate) type Post = Arc<dyn Fn(Vec<u8>) -> reqwest::RequestBuilder + Send + Sync>;

impl Batchers {
    /// Sends `replica` to the peer at `url` in its next batch and waits for the peer's answer.
    pub(crate) async fn send(
        &self,
        url: &str,
        post: impl FnOnce() -> Post,
        replica: Replica,
    ) -> Sent {
        let (reply, answer) = oneshot::channel();
        let queue = {
            let mut peers = self.peers.lock_or_recover();
            let peer = peers.entry(url.to_owned()).or_insert_with(|| start(post()));
            if peer.unsupported.load(Ordering::Relaxed) {
                return Sent::Unsupported;
            }
            peer.queue.clone()
        };
        if queue.send(Queued { replica, reply }).await.is_err() {
            return Sent::Failed("the replica queue is closed".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Sent::Failed("the batch was dropped".into()))
    }
}

fn start(post: Post) -> PeerQueue {
    let (queue, mut waiting) = mpsc::channel::<Queued>(QUEUE);
    let unsupported = Arc::new(AtomicBool::new(false));
    let flag = unsupported.clone();
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        while let Some(first) = waiting.recv().await {
            // Wait for a slot first: whatever queues meanwhile joins this batch.
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let mut batch = vec![first];
            let mut bytes = batch[0].replica.body.len();
            while batch.len() < replicas::MAX_RECORDS && bytes < MAX_BATCH_BYTES {
                match waiting.try_recv() {
                    Ok(next) => {
                        bytes += next.replica.body.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            let (post, flag) = (post.clone(), flag.clone());
            tokio::spawn(async move {
                send_batch(&post, &flag, batch, bytes).await;
                drop(slot);
            });
        }
    });
    PeerQueue { queue, unsupported }
}

async fn send_batch(post: &Post, unsupported: &AtomicBool, batch: Vec<Queued>, bytes: usize) {
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
                unsupported.store(true, Ordering::Relaxed);
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
                });
            }
        }
    }
}
