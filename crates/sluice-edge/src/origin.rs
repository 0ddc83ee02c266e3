//! The origin: a `sluice serve`, a storage node, or a tracker (whose 302 to a node of the
//! file's group is followed). With `SLUICE_URL_SECRET` set the edge signs its own requests,
//! so the cache is filled once for everyone whatever signature a client brought.
//!
//! Redirects are followed only to storage nodes that the origin or the edge's trackers list in
//! `GET /v1/cluster`: whatever an edge fetches it serves to everyone as a hit, so a redirect
//! to any other host would let whoever controls that host plant content in the cache.

use std::collections::HashSet;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::Url;
use sluice_proto::cluster::ClusterView;
use sluice_proto::{FileId, SecretSet};
use sluice_state::{LockRecover, RwLockRecover};

/// A slow origin is not a dead one, but a silent one is: a read that waits this long fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An origin that does not accept a connection this fast is down: fail fast, answer 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Signed origin requests are valid this long.
const SIGNED_FOR: u64 = 300;
/// Redirects followed for one request (a tracker's to a node is the one expected).
const MAX_REDIRECTS: usize = 3;
/// The node list is asked for again at most this often when a redirect names a stranger.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// Nodes tried for one fetch (the origin routing afresh after each that does not answer).
const NODE_ATTEMPTS: usize = 3;

/// Why a fetch failed: a node the origin sent us to did not answer, or anything else.
enum Failure {
    NodeDown(String, String),
    Other(String),
}

pub struct Origin {
    base: String,
    http: reqwest::Client,
    url_secret: Option<SecretSet>,
    nodes: NodeDirectory,
}

