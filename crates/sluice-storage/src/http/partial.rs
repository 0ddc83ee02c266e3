//! Reading a file that is not whole yet (DESIGN.md §3): `200` with `Sluice-Complete: false`,
//! `Sluice-Received`, `Sluice-Total`, `Cache-Control: no-store` and an ETag that changes as
//! bytes arrive. A JPEG is cut at its last complete scan and closed with EOI, so any decoder
//! shows it; `?follow=1` streams the bytes as they arrive until the file is whole or its
//! sender is gone, so a browser paints it progressively.
//!
//! Bytes come from the upload session while this node is receiving the file, and from the
//! stored prefix otherwise (a peer of the receiving node, or after the sender left).

use std::fs::File;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use sluice_blob::{BlobReader, CHUNK_BYTES};
use sluice_proto::FileId;

use crate::StorageState;
use crate::error::ApiError;
use crate::progressive::{READ_CHUNK, Session, read_at};

const EOI: [u8; 2] = [0xFF, 0xD9];

pub(crate) struct Incomplete<'a> {
    pub id: &'a FileId,
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub follow: bool,
    pub active: sluice_http::ActiveContent,
}

pub(crate) async fn serve(
    state: &StorageState,
    request: Incomplete<'_>,
    reader: BlobReader,
    repair: sluice_http::files::Repair,
) -> Result<Response, ApiError> {
    if let Some(session) = state.uploads().live(&request.id.key) {
        if session.view().ending.is_none() {
            let path = session.data_path().to_owned();
            // The session may end (and unlink its file) at any moment; then the stored
            // version is the one to serve.
            if let Ok(file) = File::open(path) {
                return from_session(&request, &session, Arc::new(file)).await;
            }
        }
    }
    from_store(state, &request, reader, repair).await
}

/// A 200 for an incomplete file of which `served` bytes are sent (`None`: a follow stream,
/// which has no length and so no validator), or a 304 when the client holds those bytes
/// already. `body` is built only when one is sent (not for HEAD).
fn reply(
    request: &Incomplete<'_>,
    content_type: &str,
    received: u64,
    total: u64,
    served: Option<u64>,
    body: impl FnOnce() -> Body,
) -> Result<Response, ApiError> {
    let mut b =
        sluice_http::content::with_file_headers(Response::builder(), content_type, request.active)
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-store")
            .header("sluice-complete", "false")
            .header("sluice-received", received)
            .header("sluice-total", total);
    if let Some(len) = served {
        let etag = format!("\"{}-{len}\"", request.id.key);
        if sluice_http::files::if_none_match(request.headers, &etag) {
            return not_modified(&etag);
        }
        b = b
            .header(header::CONTENT_LENGTH, len)
            .header(header::ETAG, etag);
    }
    let body = if *request.method == Method::HEAD {
        Body::empty()
    } else {
        body()
    };
    b.body(body).map_err(|_| ApiError::Internal)
}

async fn from_session(
    request: &Incomplete<'_>,
    session: &Arc<Session>,
    file: Arc<File>,
) -> Result<Response, ApiError> {
    let view = session.view();
    let content_type = session.record().content_type;
    if request.follow {
        return reply(
            request,
            &content_type,
            view.received,
            view.total,
            None,
            || follow(session, file),
        );
    }
    // A JPEG up to its last whole scan (plus EOI unless it already ends with it); anything
    // else as far as it has arrived.
    let (cut, close) = if view.jpeg {
        let cut = view.viewable.ok_or(ApiError::Internal)?;
        let closed = cut >= 2 && read_at(file.clone(), cut - 2, 2).await?[..] == EOI;
        (cut, !closed)
    } else {
        (view.received, false)
    };
    let served = cut + if close { 2 } else { 0 };
    let tail = close.then(|| Bytes::from_static(&EOI));
    reply(
        request,
        &content_type,
        view.received,
        view.total,
        Some(served),
        || file_body(file, cut, tail),
    )
}

