//! tus 1.0.0 at `/v1/uploads` (core, creation, creation-with-upload, termination, expiration,
//! checksum), carrying Sluice's progressive uploads: `q`/`mts` in `Upload-Metadata`, and
//! `Sluice-File-Id` on every answer once the file has its id. The sessions themselves live in
//! [`crate::progressive`]; this module turns requests into typed values and answers.

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sluice_proto::tus::{
    CHECKSUM_ALGORITHMS, FILE_ID_HEADER, MinimalSize, OFFSET_OCTET_STREAM, TUS_EXTENSIONS,
    TUS_VERSION, parse_checksum, parse_metadata,
};
use sluice_proto::{BlobKey, FileId};

use super::files::UploadLimit;
use crate::StorageState;
use crate::error::ApiError;
use crate::progressive::{PatchBody, Session, new_record};

/// Headers every tus answer carries.
fn tus_headers(response: &mut Response) {
    let h = response.headers_mut();
    h.insert("tus-resumable", HeaderValue::from_static(TUS_VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// Runs a tus handler and stamps its answer, errors included.
fn answer(result: Result<Response, ApiError>) -> Response {
    let mut response = match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    tus_headers(&mut response);
    response
}

fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(ApiError::TusVersion),
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(format!("{name} must be a whole number"))),
    }
}

/// `OPTIONS /v1/uploads[/{id}]`: what this server supports.
pub(crate) async fn options(State(state): State<StorageState>) -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    let h = r.headers_mut();
    h.insert("tus-version", HeaderValue::from_static(TUS_VERSION));
    h.insert("tus-extension", HeaderValue::from_static(TUS_EXTENSIONS));
    h.insert(
        "tus-checksum-algorithm",
        HeaderValue::from_static(CHECKSUM_ALGORITHMS),
    );
    h.insert(
        "tus-max-size",
        HeaderValue::from(state.config().max_upload_size),
    );
    tus_headers(&mut r);
    r
}

/// `POST /v1/uploads`: creates an upload, and takes its first bytes when the request has a body
/// (creation-with-upload).
pub(crate) async fn create(State(state): State<StorageState>, request: Request) -> Response {
    answer(create_inner(&state, request).await)
}

async fn create_inner(state: &StorageState, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    check_version(&headers)?;
    let signed_max = state
        .config()
        .access
        .check_write("POST", request.uri(), &headers)?
        .map(|grant| grant.max_size);
    if headers.contains_key("upload-defer-length") {
        return Err(ApiError::BadRequest(
            "Upload-Defer-Length is not supported: send Upload-Length".into(),
        ));
    }
    let length = header_u64(&headers, "upload-length")?
        .ok_or_else(|| ApiError::BadRequest("Upload-Length is required".into()))?;
    UploadLimit::for_upload(state, Some(length), signed_max)?;
    if let Some(r) = state.replication() {
        r.check_possible()?;
    }
    let metadata_header = headers
        .get("upload-metadata")
        .map(|v| {
            v.to_str()
                .map(str::to_owned)
                .map_err(|_| ApiError::BadRequest("Upload-Metadata is not ASCII".into()))
        })
        .transpose()?
        .unwrap_or_default();
    let metadata =
        parse_metadata(&metadata_header).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let config = state.progressive_config();
    let mts = MinimalSize::from_metadata(&metadata, length)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .unwrap_or(MinimalSize::Share(config.default_q))
        .bytes_of(length);
    let content_type = metadata
        .get("content-type")
        .or_else(|| metadata.get("filetype"))
        .map(String::as_str)
        .unwrap_or(sluice_proto::api::DEFAULT_CONTENT_TYPE);
    if !sluice_proto::api::is_valid_content_type(content_type) {
        return Err(ApiError::BadRequest(
            "Upload-Metadata content-type is not a valid media type".into(),
        ));
    }
    let record = new_record(
        length,
        mts,
        content_type.to_owned(),
        metadata_header,
        &metadata,
        signed_max.is_some(),
    );
    let session = state.uploads().create(record, config).await?;
    let location = match &config.public_url {
        Some(base) => format!("{}/v1/uploads/{}", base.trim_end_matches('/'), session.id),
        None => format!("/v1/uploads/{}", session.id),
    };
    let with_body = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.eq_ignore_ascii_case(OFFSET_OCTET_STREAM));
    let mut response = StatusCode::CREATED.into_response();
    if with_body {
        let offset = patch_body(state, &session, 0, request).await?;
        response
            .headers_mut()
            .insert("upload-offset", HeaderValue::from(offset));
    }
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, v);
    }
    progress_headers(state, &session, &mut response);
    Ok(response)
}

