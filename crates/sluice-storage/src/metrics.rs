//! HTTP and store metrics, and the middleware that records every request.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::Ordering;

use sluice_metrics::{CounterVec, HistogramVec, LATENCY_BUCKETS, render_counter, render_gauge};

use crate::StorageState;

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
    pub fn received(&self, n: usize) {
        self.received.inc_by(&[], n as u64);
    }

    pub fn requests(&self, route: &str, method: &str, status: &str) -> u64 {
        self.requests.get(&[route, method, status])
    }
}

/// Records route, method, status, latency and bytes out for every request.
pub(crate) async fn record(
    State(state): State<StorageState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let m = state.metrics();
    let method_label = method_label(&method);
    m.requests
        .inc_by(&[&route, method_label, response.status().as_str()], 1);
    m.latency
        .observe(&[&route, method_label], started.elapsed().as_secs_f64());
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

pub(crate) async fn render(State(state): State<StorageState>) -> impl IntoResponse {
    let m = state.metrics();
    let mut out = String::with_capacity(8 * 1024);
    m.requests.render(&mut out);
    m.latency.render(&mut out);
    m.received.render(&mut out);
    m.sent.render(&mut out);
    let store = state.store();
    render_gauge(
        &mut out,
        "sluice_store_files",
        "Files held by this node.",
        store.files(),
    );
    render_gauge(
        &mut out,
        "sluice_store_bytes",
        "Bytes of file content held by this node.",
        store.bytes(),
    );
    let hot = store.hot();
    render_counter(
        &mut out,
        "sluice_hot_cache_hits_total",
        "Downloads served from the cache of small hot files.",
        hot.hits.load(Ordering::Relaxed),
    );
    render_counter(
        &mut out,
        "sluice_hot_cache_misses_total",
        "Downloads that looked in the hot cache and went to disk.",
        hot.misses.load(Ordering::Relaxed),
    );
    render_gauge(
        &mut out,
        "sluice_hot_cache_bytes",
        "Bytes of file content in the hot cache.",
        hot.bytes(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
