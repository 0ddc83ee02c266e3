//! Every error a role answers is JSON (`{"error": "..."}`): each role's error type says its
//! status and headers through [`HttpError`] and answers with [`error_response`]; the ones
//! axum's extractors make on their own (a path that is not UTF-8, a body over its limit) come
//! as plain text and are turned into JSON by [`json_errors`].

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sluice_proto::ErrorBody;

/// An error a role answers with: its status, its message (`Display`) as the JSON body, and
/// any headers the status calls for (`Allow`, `Content-Range`, `WWW-Authenticate`...).
pub trait HttpError: std::fmt::Display {
    fn status(&self) -> StatusCode;

    /// Headers the answer carries besides the JSON body's.
    fn add_headers(&self, _headers: &mut HeaderMap) {}
}

/// An answer refused with a status and a reason, for roles whose refusals are few and plain
/// (the tracker's, HTTP-FLV's).
#[derive(Debug, Clone)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl HttpError for Refusal {
    fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        error_response(&self)
    }
}

/// The one way an error becomes an answer: `{"error": MESSAGE}` with its status and headers.
pub fn error_response<E: HttpError + ?Sized>(error: &E) -> Response {
    let mut response = (
        error.status(),
        axum::Json(ErrorBody {
            error: error.to_string(),
        }),
    )
        .into_response();
    error.add_headers(response.headers_mut());
    response
}

/// Longest plain-text error carried over; extractor messages are a line.
const MAX_TEXT: usize = 4096;

/// Middleware: a plain-text error response becomes the same error as JSON.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !is_text {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, MAX_TEXT).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => status.canonical_reason().unwrap_or("error").to_owned(),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let json = axum::Json(ErrorBody { error: text }).into_response();
    Response::from_parts(parts, json.into_body())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    #[tokio::test]
    async fn extractor_rejections_become_json() {
        let app = Router::new()
            .route(
                "/n/{n}",
                get(
                    |axum::extract::Path(n): axum::extract::Path<u32>| async move { n.to_string() },
                ),
            )
            .route("/ok", get(|| async { "fine" }))
            .layer(axum::middleware::from_fn(json_errors));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let ask = |path: &str| {
            let path = path.to_owned();
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(
                    format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await
                .unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        let bad = ask("/n/x").await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        assert!(
            bad.contains("application/json") && bad.contains("{\"error\":"),
            "{bad}"
        );
        let ok = ask("/ok").await;
        assert!(
            ok.ends_with("fine"),
            "plain-text successes stay as they are: {ok}"
        );
    }
}
