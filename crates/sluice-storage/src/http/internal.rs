//! `/v1/internal/...`: what the nodes of a group call on each other. The router admits only
//! cluster calls here (`sluice_http::cluster::cluster_only`), so no stranger can push files in
//! or read around public routes.

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use sluice_blob::CHUNK_BYTES;
use sluice_proto::api::{DEFAULT_CONTENT_TYPE, is_valid_content_type};
use sluice_proto::cluster::{SHA256_HEADER, parse_sha256_hex, sha256_hex};
use sluice_proto::replicas::{self, ReplicaResult, ReplicaResults};

use super::files::{UploadLimit, parse_local_id, within};
use crate::StorageState;
use crate::error::ApiError;
use crate::replication::wire::{BLOB_STATE_HEADER, blob_state_header, parse_blob_state};
use sluice_http::files::body_stream;

/// A replica from a peer: stored under the id the peer gave it, if its bytes match the SHA-256
/// it declares. An id that holds a complete file keeps it: the same bytes again change
/// nothing, other bytes are refused (409).
pub(crate) async fn put_replica(
    State(state): State<StorageState>,
    Path(text): Path<String>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let id = parse_local_id(&state, &text)?;
    let digest = request
        .headers()
        .get(SHA256_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_sha256_hex)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "a replica needs {SHA256_HEADER}: the SHA-256 of its bytes in hex"
            ))
        })?;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|ct| is_valid_content_type(ct))
        .unwrap_or(DEFAULT_CONTENT_TYPE)
        .to_owned();
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let blob_state = parse_blob_state(
        request
            .headers()
            .get(BLOB_STATE_HEADER)
            .and_then(|v| v.to_str().ok()),
    )
    .ok_or_else(|| ApiError::BadRequest(format!("bad {BLOB_STATE_HEADER}")))?;
    let limit = UploadLimit::for_upload(&state, declared, None)?;
    let mut writer = state.store().writer(id.key, content_type, limit.bytes);
    writer.set_state(blob_state);
    writer.expect_sha256(digest);
    let idle = state.config().body_idle_timeout;
    let mut body = request.into_body().into_data_stream();
    while let Some(chunk) = within(idle, body.next()).await? {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("replica body ended early: {e}")))?;
        writer.write(chunk).await.map_err(|e| limit.explain(e))?;
    }
    writer.commit().await?;
    Ok(StatusCode::CREATED)
}

/// Bytes a replica batch's body may hold at most: the sender's 8 MiB of files (one file of up
/// to 1 MiB may pass it) and the records' headers.
const MAX_BATCH_BODY: usize = (10 << 20) + replicas::MAX_RECORDS * 600;
/// Replica batches received at once by this process (about 10 MiB each at most); the rest
/// wait their turn.
const BATCHES_AT_ONCE: usize = 16;

/// `POST /v1/internal/replicas`: a batch of small replicas (format in
/// `sluice_proto::replicas`). They are stored together, so they share one volume append and
/// one index commit; each gets the status its own `PUT` would have had.
pub(crate) async fn put_replicas(
    State(state): State<StorageState>,
    request: Request,
) -> Result<Response, ApiError> {
    // Each batch is held whole in memory: a few at a time (more wait), so the memory they take
    // stays bounded whatever peers send.
    static RECEIVING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BATCHES_AT_ONCE);
    let _turn = RECEIVING.acquire().await.map_err(|_| ApiError::Internal)?;
    let idle = state.config().body_idle_timeout;
    let mut body = request.into_body().into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    while let Some(chunk) = within(idle, body.next()).await? {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("replica batch ended early: {e}")))?;
        if bytes.len() + chunk.len() > MAX_BATCH_BODY {
            return Err(ApiError::TooLarge {
                limit: MAX_BATCH_BODY as u64,
            });
        }
        bytes.extend_from_slice(&chunk);
    }
    let bytes = bytes.freeze();
    // A record over this node's upload limit gets its own 413 below; it does not spoil the
    // batch.
    let heads = replicas::parse(&bytes, MAX_BATCH_BODY as u64)
        .map_err(|e| ApiError::BadRequest(format!("bad replica batch: {e}")))?;
    let stores = heads.into_iter().map(|head| {
        let body = bytes.slice(head.body.clone());
        let state = state.clone();
        async move {
            match store_batched(&state, head, body).await {
                Ok(()) => ReplicaResult {
                    status: StatusCode::CREATED.as_u16(),
                    error: None,
                },
                Err(e) => ReplicaResult {
                    status: sluice_http::HttpError::status(&e).as_u16(),
                    error: Some(e.to_string()),
                },
            }
        }
    });
    let results = futures_util::future::join_all(stores).await;
    Ok(axum::Json(ReplicaResults { results }).into_response())
}

