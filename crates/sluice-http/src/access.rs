//! Who may read and write (DESIGN.md §3), the same on every role so none can be used to get
//! around another: with `SLUICE_URL_SECRET` set, reads need a valid signed link; with
//! `SLUICE_API_TOKEN` set, writes need `Authorization: Bearer TOKEN` or a signed upload link.

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use sluice_proto::SecretSet;
use sluice_proto::signature::{SignatureError, UploadGrant, verify_download, verify_upload};

/// The secrets a role checks requests against.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// `SLUICE_URL_SECRET`: signs download links.
    pub url_secret: Option<SecretSet>,
    /// `SLUICE_API_TOKEN`: bearer tokens for writes, and the keys of signed upload links.
    pub api_tokens: Option<SecretSet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessDenied {
    /// 403: a read without a valid signature.
    BadSignature(SignatureError),
    /// 401: a write without a token or a valid signed upload link.
    NoToken(String),
}

impl std::fmt::Display for AccessDenied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessDenied::BadSignature(e) => e.fmt(f),
            AccessDenied::NoToken(why) => f.write_str(why),
        }
    }
}

impl crate::errors::HttpError for AccessDenied {
    fn status(&self) -> StatusCode {
        match self {
            AccessDenied::BadSignature(_) => StatusCode::FORBIDDEN,
            AccessDenied::NoToken(_) => StatusCode::UNAUTHORIZED,
        }
    }

    fn add_headers(&self, headers: &mut HeaderMap) {
        if let AccessDenied::NoToken(_) = self {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
    }
}

impl IntoResponse for AccessDenied {
    fn into_response(self) -> Response {
        crate::errors::error_response(&self)
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AccessPolicy {
    /// Checks a read of `uri` (its path is what was signed).
    pub fn check_read(&self, uri: &Uri) -> Result<(), AccessDenied> {
        match &self.url_secret {
            None => Ok(()),
            Some(s) => verify_download(s, uri.path(), uri.query(), now_unix())
                .map_err(AccessDenied::BadSignature),
        }
    }

    /// Checks a request that only a token holder may make (admin calls, the event stream):
    /// the bearer token when API tokens are set, nothing otherwise.
    pub fn check_bearer(&self, headers: &HeaderMap) -> Result<(), AccessDenied> {
        let Some(tokens) = &self.api_tokens else {
            return Ok(());
        };
        match bearer(headers) {
            Some(token) if tokens.accepts(token.trim()) => Ok(()),
            Some(_) => Err(AccessDenied::NoToken("the API token is not valid".into())),
            None => Err(AccessDenied::NoToken(
                "this needs Authorization: Bearer TOKEN".into(),
            )),
        }
    }

    /// Checks a write; `Ok(Some(grant))` when it came with a signed link (which allows at most
    /// `grant.max_size` bytes, until `grant.expires`), `Ok(None)` with the token or when
    /// writes are open.
    pub fn check_write(
        &self,
        method: &str,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<Option<UploadGrant>, AccessDenied> {
        let Some(tokens) = &self.api_tokens else {
            return Ok(None);
        };
        if let Some(token) = bearer(headers) {
            return if tokens.accepts(token.trim()) {
                Ok(None)
            } else {
                Err(AccessDenied::NoToken("the API token is not valid".into()))
            };
        }
        match verify_upload(tokens, method, uri.path(), uri.query(), now_unix()) {
            Ok(grant) => Ok(Some(grant)),
            Err(SignatureError::Missing) => Err(AccessDenied::NoToken(
                "writes need Authorization: Bearer TOKEN or a signed upload link".into(),
            )),
            Err(e) => Err(AccessDenied::NoToken(format!(
                "signed upload link refused: {e}"
            ))),
        }
    }
}
