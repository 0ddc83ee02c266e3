//! `/v1/files`: upload, download (ranges, ETags, conditional requests) and delete.

use std::sync::Arc;

use axum::extract::{Multipart, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use sluice_blob::{BlobError, BlobReader, BlobWriter};
use sluice_http::files::{LocalRead, LocalSource, Repair, serve_local};
use sluice_proto::api::{DEFAULT_CONTENT_TYPE, is_valid_content_type};
use sluice_proto::{FileId, UploadResponse};

use crate::StorageState;
use crate::error::ApiError;
use crate::replication::ReplicaSource;

/// Parses the id in a path and checks it belongs to this node's group.
pub(crate) fn parse_local_id(state: &StorageState, text: &str) -> Result<FileId, ApiError> {
    let id =
        FileId::parse(text).map_err(|e| ApiError::BadRequest(format!("malformed file id: {e}")))?;
    if id.group != state.config().group {
        // Another group's file: this node does not hold it (trackers route to the right group).
        return Err(ApiError::NotFound);
    }
    Ok(id)
}

pub(crate) async fn upload(
    State(state): State<StorageState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    let signed_max = state
        .config()
        .access
        .check_write("POST", request.uri(), headers)?
        .map(|grant| grant.max_size);
    let limit = UploadLimit::for_upload(&state, content_length(headers)?, signed_max)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""));
    if let Some(r) = state.replication() {
        r.check_possible()?;
    }
    let is_multipart =
        content_type.is_some_and(|ct| ct.to_ascii_lowercase().starts_with("multipart/form-data"));
    let (writer, size) = if is_multipart {
        let multipart = <Multipart as axum::extract::FromRequest<()>>::from_request(request, &())
            .await
            .map_err(|e| ApiError::BadRequest(format!("bad multipart body: {e}")))?;
        upload_multipart(&state, multipart, &limit).await?
    } else {
        let content_type = match content_type {
            None => DEFAULT_CONTENT_TYPE.to_owned(),
            Some(ct) if is_valid_content_type(ct) => ct.to_owned(),
            Some(_) => return Err(ApiError::BadRequest("invalid Content-Type".into())),
        };
        let key = state.store().new_key()?;
        let mut writer = state.store().writer(key, content_type, limit.bytes);
        let idle = state.config().body_idle_timeout;
        let mut body = request.into_body().into_data_stream();
        while let Some(chunk) = within(idle, body.next()).await? {
            let chunk = chunk
                .map_err(|e| ApiError::BadRequest(format!("request body ended early: {e}")))?;
            state.metrics().received(chunk.len());
            writer.write(chunk).await.map_err(|e| limit.explain(e))?;
        }
        let size = writer.received();
        (writer, size)
    };
    let key = writer.key();
    let id = FileId::new(state.config().group.clone(), key);
    match state.replication() {
        None => {
            writer.commit().await?;
        }
        Some(r) => {
            // A small body still in memory goes to the peers while it is made durable here, so
            // an upload waits for the slower of the two rather than both in turn. A larger one
            // is sent from the stored file afterwards.
            let replicated = match writer.in_memory() {
                Some(body) => {
                    let source = ReplicaSource::Memory {
                        body,
                        content_type: writer.content_type().to_owned(),
                        sha256: writer.sha256(),
                    };
                    let (local, remote) =
                        tokio::join!(writer.commit(), r.replicate_put(state.store(), &id, source));
                    if let Err(e) = local {
                        // Peers may hold a copy the client will never hear of: take it back.
                        r.replicate_delete(&id).await;
                        return Err(e.into());
                    }
                    remote
                }
                None => {
                    writer.commit().await?;
                    r.replicate_put(state.store(), &id, ReplicaSource::Stored)
                        .await
                }
            };
            if let Err(e) = replicated {
                // Too few copies: take it back everywhere, so the client retries elsewhere and
                // no half-acknowledged file lingers.
                let _ = state.store().delete(key).await;
                r.replicate_delete(&id).await;
                return Err(e.into());
            }
        }
    }
    let fileid = id.to_string();
    let url = format!("/v1/files/{fileid}");
    let mut response = (
        StatusCode::CREATED,
        axum::Json(UploadResponse {
            fileid,
            url: url.clone(),
            size,
        }),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// How much an upload may write, and whether that bound is the node's capacity (507) rather
/// than the per-upload maximum (413).
pub(crate) struct UploadLimit {
    pub bytes: u64,
    by_capacity: bool,
    max_upload_size: u64,
}

impl UploadLimit {
    /// Checks a declared length against both bounds before anything is read.
    /// `signed_max`: the size a signed upload link allows, if the upload came with one.
    pub fn for_upload(
        state: &StorageState,
        declared: Option<u64>,
        signed_max: Option<u64>,
    ) -> Result<Self, ApiError> {
        let max_upload_size = signed_max.map_or(state.config().max_upload_size, |m| {
            m.min(state.config().max_upload_size)
        });
        let room = state
            .config()
            .capacity
            .map(|c| c.saturating_sub(state.store().bytes()));
        if declared.is_some_and(|len| len > max_upload_size) {
            return Err(ApiError::TooLarge {
                limit: max_upload_size,
            });
        }
        if room == Some(0) || room.zip(declared).is_some_and(|(room, len)| len > room) {
            return Err(ApiError::Full);
        }
        let bytes = room.map_or(max_upload_size, |r| r.min(max_upload_size));
        Ok(Self {
            bytes,
            by_capacity: bytes < max_upload_size,
            max_upload_size,
        })
    }

    /// Names the bound a writer ran into.
    pub fn explain(&self, e: sluice_blob::BlobError) -> ApiError {
        match e {
            sluice_blob::BlobError::TooLarge { .. } if self.by_capacity => ApiError::Full,
            sluice_blob::BlobError::TooLarge { .. } => ApiError::TooLarge {
                limit: self.max_upload_size,
            },
            other => other.into(),
        }
    }
}

async fn upload_multipart(
    state: &StorageState,
    mut multipart: Multipart,
    limit: &UploadLimit,
) -> Result<(BlobWriter, u64), ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                limit: limit.max_upload_size,
            }
        } else {
            ApiError::BadRequest(format!("bad multipart body: {e}"))
        }
    };
    let idle = state.config().body_idle_timeout;
    while let Some(mut field) = within(idle, multipart.next_field()).await?.map_err(bad)? {
        if field.name() != Some("file") {
            continue;
        }
        let content_type = match field.content_type() {
            None => DEFAULT_CONTENT_TYPE.to_owned(),
            Some(ct) if is_valid_content_type(ct) => ct.to_owned(),
            Some(_) => {
                return Err(ApiError::BadRequest(
                    "invalid Content-Type on field `file`".into(),
                ));
            }
        };
        let key = state.store().new_key()?;
        let mut writer = state.store().writer(key, content_type, limit.bytes);
        let idle = state.config().body_idle_timeout;
        while let Some(chunk) = within(idle, field.chunk()).await?.map_err(bad)? {
            state.metrics().received(chunk.len());
            writer.write(chunk).await.map_err(|e| limit.explain(e))?;
        }
        let size = writer.received();
        return Ok((writer, size));
    }
    Err(ApiError::BadRequest(
        "multipart body has no field named `file`".into(),
    ))
}

