//! File responses, the same on storage nodes and edges: the headers every file carries,
//! conditional requests (`If-None-Match`, `If-Range`), ranges (206/416), HEAD, and streaming a
//! complete file from a local blob store, verified block by block and repaired mid-read.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, response};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use sluice_blob::{BlobError, BlobMeta, BlobReader, BlobStore, CHUNK_BYTES, Chunk, HotFile};
use sluice_proto::BlobKey;
use sluice_proto::range::{RangeRequest, request_for};

use crate::ActiveContent;
use crate::errors::HttpError;

/// Why a file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    BadRange(String),
    #[error("requested range is not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("no such file")]
    NotFound,
    #[error("stored data is damaged; the error was logged")]
    Corrupt,
    #[error("the store is not taking requests now; try again")]
    Unavailable,
    #[error("internal error; the details were logged")]
    Internal,
}

impl From<BlobError> for FileError {
    fn from(e: BlobError) -> Self {
        match e {
            // The reader already logged which block of which file.
            BlobError::Corrupt { .. } => FileError::Corrupt,
            BlobError::Closed | BlobError::Reopening => FileError::Unavailable,
            BlobError::Deleted => FileError::NotFound,
            other => {
                tracing::error!(error = %other, "reading a stored file");
                FileError::Internal
            }
        }
    }
}

