//! The origin: a `sluice serve`, a storage node, or a tracker (whose 302 to a node of the
//! file's group is followed). With `SLUICE_URL_SECRET` set the edge signs its own requests,
//! so the cache is filled once for everyone whatever signature a client brought.

use std::time::Duration;

use sluice_proto::{FileId, SecretSet};

/// A slow origin is not a dead one, but a silent one is: a read that waits this long fails.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// An origin that does not accept a connection this fast is down: fail fast, answer 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Signed origin requests are valid this long.
const SIGNED_FOR: u64 = 300;

pub struct Origin {
    base: String,
    http: reqwest::Client,
    url_secret: Option<SecretSet>,
}

impl Origin {
    pub fn new(base: &str, url_secret: Option<SecretSet>) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("origin {base:?} is not an http(s) URL"));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(256)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            base,
            http,
            url_secret,
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

    /// `GET` of a file, whole or with a client's `Range` header (already checked to parse).
    pub async fn get(&self, id: &FileId, range: Option<&str>) -> Result<reqwest::Response, String> {
        let mut last = String::new();
        // Twice: a pooled connection the origin (or the network) closed while idle fails the
        // first request sent on it, before any answer; a fresh connection then works.
        for _ in 0..2 {
            let mut request = self.http.get(self.file_url(id));
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
