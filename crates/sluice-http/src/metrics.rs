//! HTTP metrics every role exposes, and the middleware that records each request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sluice_metrics::{CounterVec, HistogramVec, LATENCY_BUCKETS};

pub struct HttpMetrics {
    requests: CounterVec,
    latency: HistogramVec,
    received: CounterVec,
    sent: CounterVec,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: CounterVec::new(
                "sluice_http_requests_total",
                "HTTP requests answered, by route, method and status.",
                &["route", "method", "status"],
            ),
            latency: HistogramVec::new(
                "sluice_http_request_duration_seconds",
                "Time to the response head, by route and method.",
                &["route", "method"],
                LATENCY_BUCKETS,
            ),
            received: CounterVec::new(
                "sluice_http_received_bytes_total",
                "Request body bytes received.",
                &[],
            ),
            sent: CounterVec::new(
                "sluice_http_sent_bytes_total",
                "Response body bytes sent (by Content-Length).",
                &[],
            ),
        }
    }
}

impl HttpMetrics {
    /// Writes every HTTP series.
    pub fn render(&self, out: &mut String) {
        self.requests.render(out);
        self.latency.render(out);
        self.received.render(out);
        self.sent.render(out);
    }

    pub fn received(&self, n: usize) {
        self.received.inc_by(&[], n as u64);
    }

    pub fn requests(&self, route: &str, method: &str, status: &str) -> u64 {
        self.requests.get(&[route, method, status])
    }
}

/// Records route, method, status, latency and bytes out for every request.
pub async fn record(State(m): State<Arc<HttpMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // `MatchedPath` is a shared string: cloning it costs no allocation per request.
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = request.method().clone();
    let response = next.run(request).await;
    let method_label = method_label(&method);
    m.requests
        .inc_by(&[route, method_label, response.status().as_str()], 1);
    m.latency
        .observe(&[route, method_label], started.elapsed().as_secs_f64());
    if method != Method::HEAD {
        let len = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        m.sent.inc_by(&[], len);
    }
    response
}

/// Methods outside the usual set share a label, so a scanner cannot grow the series list.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
