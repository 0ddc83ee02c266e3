//! API errors and the one place they become HTTP answers.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_blob::BlobError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body stalled for longer than {0:?}")]
    BodyTimeout(std::time::Duration),
    #[error("no such file")]
    NotFound,
    #[error("this file was deleted")]
    Gone,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}; try another group")]
    NotEnoughCopies(String),
    #[error("no such endpoint")]
    NoRoute,
    #[error("method not allowed; this path allows {allow}")]
    MethodNotAllowed { allow: &'static str },
    #[error("upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("requested range is not satisfiable")]
    RangeNotSatisfiable { size: u64 },
    #[error("the server's disk is full")]
    NoSpace,
    #[error("this node is full (its configured capacity is reached); try another group")]
    Full,
    #[error("stored data is damaged; the error was logged")]
    Corrupt,
    #[error("the server is shutting down")]
    Unavailable,
    #[error(
        "this node has not received this file yet and no peer could provide it now; catch-up keeps trying"
    )]
    NotYetHere,
    #[error("internal error; the details were logged")]
    Internal,
    #[error("{0}")]
    Denied(sluice_http::AccessDenied),
    #[error("Upload-Offset does not match: the upload is at {expected}")]
    OffsetMismatch { expected: u64 },
    #[error("a PATCH body must be Content-Type: application/offset+octet-stream")]
    WrongBodyType,
    #[error("this server speaks tus 1.0.0: send Tus-Resumable: 1.0.0")]
    TusVersion,
    #[error("the body does not match Upload-Checksum; nothing of it was kept")]
    ChecksumMismatch,
    #[error("Upload-Checksum must be `sha1 BASE64` or `sha256 BASE64`")]
    BadChecksum,
    #[error("another request is busy with this upload; try again")]
    Busy,
    #[error("this id already holds a different file; file ids are immutable")]
    Conflict,
    #[error("the bytes do not match their declared SHA-256; nothing was kept")]
    DigestMismatch,
}

impl From<sluice_http::AccessDenied> for ApiError {
    fn from(e: sluice_http::AccessDenied) -> Self {
        ApiError::Denied(e)
    }
}

impl sluice_http::HttpError for ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Gone => StatusCode::GONE,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotEnoughCopies(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            ApiError::NoSpace | ApiError::Full => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Corrupt | ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Denied(denied) => denied.status(),
            ApiError::Unavailable | ApiError::NotYetHere => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::OffsetMismatch { .. } => StatusCode::CONFLICT,
            ApiError::WrongBodyType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::TusVersion => StatusCode::PRECONDITION_FAILED,
            // tus's checksum extension: 460 Checksum Mismatch.
            ApiError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            ApiError::BadChecksum => StatusCode::BAD_REQUEST,
            ApiError::Busy => StatusCode::LOCKED,
            ApiError::Conflict => StatusCode::CONFLICT,
            ApiError::DigestMismatch => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    fn add_headers(&self, headers: &mut axum::http::HeaderMap) {
        match self {
            ApiError::RangeNotSatisfiable { size } => {
                sluice_http::files::add_unsatisfiable_range(headers, *size);
            }
            ApiError::MethodNotAllowed { allow } => {
                headers.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TusVersion => {
                headers.insert("tus-version", HeaderValue::from_static("1.0.0"));
            }
            ApiError::OffsetMismatch { expected } => {
                headers.insert("upload-offset", HeaderValue::from(*expected));
            }
            ApiError::Denied(denied) => denied.add_headers(headers),
            _ => {}
        }
    }
}

impl From<BlobError> for ApiError {
    fn from(e: BlobError) -> Self {
        match e {
            BlobError::TooLarge { limit } => ApiError::TooLarge { limit },
            BlobError::NoSpace => {
                tracing::error!("disk full: refusing writes");
                ApiError::NoSpace
            }
            // The reader already logged which block of which file.
            BlobError::Corrupt { .. } => ApiError::Corrupt,
            BlobError::Closed | BlobError::Reopening => ApiError::Unavailable,
            BlobError::Deleted => ApiError::Gone,
            BlobError::Conflict => ApiError::Conflict,
            BlobError::ChecksumMismatch => ApiError::DigestMismatch,
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::Internal
            }
        }
    }
}

impl From<sluice_http::files::FileError> for ApiError {
    fn from(e: sluice_http::files::FileError) -> Self {
        use sluice_http::files::FileError;
        match e {
            FileError::BadRange(why) => ApiError::BadRequest(why),
            FileError::RangeNotSatisfiable { size } => ApiError::RangeNotSatisfiable { size },
            FileError::NotFound => ApiError::NotFound,
            FileError::Corrupt => ApiError::Corrupt,
            FileError::Unavailable => ApiError::Unavailable,
            FileError::Internal => ApiError::Internal,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        sluice_http::error_response(&self)
    }
}