async fn store_batched(
    state: &StorageState,
    head: replicas::ReplicaHead,
    body: bytes::Bytes,
) -> Result<(), ApiError> {
    let id = parse_local_id(state, &head.id)?;
    let content_type = if is_valid_content_type(&head.content_type) {
        head.content_type
    } else {
        DEFAULT_CONTENT_TYPE.to_owned()
    };
    let limit = UploadLimit::for_upload(state, Some(body.len() as u64), None)?;
    let mut writer = state.store().writer(id.key, content_type, limit.bytes);
    writer.expect_sha256(head.sha256);
    writer.write(body).await.map_err(|e| limit.explain(e))?;
    writer.commit().await?;
    Ok(())
}

pub(crate) async fn delete_replica(
    State(state): State<StorageState>,
    Path(text): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_local_id(&state, &text)?;
    state.store().delete(id.key).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A file as this node holds it, with no peer fetch (so two nodes lacking a file never ask
/// each other in circles).
pub(crate) async fn get_local(
    State(state): State<StorageState>,
    Path(text): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_local_id(&state, &text)?;
    let reader = state
        .store()
        .open_reader(id.key)?
        .ok_or(ApiError::NotFound)?;
    let size = reader.meta().size;
    let content_type = reader.meta().content_type.clone();
    let first = reader.read_chunk(0, size, CHUNK_BYTES).await?;
    let mut response = Response::builder();
    if let Some(v) = blob_state_header(reader.meta().state) {
        response = response.header(BLOB_STATE_HEADER, v);
    }
    if let Some(digest) = &reader.meta().sha256 {
        response = response.header(SHA256_HEADER, sha256_hex(digest));
    }
    response
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, size)
        .body(body_stream(reader, first, 0, size, None))
        .map_err(|_| ApiError::Internal)
}

/// `GET /v1/internal/identity`: who this node is. Trackers ask before they accept a node's
/// first heartbeat from a URL, so a mistyped `--advertise` or a cloned data directory cannot
/// take another node's place.
pub(crate) async fn identity(State(state): State<StorageState>) -> Result<Response, ApiError> {
    let node_id = state.config().node_id.clone().ok_or(ApiError::NotFound)?;
    Ok(axum::Json(sluice_proto::cluster::NodeIdentity {
        node_id,
        group: state.config().group.to_string(),
        instance: state.instance().to_owned(),
    })
    .into_response())
}

#[derive(Deserialize)]
pub(crate) struct OplogQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: usize,
    /// The pulling peer, which thereby becomes a replication target at once.
    peer_id: Option<String>,
    peer_url: Option<String>,
}

fn default_limit() -> usize {
    1000
}

pub(crate) async fn oplog(
    State(state): State<StorageState>,
    Query(q): Query<OplogQuery>,
) -> Result<Response, ApiError> {
    if let (Some(r), Some(id), Some(url)) = (state.replication(), &q.peer_id, &q.peer_url) {
        r.note_puller(id, url);
    }
    let page =
        crate::replication::oplog_page(state.store(), &state.config().group, q.after, q.limit)?;
    Ok(axum::Json(page).into_response())
}
