//! The node's HTTP API on top of its state: files, progressive uploads (tus), events, the
//! cluster's internal routes, `/healthz` and `/metrics`.

mod events;
pub(crate) mod files;
mod internal;
mod metrics;
mod partial;
mod tus;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::{get, post};

use crate::StorageState;
use crate::error;

/// The node's HTTP routes.
pub fn router(state: StorageState) -> Router {
    use error::ApiError::MethodNotAllowed;
    let config = state.config();
    let internal = sluice_http::cluster::cluster_only(
        Router::new()
            .route(
                "/v1/internal/blobs/{*fileid}",
                get(internal::get_local)
                    .put(internal::put_replica)
                    .delete(internal::delete_replica),
            )
            .route("/v1/internal/replicas", post(internal::put_replicas))
            .route("/v1/internal/oplog", get(internal::oplog))
            .route("/v1/internal/identity", get(internal::identity)),
        config.cluster.clone(),
        config.access.clone(),
    );
    let routes = Router::new()
        .route(
            "/v1/files",
            post(files::upload).fallback(|| async { MethodNotAllowed { allow: "POST" } }),
        )
        .route(
            "/v1/files/{*fileid}",
            get(files::download)
                .delete(files::delete)
                .fallback(|| async {
                    MethodNotAllowed {
                        allow: "GET, HEAD, DELETE",
                    }
                }),
        )
        .route(
            "/v1/uploads",
            post(tus::create).options(tus::options).fallback(tus::other),
        )
        .route(
            "/v1/uploads/{id}",
            axum::routing::head(tus::head)
                .patch(tus::patch)
                .delete(tus::terminate)
                .options(tus::options)
                .fallback(tus::other),
        )
        .route("/v1/events", get(events::stream))
        .merge(internal)
        // Upload size is enforced by the handlers against the configured limit, for raw and
        // multipart bodies alike.
        .layer(DefaultBodyLimit::disable());
    let common = sluice_http::CommonRoutes {
        role: config.role,
        healthz: get(healthz),
        metrics: get(metrics::render),
        cors: config.cors.clone(),
        recorder: state.metrics_recorder(),
        access: config.access.clone(),
    };
    sluice_http::role_router(routes, common, state)
}

/// Alive (the process answers), and whether it can take writes now: a node whose index writes
/// fail says why, and is still "ok" (it serves reads, and recovers by itself).
async fn healthz(State(state): State<StorageState>) -> axum::Json<serde_json::Value> {
    axum::Json(match state.store().write_trouble() {
        None => serde_json::json!({"status": "ok", "writable": true}),
        Some(reason) => serde_json::json!({"status": "ok", "writable": false, "reason": reason}),
    })
}
