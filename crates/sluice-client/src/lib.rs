//! Async client for Sluice's HTTP API, used by the CLI, the benchmark and tests; and the load
//! generator behind `sluice bench`.

pub mod bench;
pub mod cluster;
mod content_type;
pub mod live_bench;
pub mod progressive;

use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use sluice_proto::{ErrorBody, UploadResponse};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use content_type::guess_content_type;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url}: {status}: {message}")]
    Server {
        url: String,
        status: u16,
        message: String,
    },
    /// The server could not be reached, or a transfer with it broke off: `message` says which.
    #[error("{message} ({url})")]
    Transport { url: String, message: String },
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("bad server URL {0:?}: use http://HOST:PORT")]
    BadUrl(String),
}

impl ClientError {
    /// The server could not be reached, or answered that it cannot serve now: worth trying
    /// another.
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Transport { .. } => true,
            ClientError::Server { status, .. } => matches!(status, 502..=504),
            _ => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Server { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// What `HEAD /v1/files/{id}` says of a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileStat {
    pub fileid: String,
    pub size: u64,
    pub content_type: String,
    pub etag: String,
    pub last_modified: Option<String>,
}

/// A client of one server (a storage node, or `sluice serve`).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The same, following no redirect: to ask a tracker where a file is.
    direct: reqwest::Client,
    base: String,
    /// `SLUICE_API_TOKEN`, sent on writes when set.
    token: Option<String>,
    /// `SLUICE_URL_SECRET`, which signs this client's own reads when set.
    url_secret: Option<sluice_proto::SecretSet>,
}

const READ_CHUNK: usize = 256 * 1024;
/// How long the links this client signs for its own reads stay valid (checked when a request
/// begins; room for clocks a few minutes apart).
const READ_LINK_TTL: u64 = 300;

