//! A client of a cluster: several trackers, failing over between them, and uploads retried on
//! another node when the one assigned does not answer.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_proto::UploadResponse;
use sluice_proto::cluster::Assignment;

use crate::{Client, ClientError, FileStat};

/// Upload attempts (each on a freshly assigned node) before giving up.
const UPLOAD_ATTEMPTS: usize = 5;
/// Read attempts (each on a node the trackers route to afresh) before giving up.
const READ_ATTEMPTS: usize = 4;

/// Where requests go: one server, or any of several trackers.
#[derive(Clone)]
pub enum Endpoint {
    Server(Client),
    Trackers(TrackerSet),
}

#[derive(Clone)]
pub struct TrackerSet {
    /// Each with the API token: trackers are the only servers it is sent to (nodes get the
    /// signed upload links trackers hand out instead).
    trackers: Arc<Vec<Client>>,
    /// The tracker to try first; moves on when one fails, so a dead tracker costs one try.
    first: Arc<AtomicUsize>,
}

impl TrackerSet {
    pub fn new(urls: &[String], token: Option<String>) -> Result<Self, ClientError> {
        if urls.is_empty() {
            return Err(ClientError::BadUrl(String::new()));
        }
        let trackers = urls
            .iter()
            .map(|u| Client::new(u).map(|c| c.with_token(token.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trackers: Arc::new(trackers),
            first: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Runs `call` against each tracker in turn until one answers; server errors other than
    /// unavailability are answers too (a 404 is the same from every tracker).
    async fn any<T, F, Fut>(&self, call: F) -> Result<T, ClientError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let n = self.trackers.len();
        let start = self.first.load(Ordering::Relaxed);
        let mut last = None;
        for i in 0..n {
            let idx = (start + i) % n;
            match call(self.trackers[idx].clone()).await {
                Err(e) if e.is_unreachable() => {
                    self.first.store((idx + 1) % n, Ordering::Relaxed);
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::BadUrl(String::new())))
    }

    pub async fn assign(&self, size: Option<u64>) -> Result<Assignment, ClientError> {
        self.any(|t| async move { t.assign(size).await }).await
    }

    /// Tells the trackers a node did not answer, so they stop choosing it (each checks first).
    pub async fn report_unreachable(&self, node: &str) {
        let reports = self.trackers.iter().map(|t| t.report_unreachable(node));
        futures_util::future::join_all(reports).await;
    }

    /// Reads `fileid` through the trackers: one says which node (its redirect), `read` goes
    /// there with the tracker's client. A node that does not answer, or breaks off, is
    /// reported (the trackers check and stop routing to it) and the trackers asked again, so a
    /// node that dies costs a read a retry on a peer, not a failure.
    async fn read<T, F, Fut>(&self, fileid: &str, read: F) -> Result<T, ClientError>
    where
        F: Fn(Client, String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            let (tracker, node_url) = self
                .any(|t| async move {
                    let url = t.locate(fileid).await?;
                    Ok((t, url))
                })
                .await?;
            match read(tracker, node_url.clone()).await {
                Err(e @ ClientError::Transport { .. }) => {
                    if let Some(node) = origin_of(&node_url) {
                        self.report_unreachable(&node).await;
                    }
                    last = Some(e);
                }
                // The node answered but could not serve it (a damaged copy it could not
                // repair, a full disk): the trackers route in turn, so asking again reaches
                // a peer, which may hold a good copy.
                Err(e) if e.status().is_some_and(|s| s >= 500) => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::BadUrl(String::new())))
    }

    /// Deletes `fileid` at the node a tracker names; a node that does not answer is reported
    /// and the trackers asked again, as for reads. A retry that finds the file deleted (410)
    /// is a success: the first try's answer was lost, not its work.
    async fn delete(&self, fileid: &str) -> Result<(), ClientError> {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            let (tracker, link) = self
                .any(|t| async move {
                    let link = t.locate_delete(fileid).await?;
                    Ok((t, link))
                })
                .await?;
            let Some(link) = link else {
                return Ok(());
            };
            match tracker.delete_at(&link).await {
                Err(e @ ClientError::Transport { .. }) => {
                    if let Some(node) = origin_of(&link) {
                        self.report_unreachable(&node).await;
                    }
                    last = Some(e);
                }
                Err(e) if last.is_some() && e.status() == Some(410) => return Ok(()),
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::BadUrl(String::new())))
    }
}

/// `scheme://host:port` of a URL: how a node's address is known to the trackers.
fn origin_of(url: &str) -> Option<String> {
    reqwest::Url::parse(url)
        .ok()
        .map(|u| u.origin().ascii_serialization())
}

impl Endpoint {
    /// A progressive upload: to the server, or created at the first tracker that answers (its
    /// 307 sends the creation to a node, whose own URL takes the PATCHes).
    pub async fn upload_progressive(
        &self,
        data: bytes::Bytes,
        plan: &crate::progressive::ProgressivePlan,
        events: &mut dyn FnMut(crate::progressive::ProgressiveEvent),
    ) -> Result<crate::progressive::ProgressiveOutcome, ClientError> {
        let trackers = match self {
            Endpoint::Server(c) => return c.upload_progressive(data, plan, events).await,
            Endpoint::Trackers(t) => t,
        };
        let mut last = None;
        for tracker in trackers.trackers.iter() {
            let mut committed = false;
            let mut watch = |e: crate::progressive::ProgressiveEvent| {
                committed |= matches!(e, crate::progressive::ProgressiveEvent::Committed { .. });
                events(e)
            };
            match tracker
                .upload_progressive(data.clone(), plan, &mut watch)
                .await
            {
                // Once the id is out the file is that one: no starting over elsewhere.
                Err(e) if e.is_unreachable() && !committed => last = Some(e),
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::BadUrl(String::new())))
    }

    /// Signs reads with `SLUICE_URL_SECRET` (every client of this endpoint).
    pub fn with_url_secret(self, secret: Option<sluice_proto::SecretSet>) -> Self {
        match self {
            Endpoint::Server(c) => Endpoint::Server(c.with_url_secret(secret)),
            Endpoint::Trackers(t) => Endpoint::Trackers(TrackerSet {
                trackers: Arc::new(
                    t.trackers
                        .iter()
                        .map(|c| c.clone().with_url_secret(secret.clone()))
                        .collect(),
                ),
                first: t.first,
            }),
        }
    }

    /// `token`: `SLUICE_API_TOKEN`, sent on writes.
    pub fn new(
        server: Option<&str>,
        trackers: &[String],
        token: Option<String>,
    ) -> Result<Self, ClientError> {
        match server {
            Some(s) => Ok(Endpoint::Server(Client::new(s)?.with_token(token))),
            None => Ok(Endpoint::Trackers(TrackerSet::new(trackers, token)?)),
        }
    }

    /// Uploads a file; through trackers, asks for a node and, if that node fails before
    /// acknowledging, asks again (trackers stop choosing a node once it misses heartbeats).
    pub async fn upload_file(
        &self,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + Clone + 'static,
    ) -> Result<UploadResponse, ClientError> {
        let trackers = match self {
            Endpoint::Server(c) => return c.upload_file(path, progress).await,
            Endpoint::Trackers(t) => t,
        };
        let size = tokio::fs::metadata(path).await.ok().map(|m| m.len());
        let mut last = None;
        for attempt in 0..UPLOAD_ATTEMPTS {
            let assignment = match trackers.assign(size).await {
                Ok(a) => a,
                // No group writable this moment (a node just failed, its group re-syncing):
                // back off briefly and ask again.
                Err(e) if e.status() == Some(503) && attempt + 1 < UPLOAD_ATTEMPTS => {
                    tokio::time::sleep(std::time::Duration::from_millis(200 << attempt)).await;
                    last = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let base = assignment.url.trim_end_matches("/v1/files");
            // The token never goes to the node: with tokens in use the tracker signed a link
            // for this upload; without them none is needed.
            let node = Client::new(base)?;
            let target = assignment.upload_url.as_deref().unwrap_or(&assignment.url);
            match node
                .upload_file_to(target, false, path, progress.clone())
                .await
            {
                Err(e) if e.is_unreachable() => {
                    if matches!(e, ClientError::Transport { .. }) {
                        trackers.report_unreachable(base).await;
                    }
                    last = Some(e);
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(ClientError::BadUrl(String::new())))
    }

    pub async fn download_to(
        &self,
        fileid: &str,
        path: &Path,
        progress: impl Fn(u64, Option<u64>) + Clone,
    ) -> Result<u64, ClientError> {
        match self {
            Endpoint::Server(c) => c.download_to(fileid, path, progress).await,
            Endpoint::Trackers(t) => {
                t.read(fileid, |c, url| {
                    let progress = progress.clone();
                    async move { c.download_at(&url, path, progress).await }
                })
                .await
            }
        }
    }

    /// A whole file, in memory.
    pub async fn download_bytes(&self, fileid: &str) -> Result<bytes::Bytes, ClientError> {
        match self {
            Endpoint::Server(c) => c.download_bytes(fileid).await,
            Endpoint::Trackers(t) => {
                t.read(
                    fileid,
                    |c, url| async move { c.download_bytes_at(&url).await },
                )
                .await
            }
        }
    }

    pub async fn stat(&self, fileid: &str) -> Result<FileStat, ClientError> {
        match self {
            Endpoint::Server(c) => c.stat(fileid).await,
            Endpoint::Trackers(t) => {
                t.read(
                    fileid,
                    |c, url| async move { c.stat_at(fileid, &url).await },
                )
                .await
            }
        }
    }

    pub async fn delete(&self, fileid: &str) -> Result<(), ClientError> {
        match self {
            Endpoint::Server(c) => c.delete(fileid).await,
            Endpoint::Trackers(t) => t.delete(fileid).await,
        }
    }
}
