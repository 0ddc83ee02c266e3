//! The tracker role: knows every storage node and group from their heartbeats, chooses where
//! uploads go (`GET /v1/assign`, or a 307 from `POST /v1/files`), and routes reads to an active
//! node of a file's group (302). It holds only soft state, so any number run side by side.

mod edges;
mod registry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use sluice_http::{HttpLimits, HttpMetrics};
use sluice_proto::cluster::{Heartbeat, HeartbeatAnswer, NodeIdentity};
use sluice_proto::{FileId, GroupName};
use tokio::net::TcpListener;

pub use edges::EdgeRegistry;
pub use registry::{Placement, Registry, RetireError};

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    /// A node not heard from for this long is offline.
    pub offline_after: Duration,
    pub placement: Placement,
    /// Who may heartbeat, register edges and retire nodes; the secret sent to edges.
    pub cluster: sluice_http::ClusterAccess,
    /// Which web origins may follow its read redirects.
    pub cors: sluice_http::CorsPolicy,
    /// Signed-link and API-token rules: the tracker redirects nothing the nodes would refuse.
    pub access: sluice_http::AccessPolicy,
    /// Where the members file lives (the tracker's `--data`); `None` keeps it in memory only.
    pub members_file: Option<std::path::PathBuf>,
    pub http: HttpLimits,
    /// Client address prefixes and their regions, for routing without `?region=`.
    pub regions: Vec<(sluice_proto::net::IpPrefix, String)>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<sluice_proto::net::IpPrefix>,
}

#[derive(Clone)]
pub struct TrackerState {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    edges: EdgeRegistry,
    config: TrackerConfig,
    metrics: Arc<HttpMetrics>,
    /// Checks nodes reported unreachable.
    probe: reqwest::Client,
}

impl TrackerState {
    /// Fails only when the members file exists and cannot be read (see
    /// [`Registry::new`]).
    pub fn new(config: TrackerConfig) -> Result<Self, sluice_state::StateError> {
        let registry = Registry::new(
            config.offline_after,
            config.placement,
            config.members_file.clone(),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                edges: EdgeRegistry::new(config.offline_after),
                config,
                metrics: Arc::default(),
                // Probes ask one server about itself: a redirect elsewhere is no answer.
                probe: reqwest::Client::builder()
                    .timeout(Duration::from_millis(1000))
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .unwrap_or_default(),
            }),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    pub fn edges(&self) -> &EdgeRegistry {
        &self.inner.edges
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.inner.config
    }

    pub(crate) fn probe(&self) -> &reqwest::Client {
        &self.inner.probe
    }
}

pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    sluice_http::errors::Refusal::new(status, message).into_response()
}

/// The tracker's own routes. `sluice serve` merges the cluster ones into its router.
pub fn router(state: TrackerState) -> Router {
    let config = &state.inner.config;
    let routes = cluster_routes(config)
        .route("/v1/files", post(redirect_upload))
        .route("/v1/uploads", post(redirect_upload))
        .route(
            "/v1/files/{*fileid}",
            get(redirect_read).delete(redirect_write),
        );
    let common = sluice_http::CommonRoutes {
        role: "tracker",
        healthz: sluice_http::healthz_ok(),
        metrics: get(render_metrics),
        cors: config.cors.clone(),
        recorder: state.inner.metrics.clone(),
        access: config.access.clone(),
    };
    sluice_http::role_router(routes, common, state)
}

/// Largest JSON body the tracker reads (heartbeats, reports, preloads are a few hundred bytes).
pub const MAX_BODY: usize = 64 << 10;

/// A JSON request body, or why it could not be read (too large, cut short).
pub(crate) type BodyBytes = Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>;

/// The body's bytes; a rejection becomes a JSON error like every other.
pub(crate) fn read_body(body: BodyBytes) -> Result<axum::body::Bytes, Box<Response>> {
    body.map_err(|e| Box::new(error(e.status(), e.body_text())))
}

