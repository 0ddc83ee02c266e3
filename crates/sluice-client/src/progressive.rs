//! The sender's side of progressive transfer: a tus upload in small PATCHes whose answers say
//! how much the server holds and, once the minimal transport size (MTS) has arrived, the file
//! id. The caller hears of the id at once ([`ProgressiveEvent::Committed`]) while the rest
//! goes on.
//!
//! Without a fixed q, the MTS is chosen from the throughput measured on the first PATCHes
//! (the article's dynamic MTS): aim for the id within the plan's budget (1.5 s by default,
//! [`DEFAULT_ID_BUDGET`]), never below
//! [`MIN_DYNAMIC_Q`] of the file (less is too blurry to be worth showing), never above all of
//! it.

use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_proto::tus::{FILE_ID_HEADER, OFFSET_OCTET_STREAM, TUS_VERSION, encode_metadata};

use crate::{Client, ClientError, check, send};

/// How soon the sender should be "done" on the link measured, unless the plan says otherwise.
pub const DEFAULT_ID_BUDGET: Duration = Duration::from_millis(1500);
/// The smallest share a dynamic MTS asks for: about the first two scans of a photo.
pub const MIN_DYNAMIC_Q: f64 = 0.2;
/// Bytes measured before the MTS is chosen (or the whole file, if smaller than twice this).
const MEASURE_BYTES: u64 = 32 * 1024;
/// Times a PATCH is retried (after asking the server where it stands) before giving up.
const PATCH_ATTEMPTS: usize = 4;

/// How to send one file.
#[derive(Debug, Clone)]
pub struct ProgressivePlan {
    /// The share that must arrive before the id, or `None` to choose it from the link.
    pub q: Option<f64>,
    /// Bytes per PATCH: each answer is an acknowledgement (and maybe the id).
    pub chunk: usize,
    /// Most bytes per second to send (`None`: as fast as the link goes).
    pub limit_rate: Option<u64>,
    /// With a dynamic MTS: how soon the id should come on the link measured.
    pub id_budget: Duration,
    pub filename: String,
    pub content_type: String,
    pub sender: Option<String>,
    pub receiver: Option<String>,
}

/// What happens during a progressive upload, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum ProgressiveEvent {
    /// The dynamic MTS was chosen after measuring the link.
    MtsChosen {
        q: f64,
        mts: u64,
        bytes_per_sec: f64,
    },
    /// The server acknowledged this many bytes.
    Acknowledged(u64),
    /// The file has its id: the sender is "done".
    Committed {
        fileid: String,
        acknowledged: u64,
        after: Duration,
    },
}

/// How the upload went.
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressiveOutcome {
    pub fileid: String,
    pub size: u64,
    pub time_to_id: Duration,
    pub time_to_complete: Duration,
    /// The q used: given, or chosen from the link.
    pub q: f64,
}

/// The q a dynamic MTS uses for a link of `bytes_per_sec`, a file of `len` bytes and the id
/// wanted within `budget`.
pub fn dynamic_q(bytes_per_sec: f64, len: u64, budget: Duration) -> f64 {
    if len == 0 || !bytes_per_sec.is_finite() {
        return 1.0;
    }
    let budget = bytes_per_sec * budget.as_secs_f64();
    (budget / len as f64).clamp(MIN_DYNAMIC_Q, 1.0)
}

