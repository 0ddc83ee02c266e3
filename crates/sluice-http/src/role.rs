//! What every role's startup shares: background work as named workers that all stop within a
//! deadline, and serving the role's router until shutdown, with a bounded drain.
//!
//! Each role crate has `start(listener, config, shutdown) -> Running<State>`: it opens what the
//! role needs, starts its workers, and hands both to [`run`]. The binary and the tests call the
//! same `start`, so they cannot drift apart.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::HttpLimits;

/// Resolves when the role is told to stop; each worker gets one.
pub type Stopping = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A role's background work (heartbeats, catch-up, scrub, an RTMP listener...): named tasks,
/// stopped together, each given what is left of one deadline.
pub struct Workers {
    stop: watch::Sender<bool>,
    running: Vec<(&'static str, JoinHandle<()>)>,
}

impl Default for Workers {
    fn default() -> Self {
        Self::new()
    }
}

impl Workers {
    pub fn new() -> Self {
        Self {
            stop: watch::channel(false).0,
            running: Vec::new(),
        }
    }

    /// A future that resolves when the workers are told to stop.
    pub fn stopping(&self) -> Stopping {
        let mut told = self.stop.subscribe();
        Box::pin(async move {
            let _ = told.wait_for(|stop| *stop).await;
        })
    }

    /// Starts `work` as the worker `name` (its logs carry the name); it should return soon
    /// after the future it is given resolves.
    pub fn spawn<F, Fut>(&mut self, name: &'static str, work: F)
    where
        F: FnOnce(Stopping) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = work(self.stopping());
        let span = tracing::info_span!("worker", name);
        self.running
            .push((name, tokio::spawn(task.instrument(span))));
    }

    /// The names of the workers started, in order.
    pub fn names(&self) -> Vec<&'static str> {
        self.running.iter().map(|(name, _)| *name).collect()
    }

    /// Tells every worker to stop and waits for them until `deadline` has passed; those still
    /// running then are aborted, by name, so a stuck one never holds shutdown up.
    pub async fn stop(self, deadline: Duration) {
        let _ = self.stop.send(true);
        let until = tokio::time::Instant::now() + deadline;
        for (name, mut task) in self.running {
            match tokio::time::timeout_at(until, &mut task).await {
                Ok(Ok(())) => tracing::debug!(worker = name, "stopped"),
                Ok(Err(e)) if e.is_panic() => {
                    tracing::error!(worker = name, "worker panicked");
                }
                Ok(Err(_)) => {}
                Err(_) => {
                    tracing::warn!(
                        worker = name,
                        deadline_ms = deadline.as_millis() as u64,
                        "worker did not stop within the shutdown deadline; aborting it"
                    );
                    task.abort();
                }
            }
        }
    }
}

/// How long a role's shutdown may take.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownLimits {
    /// Requests in flight get this long to finish after shutdown is asked for; then they are
    /// cut off (an upload cut off leaves nothing behind).
    pub grace: Duration,
    /// Then the workers get this long to stop.
    pub workers: Duration,
}

impl Default for ShutdownLimits {
    fn default() -> Self {
        Self {
            grace: Duration::from_secs(30),
            workers: Duration::from_secs(10),
        }
    }
}

