//! The HTTP/1.1 server loop every Sluice role shares.
//!
//! `axum::serve` has no connection limit and no header timeout (a slow client could hold any
//! number of connections forever), so roles serve their routers through [`serve`] instead:
//! at most `max_connections` at once (further ones wait in the kernel's accept queue, as with
//! nginx's `worker_connections`), TCP_NODELAY, a deadline for request heads, a send timeout
//! for clients that stop reading, and a graceful shutdown that stops accepting and waits for
//! connections to finish their requests.

pub mod access;
pub mod cluster;
pub mod content;
pub mod cors;
mod deadline;
pub mod errors;
pub mod files;
pub mod metrics;
pub mod role;

pub use access::{AccessDenied, AccessPolicy};
pub use cluster::{ClusterAccess, ClusterRefused};
pub use content::ActiveContent;
pub use cors::CorsPolicy;
pub use deadline::SendTimeout;
pub use errors::{HttpError, error_response};
pub use metrics::HttpMetrics;
pub use role::{
    CommonRoutes, NoRoute, RoleParts, Running, ShutdownLimits, Stopping, Workers, healthz_ok,
    role_router,
};

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Limits on what clients may hold; every one is configurable and enforced.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a complete request head (slowloris defence).
    pub header_read_timeout: Duration,
    /// Time a client may take no bytes of a response that waits for it before its
    /// connection is closed (a client that asks and never reads holds nothing for long).
    pub send_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(60),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting and waits for
/// open connections to finish the requests they are in (idle keep-alive connections close at
/// once). The caller bounds that wait if it wants to.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let router = router.layer(axum::middleware::from_fn(errors::json_errors));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    // Connections are tasks of this set: when this future is dropped (a shutdown past its
    // grace), they are aborted with it, and what they held (an upload's writer, a store
    // handle) is let go.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: say so, and give the system a
                    // moment rather than spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = stream;
        let _ = stream.set_nodelay(true);
        // Handlers that care who is calling (region routing) extract `ConnectInfo`; those
        // that want another send timeout for their response (live streams), `SendTimeout`.
        let send_timeout = SendTimeout::new(limits.send_timeout);
        let service = tower_layer::Layer::layer(
            &axum::Extension(axum::extract::ConnectInfo(peer)),
            router.clone(),
        );
        let service = tower_layer::Layer::layer(&axum::Extension(send_timeout.clone()), service);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(
                TokioIo::new(deadline::SendDeadline::new(stream, send_timeout)),
                TowerToHyperService::new(service),
            );
        let connection = graceful.watch(connection);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    connections.join_all().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    async fn start(
        limits: HttpLimits,
    ) -> (
        String,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let router = Router::new().route("/", get(|| async { "hi" }));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, router, limits, async move {
            let _ = rx.await;
        }));
        (addr, tx, task)
    }

    async fn get_root(addr: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn connection_limit_holds_extra_clients_until_one_leaves() {
        let (addr, _stop, _task) = start(HttpLimits {
            max_connections: 2,
            ..HttpLimits::default()
        })
        .await;
        // Two clients that opened a request and went quiet hold both places.
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(&addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            held.push(s);
        }
        let third = tokio::spawn({
            let addr = addr.clone();
            async move { get_root(&addr).await }
        });
        // The third is not served while both places are taken...
        let waited = tokio::time::timeout(Duration::from_millis(300), async {
            while !third.is_finished() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(
            waited.is_err(),
            "a third connection was served past the limit of 2"
        );
        // ...and is served as soon as one leaves.
        drop(held.pop());
        let answer = tokio::time::timeout(Duration::from_secs(10), third)
            .await
            .unwrap()
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }

    #[tokio::test]
    async fn slow_request_heads_are_cut_off() {
        let (addr, _stop, _task) = start(HttpLimits {
            header_read_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        })
        .await;
        let mut s = TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let mut out = Vec::new();
        // The server closes the connection (possibly after a 408) instead of waiting forever.
        let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        assert!(closed.is_ok(), "slow client kept its connection");
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_cut_off_and_frees_its_place() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let big = axum::body::Bytes::from(vec![7u8; 64 << 20]);
        let router = Router::new()
            .route("/big", get(move || async move { big.clone() }))
            .route("/", get(|| async { "hi" }));
        let limits = HttpLimits {
            max_connections: 1,
            send_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        let mut stalled = TcpStream::connect(&addr).await.unwrap();
        stalled
            .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // It holds the only place until its send timeout passes; then the next client is
        // served, and the stalled one finds its connection closed with the body cut short.
        let answer = tokio::time::timeout(Duration::from_secs(10), get_root(&addr))
            .await
            .expect("served once the stalled client was cut off");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut got)).await;
        assert!(
            got.len() < 64 << 20,
            "the whole body went to a client that was not reading"
        );
    }

    #[tokio::test]
    async fn shutdown_finishes_and_stops_accepting() {
        let (addr, stop, task) = start(HttpLimits::default()).await;
        assert!(get_root(&addr).await.starts_with("HTTP/1.1 200"));
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(TcpStream::connect(&addr).await.is_err());
    }
}
