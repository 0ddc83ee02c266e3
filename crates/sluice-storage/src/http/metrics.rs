//! `/metrics` of a storage node: the shared HTTP series plus the store's own.

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sluice_metrics::{render_counter, render_gauge};

use crate::StorageState;

pub(crate) async fn render(State(state): State<StorageState>) -> impl IntoResponse {
    let m = state.metrics();
    let mut out = String::with_capacity(8 * 1024);
    m.render(&mut out);
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
    if let Some(v) = store.volume_stats() {
        let gauges = [
            (
                "sluice_volumes",
                "Volume files of small files on this node.",
                v.volumes,
            ),
            (
                "sluice_volume_bytes",
                "Bytes of volume files, dead records included.",
                v.bytes,
            ),
            (
                "sluice_volume_dead_bytes",
                "Bytes of volume records nothing points at (deleted, moved, or never committed): what compaction frees.",
                v.dead_bytes,
            ),
            (
                "sluice_volume_records",
                "Files held as volume records.",
                v.live_records,
            ),
            (
                "sluice_volume_compacting",
                "1 while a volume is being compacted.",
                u64::from(v.compacting),
            ),
        ];
        for (name, help, value) in gauges {
            render_gauge(&mut out, name, help, value);
        }
        let counters = [
            (
                "sluice_volume_compactions_total",
                "Volumes compacted (live records copied out, the file removed).",
                v.compactions,
            ),
            (
                "sluice_volume_batches_total",
                "Volume appends, each one write and one fdatasync for every record that arrived meanwhile.",
                v.batches,
            ),
            (
                "sluice_volume_batch_records_total",
                "Records written in those appends (divide by batches for the group-commit batch size).",
                v.records,
            ),
        ];
        for (name, help, value) in counters {
            render_counter(&mut out, name, help, value);
        }
    }
    if let Some(r) = state.replication() {
        render_gauge(
            &mut out,
            "sluice_catch_up_pending",
            "Files peers logged that catch-up could not fetch yet (tried again with a back-off).",
            r.catch_up_pending(),
        );
        render_counter(
            &mut out,
            "sluice_catch_up_failures_total",
            "Fetches by catch-up that failed.",
            r.catch_up_failures(),
        );
    }
    let c = state.counters();
    render_counter(
        &mut out,
        "sluice_repairs_total",
        "Damaged copies replaced with a peer's.",
        c.repaired.load(Ordering::Relaxed),
    );
    render_counter(
        &mut out,
        "sluice_scrub_files_total",
        "Files the background scrub has read through.",
        c.scrubbed_files.load(Ordering::Relaxed),
    );
    render_counter(
        &mut out,
        "sluice_scrub_damaged_total",
        "Damaged files the background scrub found.",
        c.scrub_damaged.load(Ordering::Relaxed),
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
    let events = state.events().counts();
    events.emitted.render(&mut out);
    render_counter(
        &mut out,
        "sluice_webhook_lost_total",
        "Events the webhook never delivered (queue full or every attempt failed).",
        events.webhook_lost.load(Ordering::Relaxed),
    );
    render_gauge(
        &mut out,
        "sluice_upload_sessions",
        "Progressive (tus) upload sessions this node holds.",
        state.uploads().count() as u64,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}
