//! CORS for reads (DESIGN.md §3): web players (hls.js, mpegts.js) and pages on other domains
//! may read files; by default from any origin, or from a configured list.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Which origins may read.
#[derive(Debug, Clone)]
pub enum CorsPolicy {
    AnyOrigin,
    Origins(Vec<String>),
}

impl CorsPolicy {
    /// `["*"]` (or nothing) means any origin.
    pub fn from_list(origins: &[String]) -> Self {
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            CorsPolicy::AnyOrigin
        } else {
            CorsPolicy::Origins(
                origins
                    .iter()
                    .map(|o| o.trim_end_matches('/').to_owned())
                    .collect(),
            )
        }
    }

    /// The `Access-Control-Allow-Origin` value for a request, if it may read.
    fn allow(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        match self {
            CorsPolicy::AnyOrigin => Some(HeaderValue::from_static("*")),
            CorsPolicy::Origins(list) => {
                let origin = headers.get(header::ORIGIN)?;
                let text = origin.to_str().ok()?;
                list.iter().any(|o| o == text).then(|| origin.clone())
            }
        }
    }
}

const EXPOSED: &str = "Content-Length, Content-Range, Content-Type, ETag, Accept-Ranges, Last-Modified, Sluice-Complete, Sluice-Received, Sluice-Total, Sluice-Cache";

fn is_read_path(path: &str) -> bool {
    path.starts_with("/v1/files/") || path.starts_with("/live/")
}

/// Answers preflights for read paths and marks read responses with CORS headers.
pub async fn cors(State(policy): State<Arc<CorsPolicy>>, request: Request, next: Next) -> Response {
    if !is_read_path(request.uri().path()) {
        return next.run(request).await;
    }
    let allow = policy.allow(request.headers());
    let preflight = request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut response = if preflight {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if allow.is_some() {
            let h = r.headers_mut();
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, HEAD, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Range, If-None-Match, If-Range, If-Modified-Since"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
        r
    } else {
        next.run(request).await
    };
    let h = response.headers_mut();
    if let Some(origin) = allow {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    }
    if matches!(*policy, CorsPolicy::Origins(_)) {
        h.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}
