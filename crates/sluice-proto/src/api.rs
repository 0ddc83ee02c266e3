//! JSON bodies of the HTTP API (DESIGN.md §3).

use serde::{Deserialize, Serialize};

/// `201 Created` answer to `POST /v1/files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadResponse {
    pub fileid: String,
    pub url: String,
    pub size: u64,
}

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Longest Content-Type we keep; longer ones are refused rather than cut.
pub const CONTENT_TYPE_MAX_LEN: usize = 200;
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Whether a client-sent Content-Type is safe to store and send back verbatim.
pub fn is_valid_content_type(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= CONTENT_TYPE_MAX_LEN
        && value.contains('/')
        && value.bytes().all(|b| (0x20..0x7f).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert!(is_valid_content_type("image/jpeg"));
        assert!(is_valid_content_type("text/plain; charset=utf-8"));
        assert!(!is_valid_content_type(""));
        assert!(!is_valid_content_type("jpeg"));
        assert!(!is_valid_content_type("image/jpeg\r\nSet-Cookie: x"));
        assert!(!is_valid_content_type(&"a/".repeat(200)));
    }
}