/// Registration, the cluster view and upload assignment.
pub fn cluster_routes(config: &TrackerConfig) -> Router<TrackerState> {
    // What only members of the cluster may call: heartbeats and retiring a node.
    let members = sluice_http::cluster::cluster_only(
        Router::new()
            .route("/v1/cluster/heartbeat", post(heartbeat))
            .route("/v1/cluster/nodes/{id}", axum::routing::delete(retire_node))
            .route("/v1/edges/heartbeat", post(edges::heartbeat)),
        config.cluster.clone(),
        config.access.clone(),
    );
    Router::new()
        .route("/v1/cluster", get(cluster_view))
        .route("/v1/assign", get(assign))
        .route("/v1/cluster/unreachable", post(report_unreachable))
        .route("/v1/edges", get(edges::list))
        .route("/v1/route/{*fileid}", get(edges::route))
        .route("/v1/preload", post(edges::preload))
        .merge(members)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
}

/// Serves the tracker on `listener` until `shutdown` resolves: the one way a tracker starts,
/// for `sluice tracker` and the tests alike. It has no background work: heartbeats come to it.
pub fn start(
    listener: TcpListener,
    state: TrackerState,
    shutdown_limits: sluice_http::ShutdownLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<sluice_http::Running<TrackerState>> {
    let parts = sluice_http::RoleParts::new(
        router(state.clone()),
        state.inner.config.http.clone(),
        shutdown_limits,
    );
    let known: usize = state
        .registry()
        .view()
        .groups
        .iter()
        .map(|g| g.nodes.len())
        .sum();
    tracing::info!(http = %format!("http://{}", listener.local_addr()?), known_nodes = known, "tracker is ready");
    sluice_http::role::run(listener, parts, state, shutdown)
}

/// A heartbeat body from a member of the cluster (the router checked the secret), parsed.
pub(crate) fn admit_beat<T: serde::de::DeserializeOwned>(
    body: BodyBytes,
    what: &str,
) -> Result<T, Box<Response>> {
    let body = read_body(body)?;
    serde_json::from_slice(&body)
        .map_err(|e| Box::new(error(StatusCode::BAD_REQUEST, format!("bad {what}: {e}"))))
}

async fn heartbeat(State(state): State<TrackerState>, body: BodyBytes) -> Response {
    let hb: Heartbeat = match admit_beat(body, "heartbeat") {
        Ok(hb) => hb,
        Err(refused) => return *refused,
    };
    if GroupName::new(&hb.group).is_err() {
        return error(StatusCode::BAD_REQUEST, "bad heartbeat: invalid group name");
    }
    if !(hb.url.starts_with("http://") || hb.url.starts_with("https://"))
        || hb.node_id.is_empty()
        || hb.node_id.len() > 64
    {
        return error(
            StatusCode::BAD_REQUEST,
            "bad heartbeat: node_id and an http(s) url are required",
        );
    }
    if state.registry().is_retired(&hb.node_id) {
        return error(
            StatusCode::FORBIDDEN,
            "this node was retired from the cluster for good",
        );
    }
    if let Err(why) = confirm_identity(&state, &hb).await {
        tracing::warn!(node = %hb.node_id, url = %hb.url, %why, "heartbeat refused");
        return error(StatusCode::CONFLICT, why);
    }
    let (group, node, url) = (hb.group.clone(), hb.node_id.clone(), hb.url.clone());
    if state.registry().heartbeat(hb) {
        tracing::info!(%group, %node, %url, "storage node joined");
    }
    axum::Json(HeartbeatAnswer {
        peers: state.registry().peers_of(&group, &node),
    })
    .into_response()
}

/// Before the tracker sends anyone to a node at a URL it has not known that node at (a new
/// node, or one that moved), it asks that URL who it is; for a move it also asks the old URL,
/// and refuses while another server still answers there as that node (the same server under
/// another name is a move). So a mistyped `--advertise` or a copied data directory (two
/// servers, one node id) cannot take another node's place.
async fn confirm_identity(state: &TrackerState, hb: &Heartbeat) -> Result<(), String> {
    let known = state.registry().url_of(&hb.node_id);
    if known.as_deref() == Some(hb.url.as_str()) {
        return Ok(());
    }
    let here = match ask_identity(state, &hb.url).await {
        Some(id) if id.node_id == hb.node_id && id.group == hb.group => id,
        Some(id) => {
            return Err(format!(
                "{} answers as node {} of group {}, not as node {} of group {}",
                hb.url, id.node_id, id.group, hb.node_id, hb.group
            ));
        }
        None => {
            return Err(format!(
                "{} did not say who it is (GET /v1/internal/identity); is --advertise right?",
                hb.url
            ));
        }
    };
    if let Some(old) = known {
        if ask_identity(state, &old)
            .await
            .is_some_and(|id| id.node_id == hb.node_id && id.instance != here.instance)
        {
            return Err(format!(
                "node {} still answers at {old}: two servers share one node id (a copied data directory?)",
                hb.node_id
            ));
        }
    }
    Ok(())
}

/// What the server at `url` says it is, if it answers.
async fn ask_identity(state: &TrackerState, url: &str) -> Option<NodeIdentity> {
    let mut ask = state.probe().get(format!("{url}/v1/internal/identity"));
    if let Some((name, value)) = state.config().cluster.secret_header() {
        ask = ask.header(name, value);
    }
    let answer = ask.send().await.ok()?;
    if !answer.status().is_success() {
        return None;
    }
    answer.json().await.ok()
}

#[derive(serde::Deserialize)]
struct UnreachableReport {
    url: String,
}

/// A client or peer could not reach a node. Anyone may say so, so the tracker checks for itself
/// (`GET /healthz`, briefly) before it stops sending traffic there; a node that answers is left
/// alone, and one that does not is offline until its next heartbeat.
async fn report_unreachable(State(state): State<TrackerState>, body: BodyBytes) -> Response {
    let body = match read_body(body) {
        Ok(b) => b,
        Err(refused) => return *refused,
    };
    let Ok(report) = serde_json::from_slice::<UnreachableReport>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "expected {\"url\": \"http://node\"}",
        );
    };
    if !state.registry().knows_url(&report.url) {
        return error(StatusCode::NOT_FOUND, "no node has that URL");
    }
    let alive = state
        .inner
        .probe
        .get(format!("{}/healthz", report.url))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success());
    if !alive && state.registry().mark_unreachable(&report.url) {
        tracing::warn!(url = %report.url, "node reported unreachable and failed a probe: offline until it heartbeats");
    }
    axum::Json(json!({ "offline": !alive })).into_response()
}