impl Client {
    pub fn new(server: &str) -> Result<Self, ClientError> {
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) || base.len() < 8 {
            return Err(ClientError::BadUrl(server.to_owned()));
        }
        let build = |redirects: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .tcp_nodelay(true)
                .connect_timeout(std::time::Duration::from_secs(10))
                .redirect(redirects)
                .build()
                .map_err(|e| ClientError::Transport {
                    url: base.clone(),
                    message: e.to_string(),
                })
        };
        Ok(Self {
            http: build(reqwest::redirect::Policy::default())?,
            direct: build(reqwest::redirect::Policy::none())?,
            base,
            token: None,
            url_secret: None,
        })
    }

    /// Sends `Authorization: Bearer TOKEN` on uploads and deletes.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Signs this client's reads with `secret` (short-lived links made per request), for
    /// servers that need signed links.
    pub fn with_url_secret(mut self, secret: Option<sluice_proto::SecretSet>) -> Self {
        self.url_secret = secret;
        self
    }

    fn file_url(&self, fileid: &str) -> String {
        format!("{}/v1/files/{fileid}", self.base)
    }

    /// The URL to read a file at: signed when this client holds the URL secret.
    fn read_url(&self, fileid: &str) -> String {
        let path = format!("/v1/files/{fileid}");
        match &self.url_secret {
            None => format!("{}{path}", self.base),
            Some(secret) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                let signed =
                    sluice_proto::signature::sign_download(secret, &path, now + READ_LINK_TTL);
                format!("{}{signed}", self.base)
            }
        }
    }

    /// Uploads bytes held in memory.
    pub async fn upload_bytes(
        &self,
        data: Bytes,
        content_type: &str,
    ) -> Result<UploadResponse, ClientError> {
        let url = format!("{}/v1/files", self.base);
        let request = self.authorised(
            self.http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(data),
        );
        let response = send(request, &url).await?;
        json(response, &url).await
    }

    /// Streams a file from disk; `progress` is called with the bytes sent so far.
    pub async fn upload_file(
        &self,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<UploadResponse, ClientError> {
        let url = format!("{}/v1/files", self.base);
        self.upload_file_to(&url, true, path, progress).await
    }

    /// Streams a file to `url` (this server's `/v1/files`, or a signed upload link a tracker
    /// handed out, which needs no token: `with_token` false keeps it here).
    pub async fn upload_file_to(
        &self,
        url: &str,
        with_token: bool,
        path: &Path,
        progress: impl Fn(u64) + Send + Sync + 'static,
    ) -> Result<UploadResponse, ClientError> {
        let file_err = |source| ClientError::File {
            path: path.display().to_string(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(file_err)?;
        let len = file.metadata().await.map_err(file_err)?.len();
        let progress = std::sync::Arc::new(progress);
        let stream = futures_util::stream::try_unfold((file, 0u64), move |(mut file, sent)| {
            let progress = progress.clone();
            let mut buf = vec![0u8; READ_CHUNK];
            async move {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(None);
                }
                buf.truncate(n);
                let sent = sent + n as u64;
                progress(sent);
                Ok(Some((Bytes::from(buf), (file, sent))))
            }
        });
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, guess_content_type(path))
            .header(reqwest::header::CONTENT_LENGTH, len)
            .body(reqwest::Body::wrap_stream(stream));
        if with_token {
            request = self.authorised(request);
        }
        let response = send(request, url).await?;
        json(response, url).await
    }

    /// Downloads a file into memory.
    pub async fn download_bytes(&self, fileid: &str) -> Result<Bytes, ClientError> {
        self.download_bytes_at(&self.read_url(fileid)).await
    }

    /// Downloads what `url` (a file's URL) answers into memory.
    pub async fn download_bytes_at(&self, url: &str) -> Result<Bytes, ClientError> {
        let response = check(send(self.http.get(url), url).await?, url).await?;
        response.bytes().await.map_err(|e| transport(url, e))
    }

    /// Where a tracker sends a read of `fileid`: the node URL of its redirect (the query, a
    /// signature say, kept).
    pub async fn locate(&self, fileid: &str) -> Result<String, ClientError> {
        let url = self.read_url(fileid);
        let response = send(self.direct.get(&url), &url).await?;
        if !response.status().is_redirection() {
            // A server that holds files itself (not a tracker) answers here.
            return check(response, &url).await.map(|_| url);
        }
        response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .map(|u| u.to_string())
            .ok_or_else(|| ClientError::Transport {
                url,
                message: "the tracker's redirect has no Location".into(),
            })
    }

    /// Downloads a file to `path` (written beside it, then renamed, so a failed download leaves
    /// no partial file under the final name), or to stdout when `path` is `-`.
    pub async fn download_to(
        &self,
        fileid: &str,
        path: &Path,
        progress: impl Fn(u64, Option<u64>),
    ) -> Result<u64, ClientError> {
        self.download_at(&self.read_url(fileid), path, progress)
            .await
    }

    /// [`Self::download_to`] from `url` (a file's URL).
    pub async fn download_at(
        &self,
        url: &str,
        path: &Path,
        progress: impl Fn(u64, Option<u64>),
    ) -> Result<u64, ClientError> {
        let url = url.to_owned();
        let response = check(send(self.http.get(&url), &url).await?, &url).await?;
        let total = response.content_length();
        let to_stdout = path.as_os_str() == "-";
        let part = path.with_extension(match path.extension() {
            Some(ext) => format!("{}.part", ext.to_string_lossy()),
            None => "part".into(),
        });
        let file_err = |p: &Path| {
            let p = p.display().to_string();
            move |source| ClientError::File { path: p, source }
        };
        let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = if to_stdout {
            Box::new(tokio::io::stdout())
        } else {
            Box::new(
                tokio::fs::File::create(&part)
                    .await
                    .map_err(file_err(&part))?,
            )
        };
        let mut received = 0u64;
        let mut body = response.bytes_stream();
        let result = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| transport(&url, e))?;
                out.write_all(&chunk).await.map_err(file_err(path))?;
                received += chunk.len() as u64;
                progress(received, total);
            }
            out.flush().await.map_err(file_err(path))?;
            if total.is_some_and(|t| t != received) {
                return Err(ClientError::Transport {
                    url: url.clone(),
                    message: format!(
                        "the transfer broke off after {received} of {} bytes",
                        total.unwrap_or(0)
                    ),
                });
            }
            Ok(())
        }
        .await;
        drop(out);
        if to_stdout {
            return result.map(|()| received);
        }
        match result {
            Ok(()) => {
                tokio::fs::rename(&part, path)
                    .await
                    .map_err(file_err(path))?;
                Ok(received)
            }
            Err(e) => {
                let _ = tokio::fs::remove_file(&part).await;
                Err(e)
            }
        }
    }

    /// `POST /v1/cluster/unreachable` to a tracker; best effort, errors ignored.
    pub async fn report_unreachable(&self, node: &str) {
        let url = format!("{}/v1/cluster/unreachable", self.base);
        let body = serde_json::json!({ "url": node });
        let _ = self.http.post(&url).json(&body).send().await;
    }

    /// `DELETE /v1/cluster/nodes/{id}` on a tracker: retires a node for good.
    pub async fn retire_node(
        &self,
        node: &str,
        force: bool,
        secret: Option<&str>,
    ) -> Result<(), ClientError> {
        let url = format!("{}/v1/cluster/nodes/{node}?force={force}", self.base);
        let mut request = self.http.delete(&url);
        if let Some(secret) = secret {
            request = request.header(sluice_proto::cluster::CLUSTER_SECRET_HEADER, secret);
        }
        check(send(request, &url).await?, &url).await?;
        Ok(())
    }

    /// `GET /v1/assign` of a tracker: where to send an upload of `size` bytes. With the API
    /// token, the answer carries a signed upload link for the node it chose.
    pub async fn assign(
        &self,
        size: Option<u64>,
    ) -> Result<sluice_proto::cluster::Assignment, ClientError> {
        let url = match size {
            Some(n) => format!("{}/v1/assign?size={n}", self.base),
            None => format!("{}/v1/assign", self.base),
        };
        let response = send(self.authorised(self.http.get(&url)), &url).await?;
        json(response, &url).await
    }

    /// `GET /v1/cluster` of a tracker (or `sluice serve`).
    pub async fn cluster(&self) -> Result<sluice_proto::cluster::ClusterView, ClientError> {
        let url = format!("{}/v1/cluster", self.base);
        let response = send(self.http.get(&url), &url).await?;
        json(response, &url).await
    }

    pub async fn delete(&self, fileid: &str) -> Result<(), ClientError> {
        let url = self.file_url(fileid);
        check(
            send(self.authorised(self.http.delete(&url)), &url).await?,
            &url,
        )
        .await?;
        Ok(())
    }

    /// Asks a tracker where to delete a file: the delete link it signed for the node that
    /// holds it, or `None` when the server asked deleted the file itself (`sluice serve`).
    pub async fn locate_delete(&self, fileid: &str) -> Result<Option<String>, ClientError> {
        let url = self.file_url(fileid);
        let response = send(self.authorised(self.direct.delete(&url)), &url).await?;
        if !response.status().is_redirection() {
            check(response, &url).await?;
            return Ok(None);
        }
        response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|l| response.url().join(l).ok())
            .map(|u| Some(u.to_string()))
            .ok_or_else(|| ClientError::Transport {
                url,
                message: "the tracker's redirect has no Location".into(),
            })
    }

    /// Deletes at a link a tracker gave (signed: no credential of ours goes with it).
    pub async fn delete_at(&self, url: &str) -> Result<(), ClientError> {
        check(send(self.http.delete(url), url).await?, url).await?;
        Ok(())
    }

    pub async fn stat(&self, fileid: &str) -> Result<FileStat, ClientError> {
        self.stat_at(fileid, &self.read_url(fileid)).await
    }

    /// [`Self::stat`] of `fileid` at `url`.
    pub async fn stat_at(&self, fileid: &str, url: &str) -> Result<FileStat, ClientError> {
        let url = url.to_owned();
        let response = send(self.http.head(&url), &url).await?;
        if !response.status().is_success() {
            let status = response.status();
            // HEAD answers carry no body; name the status in words.
            return Err(ClientError::Server {
                url,
                status: status.as_u16(),
                message: status.canonical_reason().unwrap_or("error").to_lowercase(),
            });
        }
        let h = response.headers();
        let text = |name: reqwest::header::HeaderName| {
            h.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        Ok(FileStat {
            fileid: fileid.to_owned(),
            size: text(reqwest::header::CONTENT_LENGTH)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            content_type: text(reqwest::header::CONTENT_TYPE).unwrap_or_default(),
            etag: text(reqwest::header::ETAG).unwrap_or_default(),
            last_modified: text(reqwest::header::LAST_MODIFIED),
        })
    }
}

