//! Edge errors and the one place they become HTTP answers (`{"error": ...}` bodies).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use sluice_proto::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("access denied")]
    Denied(sluice_http::AccessDenied),
    /// The origin's own answer (404, 403, 410, 416...), passed on as it came.
    #[error("origin answered {status}")]
    Origin { status: u16, body: Bytes },
    #[error("the origin is unavailable: {0}")]
    Unavailable(String),
    #[error("no such endpoint")]
    NoRoute,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("cannot start the edge: {0}")]
    Setup(String),
    #[error("{0}")]
    Local(#[from] sluice_storage::ApiError),
    #[error("internal error; the details were logged")]
    Internal,
}

impl From<sluice_http::AccessDenied> for EdgeError {
    fn from(e: sluice_http::AccessDenied) -> Self {
        EdgeError::Denied(e)
    }
}

impl From<sluice_blob::BlobError> for EdgeError {
    fn from(e: sluice_blob::BlobError) -> Self {
        EdgeError::Local(e.into())
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        let status = match self {
            EdgeError::Denied(denied) => return denied.into_response(),
            EdgeError::Local(e) => return e.into_response(),
            EdgeError::Origin { status, body } => {
                let mut r = (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    body,
                )
                    .into_response();
                let h = r.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                h.insert("sluice-cache", HeaderValue::from_static("miss"));
                return r;
            }
            EdgeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EdgeError::Unavailable(_) => StatusCode::BAD_GATEWAY,
            EdgeError::NoRoute => StatusCode::NOT_FOUND,
            EdgeError::Forbidden(_) => StatusCode::FORBIDDEN,
            EdgeError::Setup(_) | EdgeError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(ErrorBody {
                error: self.to_string(),
            }),
        )
            .into_response()
    }
}
