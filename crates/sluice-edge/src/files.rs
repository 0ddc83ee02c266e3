//! `GET|HEAD /v1/files/{fileid}` at an edge: a hit from the cache, or a miss served from the
//! file's fill as it arrives; a range far beyond what the fill has reached, and a file still
//! arriving at the origin, are proxied instead (never cached).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use sluice_http::files::{LocalRead, LocalSource, if_none_match, serve_local};
use sluice_proto::range::{ByteRange, RangeRequest};
use sluice_proto::{BlobKey, FileId};

use crate::fill::{Fill, FillState, OriginHead, Refusal};
use crate::{EdgeError, EdgeMetrics, EdgeState};

/// A range that starts further than this beyond what a fill has received is fetched from the
/// origin directly: a seek into an uncached video does not wait for the bytes before it.
const JOIN_WINDOW: u64 = 1 << 20;
/// Bytes read from a spool at a time.
const SPOOL_CHUNK: u64 = 256 * 1024;
/// Headers of an origin answer passed on when proxying.
const PASSED_ON: &[&str] = &[
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
    "cache-control",
    "sluice-complete",
    "sluice-received",
    "sluice-total",
];

pub(crate) async fn get_file(
    State(edge): State<EdgeState>,
    method: Method,
    uri: Uri,
    Path(text): Path<String>,
    headers: HeaderMap,
) -> Response {
    match serve(&edge, &method, &uri, &text, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    edge: &EdgeState,
    method: &Method,
    uri: &Uri,
    text: &str,
    headers: &HeaderMap,
) -> Result<Response, EdgeError> {
    edge.config().access.check_read(uri)?;
    let id = FileId::parse(text)
        .map_err(|e| EdgeError::BadRequest(format!("malformed file id: {e}")))?;
    let key = crate::cache::cache_key(&id);
    let etag = format!("\"{}\"", id.key);
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => {
            let text = v
                .to_str()
                .map_err(|_| EdgeError::BadRequest("malformed Range header".into()))?;
            ByteRange::parse(text).map_err(|e| EdgeError::BadRequest(e.to_string()))?;
            Some(text.to_owned())
        }
    };
    if let Some(response) = hit(edge, &id, key, &etag, method, headers).await? {
        return Ok(response);
    }
    EdgeMetrics::add(&edge.metrics().misses, 1);
    let fill = edge.fills().join_or_start(edge, &id, key);
    let mut watch = fill.watch();
    loop {
        let state = watch.borrow_and_update().clone();
        match state {
            FillState::Connecting => {
                // Until the size is known, only a range near the start waits for the fill.
                if range.as_deref().is_some_and(|r| !starts_near(r, 0)) {
                    return proxy(edge, &id, method, range.as_deref()).await;
                }
            }
            FillState::Receiving { head, received } => {
                let wanted = resolve(range.as_deref(), head.size);
                if let RangeRequest::Partial { start, .. } = wanted {
                    if start > received.saturating_add(JOIN_WINDOW) {
                        return proxy(edge, &id, method, range.as_deref()).await;
                    }
                }
                match from_spool(edge, &id, &fill, &head, wanted, &etag, (method, headers)) {
                    Some(response) => return response,
                    // The fill ended between our look and the open: look again.
                    None => continue,
                }
            }
            FillState::Done { .. } => {
                // Cached now (unless too large to cache): serve it like any hit.
                return match hit(edge, &id, key, &etag, method, headers).await? {
                    Some(response) => Ok(response),
                    None => proxy(edge, &id, method, range.as_deref()).await,
                };
            }
            FillState::Refused(Refusal::Incomplete | Refusal::NoSpool(_)) => {
                return proxy(edge, &id, method, range.as_deref()).await;
            }
            FillState::Refused(Refusal::Status { status, body }) => {
                return Err(EdgeError::Origin { status, body });
            }
            FillState::Refused(Refusal::Unavailable(why)) => {
                return Err(EdgeError::Unavailable(why));
            }
        }
        if watch.changed().await.is_err() {
            return Err(EdgeError::Internal);
        }
    }
}

/// Whether a Range header asks for bytes within [`JOIN_WINDOW`] of `from`.
fn starts_near(range: &str, from: u64) -> bool {
    match ByteRange::parse(range) {
        Ok(Some(ByteRange::From { first, .. })) => first <= from.saturating_add(JOIN_WINDOW),
        Ok(None) => true,
        _ => false,
    }
}

fn resolve(range: Option<&str>, size: u64) -> RangeRequest {
    sluice_proto::range::request_for(range, size).unwrap_or(RangeRequest::Full)
}

