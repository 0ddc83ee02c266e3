//! The live role (DESIGN.md §1 on `002_*.txt`): publishers push over RTMP, players pull over
//! RTMP or HTTP-FLV (`/live/{app}/{stream}.flv`), and `GET /v1/live/streams` lists what is
//! live. The protocol is in `sluice-rtmp` (pure); this crate does the sockets and the fan-out
//! ([`hub`]).
//!
//! [`start`] takes bound listeners and a shutdown future, like every role; `sluice serve`
//! mounts [`routes`] in its own router and starts the RTMP side with [`spawn_workers`].

pub mod backlog;
mod flv_http;
pub mod hls;
pub mod hub;
pub mod record;
mod rtmp;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use sluice_state::LockRecover;
use tokio::net::TcpListener;

pub use hub::{Hub, StreamInfo, StreamLimits};

/// The chunk size we send with: large chunks mean fewer headers and fewer writes.
pub const CHUNK_SIZE: u32 = 4096;

#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Longest RTMP message accepted (a keyframe of a high-bitrate stream is a few MB).
    pub max_message: u32,
    /// What each stream may hold for its players (GOP cache, backlog of unread batches).
    pub stream_limits: StreamLimits,
    /// An HLS segment is cut once it holds this many bytes, keyframe or not.
    pub hls_max_segment_bytes: usize,
    /// An HLS segment is cut once it spans this long, keyframe or not.
    pub hls_max_segment_duration: Duration,
    /// A recording is stored after this many frames and the next one begins (on a keyframe),
    /// so its sample table stays bounded.
    pub record_max_frames: usize,
    /// A publisher silent this long is gone; a client that sends nothing during the
    /// handshake this long too.
    pub idle_timeout: Duration,
    /// A player (RTMP or HTTP-FLV) whose connection takes nothing this long is dropped.
    pub player_stall_timeout: Duration,
    /// Most bytes per second a publisher may send, averaged over a few seconds; beyond it the
    /// connection is closed (a flood, not a stream).
    pub max_ingest_rate: u64,
    /// RTMP connections served at once.
    pub max_connections: usize,
    /// The HTTP side's connection limit and timeouts (`sluice live`; `serve` uses its own).
    pub http: sluice_http::HttpLimits,
    /// `SLUICE_URL_SECRET`: when set, publishing and playing need a signed stream name, and
    /// HTTP-FLV a signed URL.
    pub access: sluice_http::AccessPolicy,
    /// Which web origins may play (HTTP-FLV), preflight included.
    pub cors: sluice_http::CorsPolicy,
    /// Frames published within this interval go to players as one batch (one wake-up and
    /// one write per player); zero sends each frame at once.
    pub merge: Duration,
    /// HLS segments are cut on the first keyframe at least this long after the last cut.
    pub hls_target: Duration,
    /// Asked (POST, JSON) before each publish; anything but 2xx refuses it.
    pub on_publish: Option<String>,
    /// Asked before each RTMP play.
    pub on_play: Option<String>,
    /// A hook that takes longer refuses (and stalls only the connection that asked).
    pub hook_timeout: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            max_message: 4 << 20,
            stream_limits: StreamLimits::default(),
            hls_max_segment_bytes: 4 << 20,
            hls_max_segment_duration: Duration::from_secs(10),
            record_max_frames: 200_000,
            idle_timeout: Duration::from_secs(10),
            player_stall_timeout: Duration::from_secs(10),
            max_ingest_rate: 12_500_000,
            max_connections: 10_000,
            http: sluice_http::HttpLimits::default(),
            access: sluice_http::AccessPolicy::default(),
            cors: sluice_http::CorsPolicy::AnyOrigin,
            merge: Duration::from_millis(100),
            hls_target: Duration::from_secs(2),
            on_publish: None,
            on_play: None,
            hook_timeout: Duration::from_secs(3),
        }
    }
}

/// Shared state of the live role; cheap to clone.
#[derive(Clone)]
pub struct LiveState {
    inner: Arc<Inner>,
}

struct Inner {
    config: LiveConfig,
    hub: Hub,
    hls: std::sync::Mutex<std::collections::HashMap<(String, String), Arc<hls::HlsStream>>>,
    hooks: reqwest::Client,
    recording: Option<(record::RecordConfig, record::Recordings)>,
    /// HTTP requests counted (`sluice live`'s `/metrics`).
    http_metrics: Arc<sluice_http::HttpMetrics>,
    /// Recordings not yet stored (a stream still publishing, or parts still uploading).
    recording_now: tokio::sync::watch::Sender<usize>,
}

impl LiveState {
    pub fn new(config: LiveConfig) -> Self {
        Self::build(config, None)
    }

    /// With every publish recorded into storage (`--record`). Blocking (opens the
    /// recordings list).
    pub fn with_recording(
        config: LiveConfig,
        record: record::RecordConfig,
    ) -> std::io::Result<Self> {
        let list = record::Recordings::open(&record.dir)?;
        Ok(Self::build(config, Some((record, list))))
    }

