//! Edge errors and the one place they become HTTP answers (`{"error": ...}` bodies).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Denied(sluice_http::AccessDenied),
    /// The origin's own answer (404, 403, 410, 416...), passed on as it came.
    #[error("origin answered {status}")]
    Origin { status: u16, body: Bytes },
    #[error("the origin is unavailable: {0}")]
    Unavailable(String),
    #[error("cannot start the edge: {0}")]
    Setup(String),
    /// Serving a cached file failed.
    #[error("{0}")]
    File(#[from] sluice_http::files::FileError),
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
        EdgeError::File(e.into())
    }
}

impl sluice_http::HttpError for EdgeError {
    fn status(&self) -> StatusCode {
        match self {
            EdgeError::Denied(denied) => denied.status(),
            EdgeError::File(e) => e.status(),
            EdgeError::Origin { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            EdgeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            EdgeError::Unavailable(_) => StatusCode::BAD_GATEWAY,
            EdgeError::Setup(_) | EdgeError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn add_headers(&self, headers: &mut HeaderMap) {
        match self {
            EdgeError::Denied(denied) => denied.add_headers(headers),
            EdgeError::File(e) => e.add_headers(headers),
            _ => {}
        }
    }
}

impl IntoResponse for EdgeError {
    fn into_response(self) -> Response {
        match self {
            // The origin's own answer (its JSON body) is passed on as it came.
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
                r
            }
            other => sluice_http::error_response(&other),
        }
    }
}
