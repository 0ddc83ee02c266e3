//! `GET /v1/events`: the node's upload events as server-sent events.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::broadcast;

use crate::StorageState;
use crate::error::ApiError;

/// `GET /v1/events`: server-sent events. With `SLUICE_API_TOKEN` set it needs the bearer token,
/// since events name senders and receivers.
pub(crate) async fn stream(
    State(state): State<StorageState>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    state.config().access.check_bearer(&headers)?;
    let rx = state.events().subscribe();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let sse = match rx.recv().await {
            Ok(event) => {
                let data = serde_json::to_string(&event).unwrap_or_default();
                Event::default().event(event.kind.name()).data(data)
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                Event::default().comment(format!("{n} events were skipped"))
            }
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(sse), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
