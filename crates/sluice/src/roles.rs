//! What every role's command shares: logging, signals, secrets from the environment.
//! Starting and stopping a role is the role crate's own `start`.

use anyhow::Context;

/// `SLUICE_URL_SECRET` and `SLUICE_API_TOKEN` from the environment: comma-separated lists,
/// the first signs, all verify.
pub fn access_policy() -> sluice_http::AccessPolicy {
    let list = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| sluice_proto::SecretSet::parse(&v))
    };
    sluice_http::AccessPolicy {
        url_secret: list("SLUICE_URL_SECRET"),
        api_tokens: list("SLUICE_API_TOKEN"),
    }
}

/// `SLUICE_CLUSTER_SECRET`: a comma-separated list; the first is sent, all are accepted.
pub fn cluster_secret() -> Option<sluice_proto::SecretSet> {
    std::env::var("SLUICE_CLUSTER_SECRET")
        .ok()
        .and_then(|v| sluice_proto::SecretSet::parse(&v))
}

/// How a cluster role (`tracker`, `storage`, `edge`, `live`) admits cluster calls: with the
/// cluster secret, or, only when asked for by `--insecure-no-cluster-secret`, from anyone.
/// `serves_cluster_routes`: whether the role has routes that open mode would open (beside a
/// URL secret or API token they would be the way round them, so that is refused).
pub fn cluster_access(
    role: &str,
    insecure: bool,
    serves_cluster_routes: bool,
) -> anyhow::Result<sluice_http::ClusterAccess> {
    if let Some(secret) = cluster_secret() {
        return Ok(sluice_http::ClusterAccess::Secret(secret));
    }
    anyhow::ensure!(
        insecure,
        "SLUICE_CLUSTER_SECRET is not set: without it anyone who reaches this {role} could join \
         the cluster, register nodes or edges, or read and write files around every other \
         secret. Set it (the same value on every tracker, node, edge and live server), or pass \
         --insecure-no-cluster-secret for a lab"
    );
    let access = access_policy();
    anyhow::ensure!(
        !serves_cluster_routes || (access.url_secret.is_none() && access.api_tokens.is_none()),
        "--insecure-no-cluster-secret cannot be used with SLUICE_URL_SECRET or SLUICE_API_TOKEN: \
         open cluster routes would be the way round them; set SLUICE_CLUSTER_SECRET"
    );
    tracing::warn!(
        "INSECURE: running without SLUICE_CLUSTER_SECRET (--insecure-no-cluster-secret): anyone \
         who can reach this {role} can register nodes and edges and read and write every file \
         through the cluster routes; use this in a lab only"
    );
    Ok(sluice_http::ClusterAccess::Open)
}

/// Waits for the role to stop after SIGTERM/Ctrl-C (its shutdown future is
/// [`shutdown_signal`]), and says so.
pub async fn until_stopped<S>(running: sluice_http::Running<S>) -> anyhow::Result<()> {
    running.stopped().await.context("HTTP server")?;
    tracing::info!("stopped");
    Ok(())
}

/// Binds `addr` for `what`.
pub async fn bind(
    addr: std::net::SocketAddr,
    what: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for {what} on {addr}"))
}

/// Resolves on the first SIGTERM or SIGINT, saying which; a second one exits at once (as
/// an operator who presses Ctrl-C twice means).
pub async fn shutdown_requested() {
    let signal = shutdown_signal().await;
    tracing::info!(
        signal,
        "shutting down (a second SIGTERM or Ctrl-C exits at once)"
    );
    tokio::spawn(async {
        let again = shutdown_signal().await;
        tracing::warn!(
            signal = again,
            "second signal: exiting now, without waiting for requests or workers"
        );
        std::process::exit(1);
    });
}

/// Resolves with the name of the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

pub fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
