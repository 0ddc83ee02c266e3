//! `sluice serve`: every role this build has, in one process, on one data directory.

use std::time::Duration;

use anyhow::Context;
use sluice_storage::{BlobStore, StorageConfig, StorageState};
use tokio::net::TcpListener;

use crate::cli::ServeArgs;
use crate::config::ServeConfig;

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    init_logging();
    let config = ServeConfig::load(&args)?;
    let data = config.raw.data.clone();
    let options = config.blob.clone();
    let store = tokio::task::spawn_blocking(move || BlobStore::open(&data, options))
        .await
        .context("opening the data directory")?
        .with_context(|| format!("data directory {}", config.raw.data.display()))?;
    let state = StorageState::new(
        store.clone(),
        StorageConfig {
            group: config.group.clone(),
            max_upload_size: config.raw.max_upload_size.0,
            body_idle_timeout: Duration::from_secs(config.raw.body_idle_timeout_secs),
            http: sluice_storage::HttpLimits {
                max_connections: config.raw.max_connections,
                header_read_timeout: Duration::from_secs(config.raw.header_read_timeout_secs),
            },
        },
    );
    let listener = TcpListener::bind(config.raw.http)
        .await
        .with_context(|| format!("listening on {}", config.raw.http))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        http = %format!("http://{addr}"),
        data = %config.raw.data.display(),
        group = %config.group,
        files = store.files(),
        "sluice serve is ready"
    );
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "listening on {addr}, beyond loopback, with no API token: anyone who can reach it can upload and delete"
        );
    }

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sluice_storage::run(listener, state, async move {
        let _ = stop_rx.await;
    }));
    let grace = Duration::from_secs(config.raw.shutdown_grace_secs);
    tokio::select! {
        signal = shutdown_signal() => {
            tracing::info!(signal, grace_secs = grace.as_secs(), "shutting down: finishing requests in flight");
            let _ = stop_tx.send(());
        }
    }
    let mut server = server;
    match tokio::time::timeout(grace, &mut server).await {
        Ok(Ok(result)) => result.context("HTTP server")?,
        Ok(Err(e)) => return Err(e).context("HTTP server task"),
        Err(_) => {
            tracing::warn!(
                "requests still running after the grace period; stopping them (their uploads leave nothing behind)"
            );
            server.abort();
        }
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves with the name of the first SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() -> &'static str {
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

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