#[derive(serde::Deserialize)]
struct RetireQuery {
    #[serde(default)]
    force: bool,
}

/// `sluice cluster remove`: retires a node for good (admin; needs the cluster secret).
async fn retire_node(
    State(state): State<TrackerState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<RetireQuery>,
) -> Response {
    match state.registry().retire(&id, q.force) {
        Ok(()) => {
            tracing::warn!(node = %id, force = q.force, "node retired from the cluster");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(RetireError::Unknown) => error(StatusCode::NOT_FOUND, RetireError::Unknown.to_string()),
        Err(e) => error(StatusCode::CONFLICT, e.to_string()),
    }
}

async fn cluster_view(State(state): State<TrackerState>) -> Response {
    axum::Json(state.registry().view()).into_response()
}

#[derive(serde::Deserialize)]
struct AssignQuery {
    /// The upload's size, when known: the most the signed link allows.
    size: Option<u64>,
}

/// `GET /v1/assign[?size=N]`: where to upload. Asked with the API token (when tokens are in
/// use), the answer also carries a signed upload link for the node chosen.
async fn assign(
    State(state): State<TrackerState>,
    axum::extract::Query(q): axum::extract::Query<AssignQuery>,
    headers: HeaderMap,
) -> Response {
    let access = &state.inner.config.access;
    let asked_with_token = headers.contains_key(header::AUTHORIZATION);
    if asked_with_token {
        if let Err(denied) = access.check_bearer(&headers) {
            return denied.into_response();
        }
    }
    match state.registry().assign() {
        Some(mut a) => {
            if let (Some(tokens), true) = (&access.api_tokens, asked_with_token) {
                let node = a.url.trim_end_matches("/v1/files").to_owned();
                a.upload_url = Some(signed_node_link(
                    tokens,
                    ("POST", &node, "/v1/files"),
                    None,
                    q.size,
                    None,
                ));
            }
            axum::Json(a).into_response()
        }
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no storage group can take an upload now",
        ),
    }
}