/// What a role serves: its router, limits and workers, and what to do last (close a store).
pub struct RoleParts {
    pub router: Router,
    pub limits: HttpLimits,
    pub shutdown: ShutdownLimits,
    /// Stopped first, as shutdown starts, while the HTTP server still serves (within the
    /// grace): work that must finish through it, like the RTMP side ending its streams and
    /// storing their recordings (`serve` uploads them to itself).
    pub first: Workers,
    pub workers: Workers,
    /// Runs once requests and workers are done: flushing and closing what the role opened.
    pub close: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl RoleParts {
    pub fn new(router: Router, limits: HttpLimits, shutdown: ShutdownLimits) -> Self {
        Self {
            router,
            limits,
            shutdown,
            first: Workers::new(),
            workers: Workers::new(),
            close: Box::pin(async {}),
        }
    }
}

/// A role serving on its listener; `state` is the role's shared state (tests reach in).
pub struct Running<S> {
    pub state: S,
    addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl<S> Running<S> {
    /// The address the role listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until the role has stopped: after its shutdown future resolved, requests were
    /// drained (within the grace), workers stopped (within their deadline) and the store
    /// closed. An error means the HTTP server itself failed. Drop every other clone of
    /// the state first: a store is closed once nothing else holds it.
    pub async fn stopped(self) -> std::io::Result<()> {
        let Running { state, task, .. } = self;
        drop(state);
        match task.await {
            Ok(result) => result,
            Err(e) => Err(std::io::Error::other(format!("role task: {e}"))),
        }
    }
}

/// Serves `parts.router` on `listener` until `shutdown` resolves; then stops the `first`
/// workers (within the grace, still serving), stops accepting, gives requests in flight what
/// is left of the grace (then cuts them off), stops the workers within their deadline, and
/// runs `parts.close`.
pub fn run<S>(
    listener: TcpListener,
    parts: RoleParts,
    state: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Running<S>> {
    let addr = listener.local_addr()?;
    let RoleParts {
        router,
        limits,
        shutdown: deadlines,
        first,
        workers,
        close,
    } = parts;
    let task = tokio::spawn(async move {
        let (drain, draining) = tokio::sync::oneshot::channel::<()>();
        let mut server = tokio::spawn(crate::serve(listener, router, limits, async move {
            let _ = draining.await;
        }));
        let served = tokio::select! {
            () = shutdown => {
                let until = tokio::time::Instant::now() + deadlines.grace;
                if !first.names().is_empty() {
                    tracing::info!(workers = ?first.names(), "shutting down: ending streams first");
                    first.stop(deadlines.grace).await;
                }
                tracing::info!(grace_ms = until.saturating_duration_since(tokio::time::Instant::now()).as_millis() as u64, "shutting down: finishing requests in flight");
                let _ = drain.send(());
                match tokio::time::timeout_at(until, &mut server).await {
                    Ok(joined) => flatten(joined),
                    Err(_) => {
                        tracing::warn!("requests still running after the grace period; cutting them off (their uploads leave nothing behind)");
                        // Aborting the server drops its connections' tasks with it.
                        server.abort();
                        let _ = (&mut server).await;
                        Ok(())
                    }
                }
            }
            joined = &mut server => flatten(joined),
        };
        workers.stop(deadlines.workers).await;
        close.await;
        served
    });
    Ok(Running { state, addr, task })
}

fn flatten(joined: Result<std::io::Result<()>, tokio::task::JoinError>) -> std::io::Result<()> {
    joined.unwrap_or_else(|e| Err(std::io::Error::other(format!("HTTP server task: {e}"))))
}

/// Any path no route of the role takes: 404 with the JSON body every error has.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("no such endpoint")]
pub struct NoRoute;

impl crate::HttpError for NoRoute {
    fn status(&self) -> axum::http::StatusCode {
        axum::http::StatusCode::NOT_FOUND
    }
}

impl axum::response::IntoResponse for NoRoute {
    fn into_response(self) -> axum::response::Response {
        crate::error_response(&self)
    }
}

#[derive(serde::Deserialize)]
struct SignQuery {
    path: String,
    #[serde(default = "an_hour")]
    ttl: u64,
}

fn an_hour() -> u64 {
    3600
}

/// A read path this server could serve: a file or a live stream, in plain visible ASCII
/// (what a browser sends as it is), with no way out of its prefix.
fn signable(path: &str) -> bool {
    (path.starts_with("/v1/files/") || path.starts_with("/live/"))
        && path.len() <= 2048
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"?#\\%".contains(&b))
        && !path.contains("//")
        && !path.split('/').any(|part| part == ".." || part == ".")
}

/// Longest a link made by `/v1/sign` lives.
const LONGEST_LINK: u64 = 24 * 3600;

/// `GET /v1/sign?path=PATH[&ttl=SECS]`: a signed link to PATH for a holder of the API token,
/// so a console in a private deployment plays private media without holding the URL secret.
/// Where reads need no signature the path comes back as it is. With a URL secret but no API
/// token set, nobody could be told from anybody, so nothing is signed.
fn sign(
    access: &crate::AccessPolicy,
    headers: &axum::http::HeaderMap,
    query: &SignQuery,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let refuse = |status, why: &str| crate::errors::Refusal::new(status, why).into_response();
    if !signable(&query.path) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "path must be a file or live stream path (/v1/files/... or /live/...), with no query",
        );
    }
    let Some(secret) = &access.url_secret else {
        return axum::Json(serde_json::json!({ "url": query.path })).into_response();
    };
    if access.api_tokens.is_none() {
        return refuse(
            StatusCode::FORBIDDEN,
            "this server signs links only for holders of its API token, and has none set (SLUICE_API_TOKEN)",
        );
    }
    if let Err(denied) = access.check_bearer(headers) {
        return denied.into_response();
    }
    let expires = crate::access::now_unix().saturating_add(query.ttl.clamp(1, LONGEST_LINK));
    let url = sluice_proto::signature::sign_download(secret, &query.path, expires);
    axum::Json(serde_json::json!({ "url": url, "expires": expires })).into_response()
}