impl HttpError for FileError {
    fn status(&self) -> StatusCode {
        match self {
            FileError::BadRange(_) => StatusCode::BAD_REQUEST,
            FileError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            FileError::NotFound => StatusCode::NOT_FOUND,
            FileError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            FileError::Corrupt | FileError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn add_headers(&self, headers: &mut HeaderMap) {
        if let FileError::RangeNotSatisfiable { size } = self {
            add_unsatisfiable_range(headers, *size);
        }
    }
}

impl IntoResponse for FileError {
    fn into_response(self) -> Response {
        crate::errors::error_response(&self)
    }
}

/// `Content-Range: bytes */SIZE`, what a 416 carries.
pub fn add_unsatisfiable_range(headers: &mut HeaderMap, size: u64) {
    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
        headers.insert(header::CONTENT_RANGE, v);
    }
}

/// The head of a complete file's answer: the safety headers of its type, its validator, and
/// caching for good (a complete file never changes). `modified_ms`: when it was stored, if
/// known.
pub fn complete_file_head(
    content_type: &str,
    etag: &str,
    active: ActiveContent,
    modified_ms: Option<u64>,
) -> response::Builder {
    let mut head = crate::content::with_file_headers(Response::builder(), content_type, active)
        .header(header::ETAG, etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable");
    if let Some(ms) = modified_ms {
        head = head.header(
            header::LAST_MODIFIED,
            httpdate::fmt_http_date(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
        );
    }
    head
}

/// The part of a `size`-byte file an answer sends: `start..end`, with its status and (for
/// 206) its `Content-Range` and the `Content-Length` added to `head`.
pub fn with_range(
    head: response::Builder,
    wanted: RangeRequest,
    size: u64,
) -> Result<(response::Builder, u64, u64), FileError> {
    let (head, start, end) = match wanted {
        RangeRequest::Unsatisfiable => return Err(FileError::RangeNotSatisfiable { size }),
        RangeRequest::Full => (head.status(StatusCode::OK), 0, size),
        RangeRequest::Partial { start, end } => (
            head.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", end - 1),
            ),
            start,
            end,
        ),
    };
    Ok((head.header(header::CONTENT_LENGTH, end - start), start, end))
}

/// The range a request asks of a `size`-byte file whose strong validator is `etag`: none when
/// `If-Range` names another version (RFC 9110 §13.1.5).
pub fn wanted_range(headers: &HeaderMap, etag: &str, size: u64) -> Result<RangeRequest, FileError> {
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let range = range.filter(|_| if_range_holds(headers, etag));
    request_for(range, size).map_err(|e| FileError::BadRange(e.to_string()))
}

/// A 304 for the head built so far.
pub fn not_modified(head: response::Builder) -> Result<Response, FileError> {
    head.status(StatusCode::NOT_MODIFIED)
        .body(Body::empty())
        .map_err(|_| FileError::Internal)
}

/// A read of a complete file this process holds (storage nodes, and edges' caches).
pub struct LocalRead<'a> {
    pub key: BlobKey,
    /// The strong ETag to send (the file id's key, quoted).
    pub etag: &'a str,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    /// How files a browser would run are served.
    pub active: ActiveContent,
}

/// Replaces a damaged copy of the file being read (true when it did): a peer's copy on a
/// storage node, the origin's on an edge; its bytes match the digest recorded for this one.
pub type Repair =
    Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, bool> + Send + Sync + 'static>;

/// Where a local file's bytes come from.
pub enum LocalSource {
    /// The hot cache: whole, verified when they were read from disk.
    Hot(HotFile),
    Disk(BlobReader),
}

impl LocalSource {
    fn meta(&self) -> &BlobMeta {
        match self {
            LocalSource::Hot(hot) => &hot.meta,
            LocalSource::Disk(reader) => reader.meta(),
        }
    }
}

/// Serves a complete file from `source`: conditionals, a Range (206/416), HEAD, and the
/// first chunk read and verified before the head goes out. A damaged block, in the first
/// chunk or any later, calls `repair`; if it replaced the copy, the file is opened again and
/// the read goes on from the same byte, so the client gets whole, correct bytes.
pub async fn serve_local(
    store: &BlobStore,
    request: LocalRead<'_>,
    source: LocalSource,
    repair: Option<Repair>,
) -> Result<Response, FileError> {
    let LocalRead {
        key,
        etag,
        method,
        headers,
        active,
    } = request;
    let meta = source.meta();
    let size = meta.size;
    let head = complete_file_head(&meta.content_type, etag, active, Some(meta.created_ms));
    if if_none_match(headers, etag) {
        return not_modified(head);
    }
    let (head, start, end) = with_range(head, wanted_range(headers, etag, size)?, size)?;
    if *method == Method::HEAD {
        return head.body(Body::empty()).map_err(|_| FileError::Internal);
    }
    let body = match source {
        LocalSource::Hot(hot) => body_from_parts(slice_parts(&hot.parts, start, end).collect()),
        LocalSource::Disk(mut reader) => {
            // A whole small file is read in one go and offered to the hot cache.
            let cacheable = start == 0 && end == size && store.hot().admits(size);
            let max = if cacheable { size } else { CHUNK_BYTES };
            // Read (and verify) the first chunk before answering, so a damaged small file gets
            // a clean 500 rather than a truncated 200, or is repaired and served.
            let mut repair = repair;
            let first = match reader.read_chunk(start, end, max).await {
                Err(BlobError::Corrupt { .. }) if try_repair(&mut repair).await => {
                    reader = store.open_reader(key)?.ok_or(FileError::NotFound)?;
                    reader.read_chunk(start, end, max).await?
                }
                other => other?,
            };
            if cacheable {
                store.offer_to_hot_cache(key, reader.meta().clone(), first.clone());
            }
            let reopen = repair.map(|repair| Reopen {
                store: store.clone(),
                key,
                repair,
            });
            body_stream(reader, first, start, end, reopen)
        }
    };
    head.body(body).map_err(|_| FileError::Internal)
}

/// The pieces of `parts` (consecutive slices of one file) that cover `start..end`; no copies.
fn slice_parts(parts: &[Bytes], start: u64, end: u64) -> impl Iterator<Item = Bytes> + '_ {
    let mut at = 0u64;
    parts.iter().filter_map(move |part| {
        let (lo, hi) = (at, at + part.len() as u64);
        at = hi;
        let from = start.max(lo);
        let to = end.min(hi);
        (from < to).then(|| part.slice((from - lo) as usize..(to - lo) as usize))
    })
}

/// Calls `repair` once; later calls say no (a copy repaired and damaged again is not
/// repaired in a loop).
pub async fn try_repair(repair: &mut Option<Repair>) -> bool {
    match repair.take() {
        Some(repair) => repair().await,
        None => false,
    }
}

/// How a body stream that meets a damaged block gets a good copy and opens it again.
pub struct Reopen {
    pub store: BlobStore,
    pub key: BlobKey,
    pub repair: Repair,
}

