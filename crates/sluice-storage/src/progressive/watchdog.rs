//! The watchdog: completes, finalises and forgets sessions nobody else will.

use std::time::Duration;

use super::session::Ending;
use super::{UploadContext, now_ms};

/// Completes sessions that hold every byte but were never finished (a crash between the last
/// PATCH's fsync and its completion, or a completion that failed), finalises sessions whose
/// sender went quiet, and forgets ended ones, every `tick`, until `shutdown`. Its first pass
/// runs at once, so a restart completes what the crash left.
pub async fn run_watchdog(cx: UploadContext, shutdown: impl std::future::Future<Output = ()>) {
    let config = cx.config.clone();
    let tick = (config.abandon_after / 10).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut ticks = tokio::time::interval(tick);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = &mut shutdown => return,
        }
        let now = now_ms();
        for session in cx.uploads.all() {
            // A PATCH in progress is activity: leave it.
            let Ok(mut progress) = session.progress.try_lock() else {
                continue;
            };
            let whole = progress.offset == session.record().length;
            if !whole && session.expires_ms(&config) > now {
                continue;
            }
            if progress.ending.is_none() {
                let (ending, what) = if whole {
                    (Ending::Completed, "complete")
                } else {
                    (Ending::Abandoned, "finalise a quiet")
                };
                if let Err(e) = session.finish(&mut progress, &cx, ending).await {
                    tracing::warn!(upload = %session.id, error = %e, "could not {what} upload; will retry");
                    continue;
                }
                if whole {
                    tracing::info!(upload = %session.id, "an upload that had every byte is completed");
                }
            }
            drop(progress);
            cx.uploads.forget(&session.id);
        }
    }
}