/// What every role answers besides its own routes.
pub struct CommonRoutes<S> {
    /// What `GET /v1/about` calls this role (`storage`, `serve`, `tracker`, `edge`, `live`).
    pub role: &'static str,
    /// `GET /healthz`: [`healthz_ok`] unless the role has more to say.
    pub healthz: axum::routing::MethodRouter<S>,
    /// `GET /metrics`, in the Prometheus text format.
    pub metrics: axum::routing::MethodRouter<S>,
    /// Which web origins may read.
    pub cors: crate::CorsPolicy,
    /// Where every request is counted (rendered by the role's `/metrics`).
    pub recorder: std::sync::Arc<crate::HttpMetrics>,
    /// The role's read and write rules: `/v1/sign` makes signed links for token holders.
    pub access: crate::AccessPolicy,
}

/// `{"status": "ok"}`: the process answers.
pub fn healthz_ok<S: Clone + Send + Sync + 'static>() -> axum::routing::MethodRouter<S> {
    axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) })
}

/// When the process started, for `/v1/about`.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// A role's whole router: its own `routes`, `/healthz`, `/metrics`, `/v1/about`, the web
/// console (`/` sends a browser there), a JSON 404 for any other path, CORS, and every
/// request counted.
pub fn role_router<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    common: CommonRoutes<S>,
    state: S,
) -> Router {
    STARTED.get_or_init(std::time::Instant::now);
    let role = common.role;
    // What a client (the console) must bring: a signed link to read, a token to write.
    let signed_reads = common.access.url_secret.is_some();
    let token_writes = common.access.api_tokens.is_some();
    routes
        .route("/healthz", common.healthz)
        .route("/metrics", common.metrics)
        .route(
            "/v1/about",
            axum::routing::get(move || async move {
                let uptime = STARTED.get().map_or(0, |t| t.elapsed().as_secs());
                axum::Json(serde_json::json!({
                    "role": role,
                    "version": env!("CARGO_PKG_VERSION"),
                    "uptime_secs": uptime,
                    "signed_reads": signed_reads,
                    "token_writes": token_writes,
                }))
            }),
        )
        .route(
            "/v1/sign",
            axum::routing::get({
                let access = common.access.clone();
                move |headers: axum::http::HeaderMap,
                      query: axum::extract::Query<SignQuery>| async move {
                    sign(&access, &headers, &query)
                }
            }),
        )
        .merge(sluice_console::routes())
        .fallback(|| async { NoRoute })
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::new(common.cors),
            crate::cors::cors,
        ))
        .layer(axum::middleware::from_fn_with_state(
            common.recorder,
            crate::metrics::record,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn workers_stop_when_told_and_a_stuck_one_is_aborted_at_the_deadline() {
        let mut workers = Workers::new();
        let polite_stopped = Arc::new(AtomicBool::new(false));
        let flag = polite_stopped.clone();
        workers.spawn("polite", move |stopping| async move {
            stopping.await;
            flag.store(true, Ordering::SeqCst);
        });
        workers.spawn("stuck", |_stopping| std::future::pending());
        assert_eq!(workers.names(), ["polite", "stuck"]);
        let started = std::time::Instant::now();
        workers.stop(Duration::from_millis(200)).await;
        assert!(polite_stopped.load(Ordering::SeqCst));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a stuck worker held shutdown up"
        );
    }

    #[tokio::test]
    async fn a_running_role_stops_its_server_workers_and_closes_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router = Router::new().route("/", axum::routing::get(|| async { "hi" }));
        let mut parts = RoleParts::new(router, HttpLimits::default(), ShutdownLimits::default());
        let worker_done = Arc::new(AtomicBool::new(false));
        let closed_after_worker = Arc::new(AtomicBool::new(false));
        let flag = worker_done.clone();
        parts.workers.spawn("w", move |stopping| async move {
            stopping.await;
            flag.store(true, Ordering::SeqCst);
        });
        let (done, closed) = (worker_done.clone(), closed_after_worker.clone());
        parts.close = Box::pin(async move {
            closed.store(done.load(Ordering::SeqCst), Ordering::SeqCst);
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = run(listener, parts, (), async move {
            let _ = stopped.await;
        })
        .unwrap();
        let addr = running.addr();
        assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), running.stopped())
            .await
            .expect("stopped in time")
            .unwrap();
        assert!(closed_after_worker.load(Ordering::SeqCst));
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    #[test]
    fn links_are_signed_only_for_token_holders_and_verify() {
        use axum::http::{HeaderMap, HeaderValue, StatusCode};
        let secret = sluice_proto::SecretSet::parse("url-secret");
        let query = SignQuery {
            path: "/v1/files/g1/abc".into(),
            ttl: 60,
        };
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", HeaderValue::from_static("Bearer tok"));
        // Reads need no signature: the path as it is.
        let open = crate::AccessPolicy::default();
        assert_eq!(
            sign(&open, &HeaderMap::new(), &query).status(),
            StatusCode::OK
        );
        // A URL secret with no API token: nobody can be told apart, nothing is signed.
        let no_tokens = crate::AccessPolicy {
            url_secret: secret.clone(),
            api_tokens: None,
        };
        assert_eq!(
            sign(&no_tokens, &bearer, &query).status(),
            StatusCode::FORBIDDEN
        );
        let private = crate::AccessPolicy {
            url_secret: secret.clone(),
            api_tokens: sluice_proto::SecretSet::parse("tok"),
        };
        assert_eq!(
            sign(&private, &HeaderMap::new(), &query).status(),
            StatusCode::UNAUTHORIZED
        );
        for odd in [
            "/v1/files/g1/abc?x=1",
            "//evil.example/x",
            "/v1/files/../x",
            "/\\evil.example/x",
            "/v1/files/g1/a b",
            "/v1/files/g1/\u{e9}",
            "/metrics",
        ] {
            let bad = SignQuery {
                path: odd.into(),
                ttl: 60,
            };
            assert_eq!(
                sign(&private, &bearer, &bad).status(),
                StatusCode::BAD_REQUEST,
                "{odd}"
            );
        }
        assert_eq!(sign(&private, &bearer, &query).status(), StatusCode::OK);
    }
}
