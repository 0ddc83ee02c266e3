//! What a browser may do with a stored file (DESIGN.md §3b). Files are whatever uploaders
//! sent, served from our own origin: an uploaded HTML page, SVG or script opened there would
//! run with that origin's rights (its cookies, its console). So every file response says
//! `X-Content-Type-Options: nosniff` (no guessing a page out of an image) and
//! `Content-Security-Policy: sandbox` (a page opened anyway runs no script and has no
//! origin), and the types a browser would run are served as attachments unless the operator
//! allows them inline.

use axum::http::HeaderValue;
use axum::http::header::{self, HeaderName};

/// How files of active types (HTML, SVG, XML, JavaScript) are served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ActiveContent {
    /// As downloads (`Content-Disposition: attachment`): the default.
    #[default]
    Attachment,
    /// Inline, still sandboxed: for operators who serve such files to browsers on purpose.
    Inline,
}

/// Whether a browser would run a file of this type as a page or a script; also any type that
/// is not well formed (a browser might make a page of it).
pub fn is_active_type(content_type: &str) -> bool {
    let Some(essence) = sluice_proto::api::media_type(content_type) else {
        return true;
    };
    matches!(
        essence.as_str(),
        "text/html"
            | "application/xhtml+xml"
            | "image/svg+xml"
            | "text/xml"
            | "application/xml"
            | "text/xsl"
            | "application/xslt+xml"
            | "text/javascript"
            | "application/javascript"
            | "application/x-javascript"
            | "text/ecmascript"
            | "application/ecmascript"
            | "application/x-shockwave-flash"
    ) || essence.ends_with("+xml")
}

/// The headers every file response carries, for a file of `content_type`.
pub fn file_headers(
    content_type: &str,
    active: ActiveContent,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> {
    let attachment = active == ActiveContent::Attachment && is_active_type(content_type);
    [
        Some((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        )),
        Some((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        )),
        attachment.then(|| {
            (
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment"),
            )
        }),
    ]
    .into_iter()
    .flatten()
}

/// Adds [`file_headers`] to a response being built.
pub fn with_file_headers(
    mut builder: axum::http::response::Builder,
    content_type: &str,
    active: ActiveContent,
) -> axum::http::response::Builder {
    for (name, value) in file_headers(content_type, active) {
        builder = builder.header(name, value);
    }
    builder
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_scripts_are_attachments_media_is_not() {
        for active in [
            "text/html",
            "text/html; charset=utf-8",
            "TEXT/HTML",
            "image/svg+xml",
            "application/xhtml+xml",
            "application/rss+xml",
            "text/xml",
            "application/javascript",
            "text/javascript;charset=x",
            "",
            "text/html x",
            "text/plain,text/html",
        ] {
            assert!(is_active_type(active), "{active}");
        }
        for passive in [
            "image/jpeg",
            "image/png",
            "video/mp4",
            "audio/ogg",
            "application/octet-stream",
            "application/json",
            "text/plain",
        ] {
            assert!(!is_active_type(passive), "{passive}");
        }
        let names = |ct, a| {
            file_headers(ct, a)
                .map(|(n, _)| n.as_str().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names("text/html", ActiveContent::Attachment),
            [
                "x-content-type-options",
                "content-security-policy",
                "content-disposition"
            ]
        );
        assert_eq!(
            names("text/html", ActiveContent::Inline),
            ["x-content-type-options", "content-security-policy"]
        );
        assert_eq!(
            names("image/jpeg", ActiveContent::Attachment),
            ["x-content-type-options", "content-security-policy"]
        );
    }
}
