//! `/metrics` of an edge: the shared HTTP series plus the cache's own.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sluice_metrics::{render_counter, render_gauge};

use crate::EdgeState;

/// What the edge counts; each is a `sluice_edge_*_total` counter.
#[derive(Default)]
pub struct EdgeMetrics {
    /// Requests answered from the cache.
    pub hits: AtomicU64,
    /// Requests the cache could not answer (joined or started a fill, or proxied).
    pub misses: AtomicU64,
    pub bytes_from_cache: AtomicU64,
    pub bytes_from_origin: AtomicU64,
    /// Requests made to the origin: cache fills and proxied reads.
    pub origin_fetches: AtomicU64,
    /// Clients whose fill failed under them, continued from the origin.
    pub continuations: AtomicU64,
}

impl EdgeMetrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

pub(crate) async fn render(State(edge): State<EdgeState>) -> impl IntoResponse {
    let mut out = String::with_capacity(8 * 1024);
    edge.inner.http_metrics.render(&mut out);
    let m = edge.metrics();
    for (name, help, counter) in [
        (
            "sluice_edge_hits_total",
            "Requests answered from the cache.",
            &m.hits,
        ),
        (
            "sluice_edge_misses_total",
            "Requests the cache could not answer (joined or started an origin fetch, or proxied).",
            &m.misses,
        ),
        (
            "sluice_edge_bytes_from_cache_total",
            "Bytes of file content sent from the cache.",
            &m.bytes_from_cache,
        ),
        (
            "sluice_edge_bytes_from_origin_total",
            "Bytes of file content fetched from the origin.",
            &m.bytes_from_origin,
        ),
        (
            "sluice_edge_origin_fetches_total",
            "Requests made to the origin (cache fills and proxied reads).",
            &m.origin_fetches,
        ),
        (
            "sluice_edge_fill_continuations_total",
            "Clients whose cache fill failed under them (a full disk, the origin broke off), continued from the origin with a range.",
            &m.continuations,
        ),
    ] {
        render_counter(&mut out, name, help, counter.load(Ordering::Relaxed));
    }
    let cache = edge.cache();
    render_counter(
        &mut out,
        "sluice_edge_evictions_total",
        "Files evicted to keep the cache within its size.",
        cache.evictions.load(Ordering::Relaxed),
    );
    render_gauge(
        &mut out,
        "sluice_edge_cache_bytes",
        "Bytes of files in the cache.",
        cache.bytes(),
    );
    render_gauge(
        &mut out,
        "sluice_edge_cache_files",
        "Files in the cache.",
        cache.files(),
    );
    render_gauge(
        &mut out,
        "sluice_edge_cache_capacity_bytes",
        "The cache's configured size.",
        cache.capacity(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