/// `0..end` of a data file in pieces, then `tail`.
fn file_body(file: Arc<File>, end: u64, tail: Option<Bytes>) -> Body {
    let body = futures_util::stream::try_unfold(0u64, move |at| {
        let file = file.clone();
        async move {
            if at >= end {
                return Ok::<_, ApiError>(None);
            }
            let len = READ_CHUNK.min((end - at) as usize);
            let bytes = read_at(file, at, len).await?;
            Ok(Some((bytes, at + len as u64)))
        }
    });
    let tail = futures_util::stream::iter(tail.map(Ok));
    Body::from_stream(body.chain(tail))
}

/// The bytes as they arrive, until the session ends.
fn follow(session: &Arc<Session>, file: Arc<File>) -> Body {
    let rx = session.watch();
    let stream = futures_util::stream::try_unfold((rx, 0u64), move |(mut rx, at)| {
        let file = file.clone();
        async move {
            loop {
                let view = rx.borrow_and_update().clone();
                if at < view.received {
                    let len = READ_CHUNK.min((view.received - at) as usize);
                    let bytes = read_at(file, at, len).await?;
                    return Ok::<_, ApiError>(Some((bytes, (rx, at + len as u64))));
                }
                if view.ending.is_some() || view.received >= view.total {
                    return Ok(None);
                }
                if rx.changed().await.is_err() {
                    return Ok(None);
                }
            }
        }
    });
    Body::from_stream(stream)
}

async fn from_store(
    state: &StorageState,
    request: &Incomplete<'_>,
    reader: BlobReader,
    repair: sluice_http::files::Repair,
) -> Result<Response, ApiError> {
    // A damaged block is repaired from a peer (which holds this very version) once per read,
    // whether met in the first chunk, in an image read whole, or mid-stream.
    let mut repair = Some(repair);
    let (mut reader, first) = match reader.read_chunk(0, reader.meta().size, CHUNK_BYTES).await {
        Err(sluice_blob::BlobError::Corrupt { .. })
            if sluice_http::files::try_repair(&mut repair).await =>
        {
            let reader = reopen(state, request)?;
            let first = reader
                .read_chunk(0, reader.meta().size, CHUNK_BYTES)
                .await?;
            (reader, first)
        }
        other => (reader, other?),
    };
    let meta = reader.meta().clone();
    let total = meta.state.total().unwrap_or(meta.size);
    let looks_jpeg = first.first().is_some_and(|b| b.starts_with(&[0xFF, 0xD8]));
    let mut view = None;
    if looks_jpeg && meta.size <= state.progressive_config().max_scan_tail as u64 {
        // An image: read it whole and cut it at its last complete scan.
        let data = match read_whole(&reader, first.concat()).await {
            Err(ApiError::Corrupt) if sluice_http::files::try_repair(&mut repair).await => {
                reader = reopen(state, request)?;
                read_whole(&reader, Vec::new()).await?
            }
            other => other?,
        };
        view = sluice_media::jpeg::viewable_prefix(&data);
    }
    let (size, content_type) = (meta.size, &meta.content_type);
    match view {
        Some(view) => reply(
            request,
            content_type,
            size,
            total,
            Some(view.len() as u64),
            || Body::from(view),
        ),
        None => reply(request, content_type, size, total, Some(size), || {
            let reopen = repair.map(|repair| sluice_http::files::Reopen {
                store: state.store().clone(),
                key: request.id.key,
                repair,
            });
            sluice_http::files::body_stream(reader, first, 0, size, reopen)
        }),
    }
}

/// The stored version again, after a repair.
fn reopen(state: &StorageState, request: &Incomplete<'_>) -> Result<BlobReader, ApiError> {
    state
        .store()
        .open_reader(request.id.key)?
        .ok_or(ApiError::NotFound)
}

/// The rest of a stored version after the `data` already read, verified.
async fn read_whole(reader: &BlobReader, mut data: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    reader
        .read_from(data.len() as u64, |part| data.extend_from_slice(part))
        .await?;
    Ok(data)
}

fn not_modified(etag: &str) -> Result<Response, ApiError> {
    Response::builder()
        .status(StatusCode::NOT_MODIFIED)
        .header(header::ETAG, etag)
        .header(header::CACHE_CONTROL, "no-store")
        .body(Body::empty())
        .map_err(|_| ApiError::Internal)
}