    fn build(
        config: LiveConfig,
        recording: Option<(record::RecordConfig, record::Recordings)>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                hub: Hub::default(),
                hls: std::sync::Mutex::default(),
                hooks: reqwest::Client::new(),
                recording,
                http_metrics: Arc::default(),
                recording_now: tokio::sync::watch::channel(0).0,
            }),
        }
    }

    /// A recording began; [`RecordingUnderway`] says when it is stored.
    pub(crate) fn recording_began(&self) -> RecordingUnderway {
        self.inner.recording_now.send_modify(|n| *n += 1);
        RecordingUnderway(self.clone())
    }

    /// Resolves once no recording is waiting to be stored.
    pub async fn recordings_stored(&self) {
        let mut now = self.inner.recording_now.subscribe();
        let _ = now.wait_for(|n| *n == 0).await;
    }

    pub fn recordings(&self) -> Option<&record::Recordings> {
        self.inner.recording.as_ref().map(|(_, list)| list)
    }

    pub(crate) fn record_config(&self) -> Option<&record::RecordConfig> {
        self.inner.recording.as_ref().map(|(c, _)| c)
    }

    pub fn config(&self) -> &LiveConfig {
        &self.inner.config
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    pub(crate) fn hook_client(&self) -> &reqwest::Client {
        &self.inner.hooks
    }

    pub fn hls(&self, app: &str, stream: &str) -> Option<Arc<hls::HlsStream>> {
        let map = self.inner.hls.lock_or_recover();
        map.get(&(app.to_owned(), stream.to_owned())).cloned()
    }

    fn set_hls(&self, app: &str, stream: &str, hls: Arc<hls::HlsStream>) {
        self.inner
            .hls
            .lock_or_recover()
            .insert((app.to_owned(), stream.to_owned()), hls);
    }

    /// Forgets an ended stream's HLS, unless a new publish replaced it.
    fn remove_hls(&self, app: &str, stream: &str, hls: &Arc<hls::HlsStream>) {
        let mut map = self.inner.hls.lock_or_recover();
        let key = (app.to_owned(), stream.to_owned());
        if map.get(&key).is_some_and(|h| Arc::ptr_eq(h, hls)) {
            map.remove(&key);
        }
    }
}

/// Held while a recording is underway; dropped when its last part is stored (or given up).
pub(crate) struct RecordingUnderway(LiveState);

impl Drop for RecordingUnderway {
    fn drop(&mut self) {
        self.0
            .inner
            .recording_now
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The live role's own HTTP routes: HTTP-FLV, HLS, the stream and recording lists.
fn own_routes() -> Router<LiveState> {
    Router::new()
        .route("/live/{app}/{file}", get(flv_http::play))
        .route("/v1/live/recordings", get(recordings))
        .route(
            "/v1/live/streams",
            get(
                |axum::extract::State(s): axum::extract::State<LiveState>| async move {
                    axum::Json(serde_json::json!({ "streams": s.hub().list() }))
                },
            ),
        )
}

/// The live routes with their CORS rule, for a router that has the rest (`sluice serve`).
pub fn routes(state: LiveState) -> Router {
    let cors = Arc::new(state.config().cors.clone());
    own_routes()
        .layer(axum::middleware::from_fn_with_state(
            cors,
            sluice_http::cors::cors,
        ))
        .with_state(state)
}

/// `GET /metrics` of `sluice live`: its HTTP requests, and what is live.
async fn render_metrics(axum::extract::State(state): axum::extract::State<LiveState>) -> String {
    let mut out = String::with_capacity(4096);
    state.inner.http_metrics.render(&mut out);
    let streams = state.hub().list();
    sluice_metrics::render_gauge(
        &mut out,
        "sluice_live_streams",
        "Streams being published now.",
        streams.len() as u64,
    );
    sluice_metrics::render_gauge(
        &mut out,
        "sluice_live_players",
        "RTMP and HTTP-FLV players attached now.",
        streams.iter().map(|s| s.players as u64).sum(),
    );
    out
}

/// `GET /v1/live/recordings`. Each names a file id, which is a read credential where links
/// are not signed: with API tokens in use, the list needs one (as `/v1/events` does).
async fn recordings(
    axum::extract::State(state): axum::extract::State<LiveState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if let Err(denied) = state.config().access.check_bearer(&headers) {
        return denied.into_response();
    }
    axum::Json(state.recordings().map(|r| r.list()).unwrap_or_default()).into_response()
}

/// Starts accepting RTMP connections on `rtmp` as the `rtmp` worker; stopping it ends every
/// stream and waits until their recordings are stored (so put it among a role's `first`
/// workers: stored through the HTTP side, in `serve`).
pub fn spawn_workers(state: &LiveState, rtmp: TcpListener, workers: &mut sluice_http::Workers) {
    let state = state.clone();
    workers.spawn("rtmp", |stopping| async move {
        if let Err(e) = rtmp::serve(rtmp, state, stopping).await {
            tracing::error!(error = %e, "RTMP listener failed");
        }
    });
}

/// Serves the live role until `shutdown` resolves: RTMP on `rtmp` (a worker), HTTP-FLV, HLS
/// and the stream list on `http`. The one way `sluice live` and the tests start it.
pub fn start(
    http: TcpListener,
    rtmp: TcpListener,
    state: LiveState,
    shutdown_limits: sluice_http::ShutdownLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<sluice_http::Running<LiveState>> {
    let common = sluice_http::CommonRoutes {
        role: "live",
        healthz: sluice_http::healthz_ok(),
        metrics: get(render_metrics),
        cors: state.config().cors.clone(),
        recorder: state.inner.http_metrics.clone(),
        access: state.config().access.clone(),
    };
    let router = sluice_http::role_router(own_routes(), common, state.clone());
    let mut parts =
        sluice_http::RoleParts::new(router, state.config().http.clone(), shutdown_limits);
    tracing::info!(
        http = %format!("http://{}", http.local_addr()?),
        rtmp = %format!("rtmp://{}", rtmp.local_addr()?),
        recording = state.recordings().is_some(),
        "live server is ready"
    );
    spawn_workers(&state, rtmp, &mut parts.first);
    sluice_http::role::run(http, parts, state, shutdown)
}