/// Finds a session and checks the caller may touch it: with API tokens set, the bearer token,
/// or the upload having been created through a signed link (its unguessable id is then the
/// credential, as the phone holding the link never holds a token).
fn session_for(
    state: &StorageState,
    id: &str,
    method: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<Session>, ApiError> {
    if BlobKey::parse(id).is_err() {
        return Err(ApiError::NotFound);
    }
    let session = state.uploads().get(id).ok_or(ApiError::NotFound)?;
    if !session.record().signed {
        state.config().access.check_write(method, uri, headers)?;
    }
    Ok(session)
}

/// `HEAD /v1/uploads/{id}`: how much has arrived.
pub(crate) async fn head(
    State(state): State<StorageState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    answer((|| {
        check_version(&headers)?;
        let session = session_for(&state, &id, "HEAD", &uri, &headers)?;
        let view = session.view();
        let mut r = StatusCode::OK.into_response();
        let h = r.headers_mut();
        h.insert("upload-offset", HeaderValue::from(view.received));
        h.insert("upload-length", HeaderValue::from(view.total));
        if let Ok(v) = HeaderValue::from_str(&session.record().metadata_header) {
            if !v.is_empty() {
                h.insert("upload-metadata", v);
            }
        }
        progress_headers(&state, &session, &mut r);
        Ok(r)
    })())
}

/// `PATCH /v1/uploads/{id}`: the next bytes, at `Upload-Offset`.
pub(crate) async fn patch(
    State(state): State<StorageState>,
    Path(id): Path<String>,
    request: Request,
) -> Response {
    answer(
        async {
            let headers = request.headers();
            check_version(headers)?;
            let session = session_for(&state, &id, "PATCH", request.uri(), headers)?;
            let body_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            if !body_type.is_some_and(|ct| ct.eq_ignore_ascii_case(OFFSET_OCTET_STREAM)) {
                return Err(ApiError::WrongBodyType);
            }
            let offset = header_u64(headers, "upload-offset")?
                .ok_or_else(|| ApiError::BadRequest("Upload-Offset is required".into()))?;
            let offset = patch_body(&state, &session, offset, request).await?;
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut()
                .insert("upload-offset", HeaderValue::from(offset));
            progress_headers(&state, &session, &mut r);
            Ok(r)
        }
        .await,
    )
}

async fn patch_body(
    state: &StorageState,
    session: &std::sync::Arc<Session>,
    offset: u64,
    request: Request,
) -> Result<u64, ApiError> {
    let headers = request.headers();
    let checksum = headers
        .get("upload-checksum")
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| parse_checksum(s).ok())
                .ok_or(ApiError::BadChecksum)
        })
        .transpose()?;
    let mts_override = header_u64(headers, "sluice-mts")?;
    let declared = header_u64(headers, header::CONTENT_LENGTH.as_str())?;
    let record = session.record();
    if declared.is_some_and(|len| offset.saturating_add(len) > record.length) {
        return Err(ApiError::TooLarge {
            limit: record.length,
        });
    }
    let body = PatchBody {
        stream: request.into_body().into_data_stream(),
        checksum,
        idle: state.config().body_idle_timeout,
    };
    session
        .patch(state.upload_context(), offset, body, mts_override)
        .await
}

/// `Upload-Expires` and, once there is one, `Sluice-File-Id`.
fn progress_headers(state: &StorageState, session: &Session, response: &mut Response) {
    let h = response.headers_mut();
    // httpdate writes years up to 9999; later than that is "never" anyway.
    const YEAR_9999_MS: u64 = 253_402_300_799_000;
    let expires = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(
            session
                .expires_ms(state.progressive_config())
                .min(YEAR_9999_MS),
        );
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(expires)) {
        h.insert("upload-expires", v);
    }
    if session.view().committed.is_some() {
        if let Some(key) = session.key() {
            let id = FileId::new(state.config().group.clone(), key).to_string();
            if let Ok(v) = HeaderValue::from_str(&id) {
                h.insert(FILE_ID_HEADER, v);
            }
        }
    }
}

/// `DELETE /v1/uploads/{id}`: termination.
pub(crate) async fn terminate(
    State(state): State<StorageState>,
    Path(id): Path<String>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    answer(
        async {
            check_version(&headers)?;
            let session = session_for(&state, &id, "DELETE", &uri, &headers)?;
            session.terminate(state.upload_context()).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}

/// Anything else on the tus paths.
pub(crate) async fn other(method: Method) -> Response {
    answer(Err(ApiError::MethodNotAllowed {
        allow: if method == Method::GET {
            "OPTIONS, HEAD, PATCH, DELETE"
        } else {
            "OPTIONS, POST, HEAD, PATCH, DELETE"
        },
    }))
}