/// Streams the rest of a range after its first chunk, one frame per block slice (hyper writes
/// them with vectored I/O). A damaged block met mid-stream is repaired through `reopen` and
/// the stream goes on from the same byte of the good copy; without it (or when the repair
/// fails) the body ends with an error, so the client sees a failed transfer, never wrong
/// bytes.
pub fn body_stream(
    reader: BlobReader,
    first: Chunk,
    start: u64,
    end: u64,
    reopen: Option<Reopen>,
) -> Body {
    let next = start + first.iter().map(|b| b.len() as u64).sum::<u64>();
    if next >= end {
        return body_from_parts(first);
    }
    let head = futures_util::stream::iter(first.into_iter().map(Ok::<_, BlobError>));
    let rest = futures_util::stream::try_unfold(
        (reader, next, reopen),
        move |(mut reader, at, mut reopen)| async move {
            if at >= end {
                return Ok::<_, BlobError>(None);
            }
            let chunk = match reader.read_chunk(at, end, CHUNK_BYTES).await {
                Err(damaged @ BlobError::Corrupt { .. }) => {
                    let Some(r) = reopen.take() else {
                        return Err(damaged);
                    };
                    if !(r.repair)().await {
                        return Err(damaged);
                    }
                    reader = r.store.open_reader(r.key)?.ok_or(damaged)?;
                    reader.read_chunk(at, end, CHUNK_BYTES).await?
                }
                other => other?,
            };
            let len: u64 = chunk.iter().map(|b| b.len() as u64).sum();
            if len == 0 {
                return Ok(None);
            }
            Ok(Some((chunk, (reader, at + len, reopen))))
        },
    );
    let rest = rest
        .map_ok(|chunk| futures_util::stream::iter(chunk.into_iter().map(Ok)))
        .try_flatten();
    Body::from_stream(head.chain(rest))
}

/// A body of bytes already in hand; a single piece avoids the stream machinery.
pub fn body_from_parts(parts: Vec<Bytes>) -> Body {
    match <[Bytes; 1]>::try_from(parts) {
        Ok([one]) => Body::from(one),
        Err(parts) => Body::from_stream(futures_util::stream::iter(
            parts.into_iter().map(Ok::<_, std::convert::Infallible>),
        )),
    }
}

/// `If-None-Match` uses weak comparison (RFC 9110 §13.1.2).
pub fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag)
}

/// `If-Range` with an entity tag uses strong comparison; a date is never exact enough for us.
fn if_range_holds(headers: &HeaderMap, etag: &str) -> bool {
    match headers.get(header::IF_RANGE).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(v) => v.trim() == etag,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn if_none_match_is_weak_and_takes_lists_and_star() {
        let etag = "\"abc\"";
        assert!(if_none_match(&with(header::IF_NONE_MATCH, "\"abc\""), etag));
        assert!(if_none_match(
            &with(header::IF_NONE_MATCH, "W/\"abc\""),
            etag
        ));
        assert!(if_none_match(
            &with(header::IF_NONE_MATCH, "\"x\", \"abc\""),
            etag
        ));
        assert!(if_none_match(&with(header::IF_NONE_MATCH, "*"), etag));
        assert!(!if_none_match(
            &with(header::IF_NONE_MATCH, "\"abcd\""),
            etag
        ));
        assert!(!if_none_match(&HeaderMap::new(), etag));
    }

    #[test]
    fn a_range_applies_only_to_the_version_if_range_names() {
        let mut h = with(header::RANGE, "bytes=2-4");
        assert_eq!(
            wanted_range(&h, "\"v1\"", 10).unwrap(),
            RangeRequest::Partial { start: 2, end: 5 }
        );
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"v0\""));
        assert_eq!(wanted_range(&h, "\"v1\"", 10).unwrap(), RangeRequest::Full);
        h.insert(header::IF_RANGE, HeaderValue::from_static("\"v1\""));
        assert_eq!(
            wanted_range(&h, "\"v1\"", 10).unwrap(),
            RangeRequest::Partial { start: 2, end: 5 }
        );
        assert!(matches!(
            wanted_range(&with(header::RANGE, "bytes=20-"), "\"v1\"", 10),
            Ok(RangeRequest::Unsatisfiable)
        ));
    }

    #[test]
    fn ranges_set_status_length_and_content_range() {
        let (head, start, end) = with_range(
            Response::builder(),
            RangeRequest::Partial { start: 2, end: 5 },
            10,
        )
        .unwrap();
        let r = head.body(Body::empty()).unwrap();
        assert_eq!((start, end), (2, 5));
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes 2-4/10");
        assert_eq!(r.headers()[header::CONTENT_LENGTH], "3");
        let refused = with_range(Response::builder(), RangeRequest::Unsatisfiable, 10).unwrap_err();
        let r = refused.into_response();
        assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(r.headers()[header::CONTENT_RANGE], "bytes */10");
    }

    #[test]
    fn slices_cover_exactly_the_range_across_parts() {
        let parts = [Bytes::from_static(b"abc"), Bytes::from_static(b"defg")];
        let got: Vec<u8> = slice_parts(&parts, 2, 5).flat_map(|b| b.to_vec()).collect();
        assert_eq!(got, b"cde");
        assert_eq!(slice_parts(&parts, 3, 3).count(), 0);
    }
}