impl Client {
    /// Sends `data` as a progressive upload; `events` hears of each step.
    pub async fn upload_progressive(
        &self,
        data: Bytes,
        plan: &ProgressivePlan,
        events: &mut dyn FnMut(ProgressiveEvent),
    ) -> Result<ProgressiveOutcome, ClientError> {
        let len = data.len() as u64;
        let started = Instant::now();
        // With a dynamic MTS, the upload starts committed-at-the-end and the MTS is set by a
        // later PATCH (`Sluice-Mts`), once the link has been measured.
        let (q_meta, mut q) = match plan.q {
            Some(q) => (format!("{q}"), q),
            None => ("1".to_owned(), 1.0),
        };
        let mut metadata = vec![
            ("filename", plan.filename.as_str()),
            ("content-type", plan.content_type.as_str()),
            ("q", q_meta.as_str()),
        ];
        if let Some(s) = &plan.sender {
            metadata.push(("sender", s));
        }
        if let Some(r) = &plan.receiver {
            metadata.push(("receiver", r));
        }
        let upload = self.create_upload(len, &encode_metadata(metadata)).await?;
        let upload_url = upload.url.clone();

        let chunk = plan.chunk.max(1) as u64;
        let mut offset = 0u64;
        let mut fileid: Option<String> = None;
        let mut time_to_id = None;
        let mut mts_to_send = None;
        let mut measured = plan.q.is_some();
        while offset < len || fileid.is_none() {
            let end = (offset + chunk).min(len);
            if let Some(rate) = plan.limit_rate {
                // Send no faster than `rate`: a chunk goes once its last byte is due, so its
                // acknowledgement never comes sooner than the link would allow.
                let due = Duration::from_secs_f64(end as f64 / rate.max(1) as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    tokio::time::sleep(wait).await;
                }
            }
            let body = data.slice(offset as usize..end as usize);
            let answer = self
                .patch_with_retry(&upload, offset, body, mts_to_send.take())
                .await?;
            offset = answer.offset;
            events(ProgressiveEvent::Acknowledged(offset));
            if fileid.is_none() {
                if let Some(id) = answer.fileid {
                    let after = started.elapsed();
                    events(ProgressiveEvent::Committed {
                        fileid: id.clone(),
                        acknowledged: offset,
                        after,
                    });
                    time_to_id = Some(after);
                    fileid = Some(id);
                }
            }
            if !measured && (offset >= MEASURE_BYTES || offset * 2 >= len) {
                measured = true;
                let bytes_per_sec = offset as f64 / started.elapsed().as_secs_f64().max(1e-6);
                q = dynamic_q(bytes_per_sec, len, plan.id_budget);
                let mts = ((len as f64 * q).ceil() as u64).min(len);
                events(ProgressiveEvent::MtsChosen {
                    q,
                    mts,
                    bytes_per_sec,
                });
                mts_to_send = Some(mts);
            }
            if offset >= len && fileid.is_none() {
                return Err(ClientError::Transport {
                    url: upload_url,
                    message: "the server took every byte but gave no file id".into(),
                });
            }
        }
        let time_to_complete = started.elapsed();
        Ok(ProgressiveOutcome {
            fileid: fileid.unwrap_or_default(),
            size: len,
            time_to_id: time_to_id.unwrap_or(time_to_complete),
            time_to_complete,
            q,
        })
    }

