//! Signalling: what happens to progressive uploads, told to whoever listens. The IM server
//! learns of a file the moment it has an id (`file.committed`), when it is whole
//! (`file.completed`) and when its sender went away (`file.abandoned`): through server-sent
//! events at `GET /v1/events`, and through a webhook POST signed with HMAC-SHA256.
//!
//! One owner each: the broadcast channel (bounded; a subscriber that lags loses the oldest
//! events and is told so) and the webhook sender task (bounded queue, retries with backoff,
//! events dropped with an error log when the queue is full so an endpoint that is down can
//! never hold uploads back).

use std::time::Duration;

use axum::http::header;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use sluice_state::LockRecover;
use tokio::sync::{broadcast, mpsc};

/// Events kept for subscribers that fall behind.
const BROADCAST_DEPTH: usize = 1024;
/// Events waiting for the webhook.
const WEBHOOK_QUEUE: usize = 10_000;
/// The header carrying `sha256=HEX(HMAC-SHA256(secret, body))` on webhook posts.
pub const SIGNATURE_HEADER: &str = "sluice-signature";
pub const EVENT_HEADER: &str = "sluice-event";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventKind {
    #[serde(rename = "file.committed")]
    Committed,
    #[serde(rename = "file.completed")]
    Completed,
    #[serde(rename = "file.abandoned")]
    Abandoned,
}

impl EventKind {
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Committed => "file.committed",
            EventKind::Completed => "file.completed",
            EventKind::Abandoned => "file.abandoned",
        }
    }
}

/// One event's body, as DESIGN.md §3 names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEvent {
    #[serde(skip)]
    pub kind: EventKind,
    pub fileid: String,
    pub sender: String,
    pub receiver: String,
    pub received: u64,
    pub total: u64,
}

/// Where events go besides the event stream.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub url: String,
    /// `SLUICE_WEBHOOK_SECRET`: signs each body; `None` sends unsigned posts.
    pub secret: Option<sluice_proto::SecretSet>,
    /// Attempts per event before it is given up (and logged).
    pub attempts: u32,
    /// First pause between attempts; doubled each time, at most 30 s.
    pub backoff: Duration,
    pub timeout: Duration,
}

impl WebhookConfig {
    pub fn new(url: String, secret: Option<sluice_proto::SecretSet>) -> Self {
        Self {
            url,
            secret,
            attempts: 8,
            backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

/// The node's event hub; cheap to clone.
#[derive(Clone)]
pub struct Events {
    stream: broadcast::Sender<FileEvent>,
    webhook: Option<mpsc::Sender<FileEvent>>,
    counts: std::sync::Arc<EventCounts>,
    /// The webhook's sending end, until the node's workers take it to run.
    sender: std::sync::Arc<std::sync::Mutex<Option<WebhookSender>>>,
}

/// Posts queued events to the webhook, in order; run as the node's `webhook` worker.
pub struct WebhookSender {
    config: WebhookConfig,
    queue: mpsc::Receiver<FileEvent>,
    counts: std::sync::Arc<EventCounts>,
}

/// What `/metrics` shows of signalling.
pub struct EventCounts {
    /// Events emitted, by name.
    pub emitted: sluice_metrics::CounterVec,
    /// Events the webhook never delivered (queue full, or every attempt failed).
    pub webhook_lost: std::sync::atomic::AtomicU64,
}

impl Events {
    /// The hub; with a webhook configured, events queue for the [`WebhookSender`] that
    /// [`Events::take_webhook_sender`] hands the node's workers.
    pub fn new(webhook: Option<WebhookConfig>) -> Self {
        let (stream, _) = broadcast::channel(BROADCAST_DEPTH);
        let counts = std::sync::Arc::new(EventCounts {
            emitted: sluice_metrics::CounterVec::new(
                "sluice_upload_events_total",
                "Progressive upload events emitted, by event.",
                &["event"],
            ),
            webhook_lost: std::sync::atomic::AtomicU64::new(0),
        });
        let mut sender = None;
        let webhook = webhook.map(|config| {
            let (tx, queue) = mpsc::channel(WEBHOOK_QUEUE);
            sender = Some(WebhookSender {
                config,
                queue,
                counts: counts.clone(),
            });
            tx
        });
        Self {
            stream,
            webhook,
            counts,
            sender: std::sync::Arc::new(std::sync::Mutex::new(sender)),
        }
    }

    /// The webhook sender, once (`None` without a webhook or when already taken).
    pub fn take_webhook_sender(&self) -> Option<WebhookSender> {
        self.sender.lock_or_recover().take()
    }

    pub fn counts(&self) -> &EventCounts {
        &self.counts
    }

    pub fn emit(&self, event: FileEvent) {
        tracing::info!(event = event.kind.name(), fileid = %event.fileid, received = event.received, total = event.total, "progressive upload");
        self.counts.emitted.inc_by(&[event.kind.name()], 1);
        let _ = self.stream.send(event.clone());
        if let Some(queue) = &self.webhook {
            if queue.try_send(event).is_err() {
                self.counts
                    .webhook_lost
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!("webhook queue is full; an event was dropped");
            }
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FileEvent> {
        self.stream.subscribe()
    }
}

/// `HEX(HMAC-SHA256(secret, body))`, what a receiver recomputes to trust a post.
pub fn sign_body(secret: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl WebhookSender {
    /// Posts events until `stopping` resolves; then takes no more, and posts those already
    /// queued (the worker deadline bounds how long that may take).
    pub async fn run(self, stopping: impl std::future::Future<Output = ()>) {
        let WebhookSender {
            config,
            mut queue,
            counts,
        } = self;
        let client = match reqwest::Client::builder().timeout(config.timeout).build() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhook client could not start; events go to /v1/events only");
                return;
            }
        };
        let mut stopping = std::pin::pin!(stopping);
        let mut told = false;
        // In order, one at a time: the IM server must hear `committed` before `completed`.
        loop {
            let event = tokio::select! {
                () = &mut stopping, if !told => {
                    told = true;
                    queue.close();
                    continue;
                }
                event = queue.recv() => event,
            };
            let Some(event) = event else { return };
            post(&client, &config, &event, &counts).await;
        }
    }
}

async fn post(
    client: &reqwest::Client,
    config: &WebhookConfig,
    event: &FileEvent,
    counts: &EventCounts,
) {
    let body = serde_json::to_vec(event).unwrap_or_default();
    let mut pause = config.backoff;
    for attempt in 1..=config.attempts {
        let mut request = client
            .post(&config.url)
            .header(header::CONTENT_TYPE.as_str(), "application/json")
            .header(EVENT_HEADER, event.kind.name())
            .body(body.clone());
        if let Some(secret) = &config.secret {
            request = request.header(
                SIGNATURE_HEADER,
                format!("sha256={}", sign_body(secret.current(), &body)),
            );
        }
        match request.send().await {
            Ok(r) if r.status().is_success() => return,
            outcome => {
                let why = match outcome {
                    Ok(r) => format!("answered {}", r.status()),
                    Err(e) => e.to_string(),
                };
                if attempt == config.attempts {
                    counts
                        .webhook_lost
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::error!(url = %config.url, fileid = %event.fileid, event = event.kind.name(), %why, "webhook gave up on an event");
                    return;
                }
                tracing::warn!(url = %config.url, attempt, %why, "webhook failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign_body("Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
