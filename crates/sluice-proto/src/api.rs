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

/// Whether a client-sent Content-Type is safe to store and send back verbatim: a well-formed
/// media type (RFC 9110 §8.3.1), nothing a browser could read another way.
pub fn is_valid_content_type(value: &str) -> bool {
    value.len() <= CONTENT_TYPE_MAX_LEN && media_type(value).is_some()
}

/// The `type/subtype` of a Content-Type, lowercased, if the whole value is well formed:
/// `type "/" subtype *( OWS ";" OWS name "=" ( token / quoted-string ) )`. Anything else
/// (`text/html x`, `text/plain,text/html`) is `None`: browsers guess at such values in ways
/// that do not agree with a simple split.
pub fn media_type(value: &str) -> Option<String> {
    fn token(s: &str) -> Option<(&str, &str)> {
        let end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)))
            .unwrap_or(s.len());
        (end > 0).then(|| s.split_at(end))
    }
    let (kind, rest) = token(value)?;
    let (subtype, mut rest) = token(rest.strip_prefix('/')?)?;
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            return Some(format!("{kind}/{subtype}").to_ascii_lowercase());
        }
        let (_, after) = token(rest.strip_prefix(';')?.trim_start_matches([' ', '\t']))?;
        let after = after.strip_prefix('=')?;
        rest = match after.strip_prefix('"') {
            Some(quoted) => {
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        '\\' => {
                            chars.next()?;
                        }
                        c if c == '\t' || (' '..='~').contains(&c) => {}
                        _ => return None,
                    }
                }
                &quoted[end? + 1..]
            }
            None => token(after)?.1,
        };
    }
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
        // What browsers read other ways than a split at ';'.
        for odd in [
            "text/html x",
            "text/html(x",
            "text/plain,text/html",
            "image/svg+xml x",
            "application/xhtml+xml(",
            "text/html;",
            "text/html; charset",
            "text/html; charset=\"utf-8",
            "/html",
            "text/",
        ] {
            assert!(!is_valid_content_type(odd), "{odd}");
        }
        assert_eq!(
            media_type("Text/HTML; charset=\"a;b\" ; q=1").as_deref(),
            Some("text/html")
        );
        assert!(is_valid_content_type("application/vnd.apple.mpegurl"));
    }

    proptest::proptest! {
        #[test]
        fn media_types_never_panic(value in "\\PC{0,60}") {
            let _ = media_type(&value);
        }
    }
}