/// Waits for the next piece of a request body, but not longer than `idle`.
pub(crate) async fn within<T>(
    idle: std::time::Duration,
    next: impl std::future::Future<Output = T>,
) -> Result<T, ApiError> {
    tokio::time::timeout(idle, next)
        .await
        .map_err(|_| ApiError::BodyTimeout(idle))
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest("invalid Content-Length".into())),
    }
}

pub(crate) async fn download(
    State(state): State<StorageState>,
    method: Method,
    uri: axum::http::Uri,
    Path(text): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    state.config().access.check_read(&uri)?;
    let id = parse_local_id(&state, &text)?;
    let store = state.store();
    let source = match store.hot().get(&id.key) {
        Some(hot) => LocalSource::Hot(hot),
        None => {
            let reader = open_or_fetch(&state, &id).await?;
            if !reader.meta().state.is_complete() {
                let follow = uri
                    .query()
                    .is_some_and(|q| q.split('&').any(|p| p == "follow=1"));
                let request = super::partial::Incomplete {
                    id: &id,
                    method: &method,
                    headers: &headers,
                    follow,
                    active: state.config().active_content,
                };
                let repair = repair_hook(&state, &id);
                return super::partial::serve(&state, request, reader, repair).await;
            }
            LocalSource::Disk(reader)
        }
    };
    let etag = format!("\"{}\"", id.key);
    let request = LocalRead {
        key: id.key,
        etag: &etag,
        method: &method,
        headers: &headers,
        active: state.config().active_content,
    };
    // Only a read from disk can meet damage (the hot cache holds verified bytes).
    let repair = matches!(source, LocalSource::Disk(_)).then(|| repair_hook(&state, &id));
    Ok(serve_local(store, request, source, repair).await?)
}

/// Repairs this node's copy of `id` from a peer, when a read meets damage.
fn repair_hook(state: &StorageState, id: &FileId) -> Repair {
    let (state, id) = (state.clone(), id.clone());
    Arc::new(move || {
        let (state, id) = (state.clone(), id.clone());
        Box::pin(async move { state.repair_from_peers(&id).await })
    })
}

/// Opens a local file, or fetches it from a peer first when this node has not caught up.
async fn open_or_fetch(state: &StorageState, id: &FileId) -> Result<BlobReader, ApiError> {
    let store = state.store();
    match store.open_reader(id.key) {
        Ok(Some(reader)) => return Ok(reader),
        Ok(None) => {}
        // Indexed, but its data file is missing or cut short (a disk fault, an operator's
        // slip): a peer's copy puts it back.
        Err(BlobError::Corrupt { .. }) => {
            if state.repair_from_peers(id).await {
                if let Some(reader) = store.open_reader(id.key)? {
                    return Ok(reader);
                }
            }
            return Err(ApiError::Corrupt);
        }
        Err(e) => return Err(e.into()),
    }
    if store.is_deleted(id.key)? {
        return Err(ApiError::NotFound);
    }
    let Some(r) = state.replication() else {
        return Err(ApiError::NotFound);
    };
    if !r
        .fetch_from_peers(store, id, state.config().max_upload_size, false)
        .await?
    {
        // A file catch-up knows this node is owed is not "no such file".
        // Nor is a file a syncing node lacks: a peer it has not caught up with may hold it.
        let behind = r.is_pending(id) || r.state() != sluice_proto::cluster::NodeState::Active;
        return Err(if behind {
            ApiError::NotYetHere
        } else {
            ApiError::NotFound
        });
    }
    store.open_reader(id.key)?.ok_or(ApiError::NotFound)
}

pub(crate) async fn delete(
    State(state): State<StorageState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .config()
        .access
        .check_write("DELETE", &uri, &headers)?;
    let id = parse_local_id(&state, &text)?;
    let had = state.store().delete(id.key).await?;
    // Forwarded even when this node lacked the file: a peer may hold it.
    if let Some(r) = state.replication() {
        r.replicate_delete(&id).await;
    }
    if had {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound)
    }
}