/// Answers from the cache, if the file is there whole.
async fn hit(
    edge: &EdgeState,
    id: &FileId,
    key: BlobKey,
    etag: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<Response>, EdgeError> {
    let store = edge.store();
    let source = match store.hot().get(&key) {
        Some(hot) => LocalSource::Hot(hot),
        None => match store.open_reader(key)? {
            Some(reader) => LocalSource::Disk(reader),
            None => return Ok(None),
        },
    };
    let read = LocalRead {
        key,
        etag,
        method,
        headers,
        active: edge.config().active_content,
    };
    // A damaged block, wherever in the file: the copy is fetched again from the origin and
    // the read goes on from the same byte of the new one. (Only a read from disk can meet
    // damage; the hot cache holds verified bytes.)
    let refetch = matches!(source, LocalSource::Disk(_)).then(|| -> sluice_http::files::Repair {
        let (edge, id) = (edge.clone(), id.clone());
        Arc::new(move || {
            let (edge, id) = (edge.clone(), id.clone());
            Box::pin(async move { refetch(&edge, &id, key).await })
        })
    });
    match serve_local(store, read, source, refetch).await {
        Ok(mut response) => {
            edge.cache().touch(key);
            let m = edge.metrics();
            EdgeMetrics::add(&m.hits, 1);
            if *method != Method::HEAD {
                let sent = content_length(&response);
                EdgeMetrics::add(&m.bytes_from_cache, sent);
            }
            response
                .headers_mut()
                .insert("sluice-cache", HeaderValue::from_static("hit"));
            Ok(Some(response))
        }
        Err(sluice_http::files::FileError::Corrupt) => {
            // A damaged copy is dropped and fetched again, never served.
            tracing::warn!("damaged cached file dropped");
            edge.cache().drop_file(store, key).await?;
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Drops a damaged cached copy and caches the file again (one fill, shared with any miss of
/// it); true once the new copy is in the cache.
async fn refetch(edge: &EdgeState, id: &FileId, key: BlobKey) -> bool {
    tracing::warn!(fileid = %id, "damaged cached copy; fetching it again from the origin");
    if let Err(e) = edge.cache().drop_file(edge.store(), key).await {
        tracing::error!(fileid = %id, error = %e, "could not drop a damaged cached copy");
        return false;
    }
    let fill = edge.fills().join_or_start(edge, id, key);
    let mut watch = fill.watch();
    loop {
        match &*watch.borrow_and_update() {
            FillState::Done { .. } => {
                return edge.store().stat(key).ok().flatten().is_some();
            }
            FillState::Refused(_) => return false,
            FillState::Connecting | FillState::Receiving { .. } => {}
        }
        if watch.changed().await.is_err() {
            return false;
        }
    }
}

fn content_length(response: &Response) -> u64 {
    response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Answers from a fill's spool: the head now, the bytes as the fill writes them. `None` if
/// the spool is gone (the fill just finished).
fn from_spool(
    edge: &EdgeState,
    id: &FileId,
    fill: &Arc<Fill>,
    head: &OriginHead,
    wanted: RangeRequest,
    etag: &str,
    (method, headers): (&Method, &HeaderMap),
) -> Option<Result<Response, EdgeError>> {
    let active = edge.config().active_content;
    let spool = match File::open(&fill.spool) {
        Ok(f) => Arc::new(f),
        Err(_) => return None,
    };
    let size = head.size;
    let builder = sluice_http::files::complete_file_head(&head.content_type, etag, active, None)
        .header("sluice-cache", "miss");
    if if_none_match(headers, etag) {
        return Some(sluice_http::files::not_modified(builder).map_err(EdgeError::from));
    }
    let (builder, start, end) = match sluice_http::files::with_range(builder, wanted, size) {
        Ok(ranged) => ranged,
        Err(e) => return Some(Err(e.into())),
    };
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        let source = Source::Spool {
            watch: fill.watch(),
            spool,
        };
        miss_body(edge.clone(), id.clone(), source, start, end)
    };
    Some(builder.body(body).map_err(|_| EdgeError::Internal))
}

/// Where a miss's bytes come from.
enum Source {
    /// The fill's spool, each byte once the fill has written it.
    Spool {
        watch: tokio::sync::watch::Receiver<FillState>,
        spool: Arc<File>,
    },
    /// The origin, asked for the rest after the fill failed under this client.
    Origin(futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>),
}

/// `start..end` of a file for a client that joined a fill. If the fill fails before the
/// client has its bytes (the edge's disk filled, the origin broke off), the rest is asked of
/// the origin from where the client is: a response that promised a length is cut short only
/// when the origin itself cannot give the rest.
fn miss_body(edge: EdgeState, id: FileId, source: Source, start: u64, end: u64) -> Body {
    let stream = futures_util::stream::try_unfold((source, start), move |(mut source, at)| {
        let (edge, id) = (edge.clone(), id.clone());
        async move {
            loop {
                if at >= end {
                    return Ok(None);
                }
                match &mut source {
                    Source::Spool { watch, spool } => {
                        let available = match &*watch.borrow_and_update() {
                            FillState::Receiving { received, .. } => Some(*received),
                            FillState::Done { head } => Some(head.size),
                            FillState::Refused(_) | FillState::Connecting => None,
                        };
                        let Some(available) = available else {
                            source = Source::Origin(rest_from_origin(&edge, &id, at, end).await?);
                            continue;
                        };
                        if at < available.min(end) {
                            let len = (available.min(end) - at).min(SPOOL_CHUNK) as usize;
                            let file = spool.clone();
                            let bytes = tokio::task::spawn_blocking(move || {
                                let mut buf = vec![0u8; len];
                                file.read_exact_at(&mut buf, at).map(|()| buf)
                            })
                            .await
                            .map_err(std::io::Error::other)??;
                            return Ok(Some((Bytes::from(bytes), (source, at + len as u64))));
                        }
                        if watch.changed().await.is_err() {
                            // The fill is gone without a last word: as if it failed.
                            source = Source::Origin(rest_from_origin(&edge, &id, at, end).await?);
                        }
                    }
                    Source::Origin(rest) => {
                        let chunk = match rest.next().await {
                            Some(chunk) => chunk?,
                            None => {
                                return Err(std::io::Error::other(format!(
                                    "the origin broke off at byte {at} of {end}"
                                )));
                            }
                        };
                        if chunk.len() as u64 > end - at {
                            return Err(std::io::Error::other("the origin sent too much"));
                        }
                        EdgeMetrics::add(&edge.metrics().bytes_from_origin, chunk.len() as u64);
                        let next = at + chunk.len() as u64;
                        return Ok(Some((chunk, (source, next))));
                    }
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// Asks the origin for `at..end` of a file whose fill failed under a client.
async fn rest_from_origin(
    edge: &EdgeState,
    id: &FileId,
    at: u64,
    end: u64,
) -> std::io::Result<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>> {
    tracing::info!(fileid = %id, at, "a fill failed under a client; the rest comes from the origin");
    EdgeMetrics::add(&edge.metrics().continuations, 1);
    EdgeMetrics::add(&edge.metrics().origin_fetches, 1);
    let range = format!("bytes={at}-{}", end - 1);
    let response = edge
        .origin()
        .get(id, Some(&range))
        .await
        .map_err(std::io::Error::other)?;
    let expected = format!("bytes {at}-{}/", end - 1);
    let answered = response
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if response.status() != reqwest::StatusCode::PARTIAL_CONTENT || !answered.starts_with(&expected)
    {
        return Err(std::io::Error::other(format!(
            "the origin answered {} ({answered}) for the rest of a failed fill",
            response.status()
        )));
    }
    Ok(response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other))
        .boxed())
}

/// Passes one request through to the origin (a far range, or a file still arriving there):
/// nothing is cached.
async fn proxy(
    edge: &EdgeState,
    id: &FileId,
    method: &Method,
    range: Option<&str>,
) -> Result<Response, EdgeError> {
    EdgeMetrics::add(&edge.metrics().origin_fetches, 1);
    let response = edge
        .origin()
        .get(id, range)
        .await
        .map_err(EdgeError::Unavailable)?;
    let status = response.status().as_u16();
    if status >= 500 {
        return Err(EdgeError::Unavailable(format!("origin answered {status}")));
    }
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut builder = sluice_http::content::with_file_headers(
        Response::builder(),
        &content_type,
        edge.config().active_content,
    )
    .status(status)
    .header("sluice-cache", "miss");
    for name in PASSED_ON {
        if let Some(v) = response.headers().get(*name) {
            builder = builder.header(*name, v.as_bytes());
        }
    }
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        let metrics_edge = edge.clone();
        Body::from_stream(response.bytes_stream().map(move |chunk| {
            if let Ok(c) = &chunk {
                EdgeMetrics::add(&metrics_edge.metrics().bytes_from_origin, c.len() as u64);
            }
            chunk
        }))
    };
    builder.body(body).map_err(|_| EdgeError::Internal)
}

/// `POST /v1/internal/preload/{fileid}` (trackers; the router admits only cluster calls): starts a fill so
/// the first real request is a hit. Answers at once.
pub(crate) async fn preload(
    State(edge): State<EdgeState>,
    Path(text): Path<String>,
) -> Result<StatusCode, EdgeError> {
    let id = FileId::parse(&text)
        .map_err(|e| EdgeError::BadRequest(format!("malformed file id: {e}")))?;
    let key = crate::cache::cache_key(&id);
    if edge.store().stat(key)?.is_none() {
        edge.fills().join_or_start(&edge, &id, key);
    }
    Ok(StatusCode::ACCEPTED)
}