impl Origin {
    /// `trackers`: besides the origin itself, where the list of storage nodes comes from.
    pub fn new(
        base: &str,
        url_secret: Option<SecretSet>,
        trackers: &[String],
    ) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("origin {base:?} is not an http(s) URL"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        let mut sources = vec![base.clone()];
        sources.extend(trackers.iter().map(|t| t.trim_end_matches('/').to_owned()));
        sources.dedup();
        Ok(Self {
            base,
            http,
            url_secret,
            nodes: NodeDirectory {
                sources,
                known: RwLock::default(),
                refreshed: Mutex::new(None),
            },
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn file_url(&self, id: &FileId) -> String {
        let path = format!("/v1/files/{id}");
        match &self.url_secret {
            None => format!("{}{path}", self.base),
            Some(secret) => {
                let expires = sluice_http::access::now_unix() + SIGNED_FOR;
                let signed = sluice_proto::signature::sign_download(secret, &path, expires);
                format!("{}{signed}", self.base)
            }
        }
    }

    /// `GET` of a file, whole or with a client's `Range` header (already checked to parse),
    /// following redirects to listed storage nodes only. A node the origin sent us to that does
    /// not answer is reported to the trackers (which check, and route elsewhere) and the origin
    /// asked again.
    pub async fn get(&self, id: &FileId, range: Option<&str>) -> Result<reqwest::Response, String> {
        let mut last = String::new();
        for _ in 0..NODE_ATTEMPTS {
            match self.get_once(id, range).await {
                Err(Failure::NodeDown(node, why)) => {
                    self.nodes.report_unreachable(&self.http, &node).await;
                    last = why;
                }
                Err(Failure::Other(why)) => return Err(why),
                Ok(response) => return Ok(response),
            }
        }
        Err(last)
    }

    async fn get_once(
        &self,
        id: &FileId,
        range: Option<&str>,
    ) -> Result<reqwest::Response, Failure> {
        let mut url = self.file_url(id);
        for _ in 0..=MAX_REDIRECTS {
            let response = match self.send(&url, range).await {
                Ok(r) => r,
                // The origin itself is down: nothing to route round.
                Err(why) if url.starts_with(&self.base) => return Err(Failure::Other(why)),
                Err(why) => {
                    let node = Url::parse(&url)
                        .map(|u| u.origin().ascii_serialization())
                        .unwrap_or_default();
                    return Err(Failure::NodeDown(node, why));
                }
            };
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let target = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|location| Url::parse(&url).ok()?.join(location).ok())
                .ok_or_else(|| {
                    Failure::Other(format!(
                        "the origin answered {} without a Location",
                        response.status()
                    ))
                })?;
            if !self.may_follow(&target).await {
                tracing::warn!(%target, "origin redirected to a host no tracker lists; not followed");
                return Err(Failure::Other(format!(
                    "the origin redirected to {}, which no tracker lists as a storage node",
                    target.origin().ascii_serialization()
                )));
            }
            url = target.to_string();
        }
        Err(Failure::Other(
            "the origin redirected too many times".into(),
        ))
    }

    async fn send(&self, url: &str, range: Option<&str>) -> Result<reqwest::Response, String> {
        let mut last = String::new();
        // Twice: a pooled connection the origin (or the network) closed while idle fails the
        // first request sent on it, before any answer; a fresh connection then works.
        for _ in 0..2 {
            let mut request = self.http.get(url);
            if let Some(range) = range {
                request = request.header(reqwest::header::RANGE, range);
            }
            match request.send().await {
                Ok(response) => return Ok(response),
                Err(e) if e.is_connect() => return Err(describe(&e)),
                Err(e) => last = describe(&e),
            }
        }
        Err(last)
    }

    /// The origin itself, or a storage node the origin or a tracker lists.
    async fn may_follow(&self, target: &Url) -> bool {
        let host = target.origin().ascii_serialization();
        let base = Url::parse(&self.base).map(|b| b.origin().ascii_serialization());
        if base.as_deref() == Ok(host.as_str()) || self.nodes.lists(&host) {
            return true;
        }
        self.nodes.refresh(&self.http).await;
        self.nodes.lists(&host)
    }
}

/// The storage nodes' addresses (`scheme://host:port`), as the trackers list them.
struct NodeDirectory {
    /// Where `GET /v1/cluster` is asked: the origin and the edge's trackers.
    sources: Vec<String>,
    known: RwLock<HashSet<String>>,
    refreshed: Mutex<Option<Instant>>,
}

impl NodeDirectory {
    /// Tells every source (the trackers) that `node` did not answer; they check for themselves.
    async fn report_unreachable(&self, http: &reqwest::Client, node: &str) {
        let body = serde_json::json!({ "url": node });
        let reports = self.sources.iter().map(|source| {
            http.post(format!("{source}/v1/cluster/unreachable"))
                .json(&body)
                .timeout(CONNECT_TIMEOUT)
                .send()
        });
        futures_util::future::join_all(reports).await;
    }

    fn lists(&self, host: &str) -> bool {
        self.known.read_or_recover().contains(host)
    }

    /// Asks every source for its cluster view, unless that was done a moment ago.
    async fn refresh(&self, http: &reqwest::Client) {
        {
            let mut last = self.refreshed.lock_or_recover();
            if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let asks = self.sources.iter().map(|source| async move {
            let answer = http
                .get(format!("{source}/v1/cluster"))
                .timeout(CONNECT_TIMEOUT)
                .send()
                .await
                .ok()?;
            if !answer.status().is_success() {
                return None;
            }
            answer.json::<ClusterView>().await.ok()
        });
        let views: Vec<ClusterView> = futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if views.is_empty() {
            return;
        }
        let hosts: HashSet<String> = views
            .iter()
            .flat_map(|v| &v.groups)
            .flat_map(|g| &g.nodes)
            .filter_map(|n| Url::parse(&n.url).ok())
            .map(|u| u.origin().ascii_serialization())
            .collect();
        *self.known.write_or_recover() = hosts;
    }
}

fn describe(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message = format!("{message}: {s}");
        source = s.source();
    }
    message
}