    /// `POST /v1/uploads`; returns the upload's absolute URL (a tracker's 307 is followed, and
    /// the node answers with its own URL).
    async fn create_upload(&self, len: u64, metadata: &str) -> Result<UploadUrl, ClientError> {
        let url = format!("{}/v1/uploads", self.base);
        let request = self.authorised(
            self.http
                .post(&url)
                .header("tus-resumable", TUS_VERSION)
                .header("upload-length", len)
                .header("upload-metadata", metadata),
        );
        let response = check(send(request, &url).await?, &url).await?;
        let final_url = response.url().clone();
        // A tracker's redirect goes to a node it chose, with a signed link: the upload it
        // creates needs no token, and the token stays with the tracker.
        let redirected = final_url.as_str() != url;
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Transport {
                url: url.clone(),
                message: "the server created an upload but sent no Location".into(),
            })?;
        let upload_url = final_url
            .join(location)
            .map_err(|e| ClientError::Transport {
                url,
                message: format!("bad Location {location:?}: {e}"),
            })?;
        Ok(UploadUrl {
            url: upload_url.to_string(),
            with_token: !redirected,
        })
    }

    /// One PATCH; on a failure that may be the network's, asks the server where the upload
    /// stands and goes on from there.
    async fn patch_with_retry(
        &self,
        upload: &UploadUrl,
        offset: u64,
        body: Bytes,
        mts: Option<u64>,
    ) -> Result<PatchAnswer, ClientError> {
        let url = upload.url.as_str();
        let mut offset = offset;
        let mut body = body;
        let end = offset + body.len() as u64;
        let mut last = None;
        for attempt in 0..PATCH_ATTEMPTS {
            match self.patch_once(upload, offset, body.clone(), mts).await {
                Ok(answer) => return Ok(answer),
                Err(e) if e.is_unreachable() || matches!(e.status(), Some(409 | 423)) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    // Resume from what the server holds.
                    let held = self.upload_offset(upload).await?;
                    if held >= end {
                        return self.patch_once(upload, held, Bytes::new(), mts).await;
                    }
                    if held < offset || held > end {
                        return Err(last.unwrap_or_else(|| ClientError::Transport {
                            url: url.to_owned(),
                            message: format!("the server holds {held} bytes, not {offset}"),
                        }));
                    }
                    body = body.slice((held - offset) as usize..);
                    offset = held;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::BadUrl(url.to_owned())))
    }

    async fn patch_once(
        &self,
        upload: &UploadUrl,
        offset: u64,
        body: Bytes,
        mts: Option<u64>,
    ) -> Result<PatchAnswer, ClientError> {
        let url = upload.url.as_str();
        let mut request = self
            .http
            .patch(url)
            .header("tus-resumable", TUS_VERSION)
            .header("upload-offset", offset)
            .header(reqwest::header::CONTENT_TYPE, OFFSET_OCTET_STREAM)
            .body(body);
        if let Some(mts) = mts {
            request = request.header("sluice-mts", mts);
        }
        let response = check(send(upload.authorised(self, request), url).await?, url).await?;
        PatchAnswer::from_headers(response.headers(), url)
    }

    /// `HEAD` of an upload: how many bytes the server holds.
    async fn upload_offset(&self, upload: &UploadUrl) -> Result<u64, ClientError> {
        let url = upload.url.as_str();
        let request = upload.authorised(
            self,
            self.http.head(url).header("tus-resumable", TUS_VERSION),
        );
        let response = check(send(request, url).await?, url).await?;
        Ok(PatchAnswer::from_headers(response.headers(), url)?.offset)
    }
}

/// Where an upload's PATCHes go, and whether the API token goes with them: only to the server
/// this client was pointed at, never to a node a tracker chose.
struct UploadUrl {
    url: String,
    with_token: bool,
}

impl UploadUrl {
    fn authorised(
        &self,
        client: &Client,
        request: reqwest::RequestBuilder,
    ) -> reqwest::RequestBuilder {
        if self.with_token {
            client.authorised(request)
        } else {
            request
        }
    }
}

struct PatchAnswer {
    offset: u64,
    fileid: Option<String>,
}

impl PatchAnswer {
    fn from_headers(headers: &reqwest::header::HeaderMap, url: &str) -> Result<Self, ClientError> {
        let offset = headers
            .get("upload-offset")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| ClientError::Transport {
                url: url.to_owned(),
                message: "the answer has no Upload-Offset".into(),
            })?;
        let fileid = headers
            .get(FILE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        Ok(Self { offset, fileid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_q_aims_for_the_budget_within_bounds() {
        // 100 KB/s, 1 MB file: 150 KB in the budget → q = 0.15, raised to the floor.
        let b = DEFAULT_ID_BUDGET;
        assert_eq!(dynamic_q(100_000.0, 1_000_000, b), MIN_DYNAMIC_Q);
        // 200 KB/s, 1 MB: 300 KB → 0.3.
        assert!((dynamic_q(200_000.0, 1_000_000, b) - 0.3).abs() < 1e-9);
        // A fast link sends it all within the budget.
        assert_eq!(dynamic_q(50e6, 1_000_000, b), 1.0);
        assert_eq!(dynamic_q(f64::INFINITY, 10, b), 1.0);
        assert_eq!(dynamic_q(1.0, 0, b), 1.0);
    }
}