/// How long the links a tracker hands out stay valid: long enough to start the request (a
/// link is checked when a request begins), and for clocks a few minutes apart. Never longer
/// than the caller's own signed link: handing one out grants nothing new.
pub const UPLOAD_LINK_TTL: u64 = 300;

/// A short-lived link, signed with the API token, for `method` of `path` on `node`, for a
/// caller who came with `grant` (a signed link of its own) or the token itself (`None`):
/// `{node}{path}?expires&max_size&sig`, then `rest` of a query.
fn signed_node_link(
    tokens: &sluice_proto::SecretSet,
    (method, node, path): (&str, &str, &str),
    grant: Option<sluice_proto::signature::UploadGrant>,
    max_size: Option<u64>,
    rest: Option<String>,
) -> String {
    let mut expires = sluice_http::access::now_unix() + UPLOAD_LINK_TTL;
    let mut max_size = max_size.unwrap_or(u64::MAX);
    if let Some(grant) = grant {
        expires = expires.min(grant.expires);
        max_size = max_size.min(grant.max_size);
    }
    let signed = sluice_proto::signature::sign_upload(tokens, method, path, expires, max_size);
    match rest {
        Some(rest) if !rest.is_empty() => format!("{node}{signed}&{rest}"),
        _ => format!("{node}{signed}"),
    }
}

/// A query without the signature parameters of a signed link (they were for this tracker).
fn without_signature(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|p| {
            let name = p.split('=').next().unwrap_or_default();
            !p.is_empty() && !matches!(name, "expires" | "max_size" | "sig")
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

pub(crate) fn redirect(status: StatusCode, location: &str) -> Response {
    let mut r = status.into_response();
    match HeaderValue::from_str(location) {
        Ok(v) => {
            r.headers_mut().insert(header::LOCATION, v);
            r
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "a node advertised an invalid URL",
        ),
    }
}

/// `POST /v1/files` or `/v1/uploads` on a tracker: a 307 to the node chosen. With API tokens
/// in use the Location is a short-lived upload link signed for that node (as large as the
/// caller's own signed link allowed, or as the body it declares), so a client that follows it
/// needs no token there: the token stays between the client and the trackers.
async fn redirect_upload(
    State(state): State<TrackerState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
) -> Response {
    let access = &state.inner.config.access;
    let grant = match access.check_write("POST", &uri, &headers) {
        Ok(grant) => grant,
        Err(denied) => return denied.into_response(),
    };
    let Some(a) = state.registry().assign() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no storage group can take an upload now",
        );
    };
    let node = a.url.trim_end_matches("/v1/files");
    let path = uri.path();
    let target = match &access.api_tokens {
        None => with_query(format!("{node}{path}"), uri.query().map(str::to_owned)),
        Some(tokens) => {
            let length_header = if path == "/v1/uploads" {
                "upload-length"
            } else {
                header::CONTENT_LENGTH.as_str()
            };
            let declared = headers
                .get(length_header)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            signed_node_link(
                tokens,
                ("POST", node, path),
                grant,
                declared,
                without_signature(uri.query()),
            )
        }
    };
    // 307 keeps the method and body: the client re-sends its upload (or its tus creation)
    // to the node.
    redirect(StatusCode::TEMPORARY_REDIRECT, &target)
}