fn transport(url: &str, e: reqwest::Error) -> ClientError {
    // reqwest's own text repeats the URL ("error sending request for url (...)"); its causes
    // say what failed ("tcp connect error: Connection refused"). Keep the causes, once each.
    let mut causes: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !causes
            .iter()
            .any(|c| c.contains(&text) || text.contains(c.as_str()))
        {
            causes.push(text);
        }
        source = s.source();
    }
    let what = if e.is_connect() {
        "cannot reach the server"
    } else if e.is_timeout() {
        "the server did not answer in time"
    } else if e.is_body() || e.is_decode() {
        "the transfer broke off"
    } else {
        "the request failed"
    };
    let message = match causes.last() {
        Some(cause) => format!("{what}: {cause}"),
        None => format!("{what}: {e}"),
    };
    ClientError::Transport {
        url: url.to_owned(),
        message,
    }
}

async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<reqwest::Response, ClientError> {
    request.send().await.map_err(|e| transport(url, e))
}

/// Turns a non-2xx answer into `ClientError::Server` with the server's `{"error"}` text.
async fn check(response: reqwest::Response, url: &str) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .map(|b| b.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&body).chars().take(200).collect());
    Err(ClientError::Server {
        url: url.to_owned(),
        status: status.as_u16(),
        message,
    })
}

async fn json<T: serde::de::DeserializeOwned>(
    response: reqwest::Response,
    url: &str,
) -> Result<T, ClientError> {
    let response = check(response, url).await?;
    let body = response.bytes().await.map_err(|e| transport(url, e))?;
    serde_json::from_slice(&body).map_err(|e| ClientError::Transport {
        url: url.to_owned(),
        message: format!("unexpected answer: {e}"),
    })
}