/// Why a file request cannot be routed.
pub(crate) enum RouteError {
    BadId(sluice_proto::FileIdError),
    GroupDown,
    UnknownGroup,
}

impl IntoResponse for RouteError {
    fn into_response(self) -> Response {
        match self {
            RouteError::BadId(e) => {
                error(StatusCode::BAD_REQUEST, format!("malformed file id: {e}"))
            }
            RouteError::GroupDown => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no node of the file's group is up",
            ),
            RouteError::UnknownGroup => error(StatusCode::NOT_FOUND, "no such file"),
        }
    }
}

/// Where a request for `text` should go: a node of its group.
pub(crate) fn file_location(
    state: &TrackerState,
    text: &str,
    query: Option<String>,
) -> Result<String, RouteError> {
    let id = FileId::parse(text).map_err(RouteError::BadId)?;
    match state.registry().route(id.group.as_str()) {
        Ok(node) => Ok(with_query(format!("{node}/v1/files/{id}"), query)),
        Err(true) => Err(RouteError::GroupDown),
        Err(false) => Err(RouteError::UnknownGroup),
    }
}

async fn redirect_read(
    State(state): State<TrackerState>,
    uri: axum::http::Uri,
    Path(text): Path<String>,
) -> Response {
    if let Err(denied) = state.inner.config.access.check_read(&uri) {
        return denied.into_response();
    }
    match file_location(&state, &text, uri.query().map(str::to_owned)) {
        Ok(url) => redirect(StatusCode::FOUND, &url),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/files/{id}` on a tracker: a 307 to a node of the file's group, with a
/// short-lived delete link for it when API tokens are in use (as for uploads).
async fn redirect_write(
    State(state): State<TrackerState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    Path(text): Path<String>,
) -> Response {
    let access = &state.inner.config.access;
    let grant = match access.check_write("DELETE", &uri, &headers) {
        Ok(grant) => grant,
        Err(denied) => return denied.into_response(),
    };
    let query = match access.api_tokens {
        Some(_) => without_signature(uri.query()),
        None => uri.query().map(str::to_owned),
    };
    let url = match file_location(&state, &text, None) {
        Ok(url) => url,
        Err(e) => return e.into_response(),
    };
    let target = match &access.api_tokens {
        None => with_query(url, query),
        Some(tokens) => {
            let (node, path) = url.split_at(url.find("/v1/files/").unwrap_or(url.len()));
            signed_node_link(tokens, ("DELETE", node, path), grant, Some(0), query)
        }
    };
    redirect(StatusCode::TEMPORARY_REDIRECT, &target)
}

pub(crate) fn with_query(url: String, query: Option<String>) -> String {
    match query {
        Some(q) if !q.is_empty() => format!("{url}?{q}"),
        _ => url,
    }
}

async fn render_metrics(State(state): State<TrackerState>) -> Response {
    let mut out = String::with_capacity(4096);
    state.inner.metrics.render(&mut out);
    let view = state.registry().view();
    let nodes = view.groups.iter().flat_map(|g| &g.nodes);
    let active = nodes
        .clone()
        .filter(|n| n.state == sluice_proto::cluster::NodeState::Active)
        .count();
    sluice_metrics::render_gauge(
        &mut out,
        "sluice_tracker_groups",
        "Groups known to this tracker.",
        view.groups.len() as u64,
    );
    sluice_metrics::render_gauge(
        &mut out,
        "sluice_tracker_nodes",
        "Storage nodes known to this tracker.",
        nodes.count() as u64,
    );
    sluice_metrics::render_gauge(
        &mut out,
        "sluice_tracker_live_edges",
        "Edges heard from recently.",
        state.edges().view().iter().filter(|e| e.live).count() as u64,
    );
    sluice_metrics::render_gauge(
        &mut out,
        "sluice_tracker_active_nodes",
        "Storage nodes heard from recently.",
        active as u64,
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
