//! The client commands: upload, download, delete, stat, bench.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use sluice_client::Client;
use sluice_client::bench::{BenchKind, BenchPlan};
use sluice_client::cluster::Endpoint;
use sluice_proto::FileId;

use crate::cli::SignArgs;
use crate::cli::{
    BenchArgs, BenchMode, ClusterAction, ClusterArgs, DeleteArgs, DownloadArgs, StatArgs,
    TargetArg, UploadArgs,
};
use crate::progress::Progress;

/// Where file commands go, with `SLUICE_API_TOKEN` for writes and `SLUICE_URL_SECRET` (when
/// set) signing reads.
fn endpoint(target: &TargetArg) -> anyhow::Result<Endpoint> {
    Ok(
        Endpoint::new(target.server.as_deref(), &target.trackers, api_token())?
            .with_url_secret(crate::roles::access_policy().url_secret),
    )
}

/// The first of `SLUICE_API_TOKEN`'s tokens, sent on writes.
pub(crate) fn api_token() -> Option<String> {
    crate::roles::access_policy()
        .api_tokens
        .map(|t| t.current().to_owned())
}

pub async fn upload(args: UploadArgs) -> anyhow::Result<ExitCode> {
    let client = endpoint(&args.target)?;
    if args.progressive {
        for path in &args.files {
            upload_progressive(&client, path, &args)
                .await
                .with_context(|| format!("uploading {}", path.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Stops at the first failure so line k of the output always belongs to argument k.
    for path in &args.files {
        let len = std::fs::metadata(path).map(|m| m.len()).ok();
        let progress = std::sync::Arc::new(Progress::new(path.display().to_string()));
        let shown = progress.clone();
        let response = client
            .upload_file(path, move |sent| shown.update(sent, len))
            .await
            .with_context(|| format!("uploading {}", path.display()))?;
        progress.finish();
        println!("{}", response.fileid);
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn download(args: DownloadArgs) -> anyhow::Result<ExitCode> {
    let id = FileId::parse(&args.fileid).with_context(|| format!("file id {:?}", args.fileid))?;
    let client = endpoint(&args.target)?;
    let output = args
        .output
        .unwrap_or_else(|| PathBuf::from(id.key.to_string()));
    let progress = Progress::new(args.fileid.clone());
    client
        .download_to(&args.fileid, &output, |done, total| {
            progress.update(done, total)
        })
        .await?;
    progress.finish();
    Ok(ExitCode::SUCCESS)
}

pub async fn delete(args: DeleteArgs) -> anyhow::Result<ExitCode> {
    let client = endpoint(&args.target)?;
    for fileid in &args.fileids {
        FileId::parse(fileid).with_context(|| format!("file id {fileid:?}"))?;
        client.delete(fileid).await?;
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn stat(args: StatArgs) -> anyhow::Result<ExitCode> {
    FileId::parse(&args.fileid).with_context(|| format!("file id {:?}", args.fileid))?;
    let client = endpoint(&args.target)?;
    let stat = client.stat(&args.fileid).await?;
    println!("{}", serde_json::to_string(&stat)?);
    Ok(ExitCode::SUCCESS)
}

pub async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if let BenchMode::Live = args.mode {
        return bench_live(&args).await;
    }
    let server = args
        .server
        .clone()
        .context("--server URL (or SLUICE_SERVER) is needed for upload and download")?;
    anyhow::ensure!(args.connections > 0, "-c must be at least 1");
    anyhow::ensure!(args.requests > 0, "-n must be at least 1");
    let size = usize::try_from(args.size.0)
        .ok()
        .filter(|s| *s <= 1 << 30)
        .context("--size must be at most 1GiB")?;
    let client = Client::new(&server)?.with_token(api_token());
    let plan = BenchPlan {
        kind: match args.mode {
            BenchMode::Upload => BenchKind::Upload,
            _ => BenchKind::Download,
        },
        connections: args.connections,
        requests: args.requests,
        size,
        distinct_files: args.files,
    };
    let report = sluice_client::bench::run(&client, &plan).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn cluster(args: ClusterArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!args.trackers.is_empty(), "give at least one --tracker URL");
    if let Some(ClusterAction::Remove { node, force }) = &args.action {
        let secret = crate::roles::cluster_secret();
        // Every tracker keeps its own registry: each must retire the node.
        for tracker in &args.trackers {
            Client::new(tracker)?
                .retire_node(node, *force, secret.as_ref().map(|s| s.current()))
                .await
                .with_context(|| format!("retiring {node} on {tracker}"))?;
            eprintln!("{tracker}: {node} retired");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut last_error = None;
    for tracker in &args.trackers {
        match Client::new(tracker)?.cluster().await {
            Ok(view) => {
                if args.json {
                    println!("{}", serde_json::to_string(&view)?);
                } else {
                    print!("{}", cluster_table(&view));
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.map_or_else(|| anyhow::anyhow!("no tracker given"), anyhow::Error::from))
}

/// A size for people: "812B", "15.3MiB", "39.8GiB".
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn cluster_table(view: &sluice_proto::cluster::ClusterView) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<26} {:<8} {:>10} {:>12} {:>12} {:>8} {:>8} {:>9}  URL",
        "GROUP", "NODE", "STATE", "FILES", "BYTES", "FREE", "LAG", "PENDING", "SEEN"
    );
    for g in &view.groups {
        for n in &g.nodes {
            let state = serde_json::to_value(n.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let seen = if n.last_seen_ms == u64::MAX {
                "never".to_owned()
            } else {
                format!("{:.1}s", n.last_seen_ms as f64 / 1000.0)
            };
            let _ = writeln!(
                out,
                "{:<10} {:<26} {:<8} {:>10} {:>12} {:>12} {:>8} {:>8} {:>9}  {}",
                g.name,
                n.id,
                state,
                n.files,
                human_bytes(n.bytes),
                human_bytes(n.free_bytes),
                n.sync_lag,
                n.catch_up_pending,
                seen,
                n.url
            );
        }
    }
    out
}

pub fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.path.starts_with('/'),
        "the path must start with / (e.g. /v1/files/g1/..., or /live/cam with --publish)"
    );
    anyhow::ensure!(!args.path.contains('?'), "give the path without a query");
    let expires = sluice_http::access::now_unix().saturating_add(args.ttl);
    let policy = crate::roles::access_policy();
    let signed = if args.publish {
        let tokens = policy.api_tokens.context("SLUICE_API_TOKEN is not set")?;
        anyhow::ensure!(
            args.path.split('/').filter(|p| !p.is_empty()).count() == 2,
            "a publish path is /APP/STREAM (e.g. /live/cam)"
        );
        sluice_proto::signature::sign_publish(&tokens, &args.path, expires)
    } else if args.upload {
        let tokens = policy.api_tokens.context("SLUICE_API_TOKEN is not set")?;
        let max = args.max_size.context("--upload needs --max-size")?;
        sluice_proto::signature::sign_upload(
            &tokens,
            &args.method.to_ascii_uppercase(),
            &args.path,
            expires,
            max.0,
        )
    } else {
        let secrets = policy.url_secret.context("SLUICE_URL_SECRET is not set")?;
        sluice_proto::signature::sign_download(&secrets, &args.path, expires)
    };
    println!("{signed}");
    Ok(ExitCode::SUCCESS)
}

/// One file, progressively: converted to progressive JPEG when it is an image, its id printed
/// the moment it is committed, then the rest sent.
async fn upload_progressive(
    client: &sluice_client::cluster::Endpoint,
    path: &std::path::Path,
    args: &UploadArgs,
) -> anyhow::Result<()> {
    use sluice_client::progressive::{ProgressiveEvent, ProgressivePlan};
    use std::io::Write;
    let original = tokio::fs::read(path).await?;
    let name = path.display().to_string();
    let (data, content_type) = match sluice_transcode::to_progressive(&original) {
        Ok(image) => {
            eprintln!(
                "{name}: {} ({} -> {} bytes)",
                image.conversion.describe(),
                original.len(),
                image.jpeg.len()
            );
            (image.jpeg, "image/jpeg".to_owned())
        }
        Err(sluice_transcode::TranscodeError::NotAnImage) => {
            eprintln!("{name}: not a JPEG or PNG; sent as it is");
            let ct = sluice_client::guess_content_type(path).to_owned();
            (original, ct)
        }
        Err(e) => return Err(e.into()),
    };
    let mut filename = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if content_type == "image/jpeg" && !filename.ends_with(".jpg") {
        filename = format!(
            "{}.jpg",
            path.file_stem().unwrap_or_default().to_string_lossy()
        );
    }
    let plan = ProgressivePlan {
        q: args.q,
        chunk: usize::try_from(args.chunk.0).unwrap_or(usize::MAX),
        limit_rate: args.limit_rate.map(|r| r.0),
        id_budget: std::time::Duration::from_millis(args.id_budget_ms),
        filename,
        content_type,
        sender: args.sender.clone(),
        receiver: args.receiver.clone(),
    };
    let total = data.len() as u64;
    let progress = Progress::new(name.clone());
    let mut on_event = |event: ProgressiveEvent| match event {
        ProgressiveEvent::MtsChosen {
            q,
            mts,
            bytes_per_sec,
        } => {
            progress.finish();
            eprintln!(
                "{name}: dynamic MTS: link measured at {:.0} KiB/s, q = {q:.2} (the id after {mts} of {total} bytes)",
                bytes_per_sec / 1024.0
            );
        }
        ProgressiveEvent::Acknowledged(n) => progress.update(n, Some(total)),
        ProgressiveEvent::Committed { fileid, .. } => {
            // The sender is done: say so at once, on stdout, before the rest uploads.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{fileid}");
            let _ = out.flush();
        }
    };
    let outcome = client
        .upload_progressive(data.into(), &plan, &mut on_event)
        .await?;
    progress.finish();
    eprintln!(
        "{name}: id after {:.3} s, complete after {:.3} s ({} bytes, q = {:.2})",
        outcome.time_to_id.as_secs_f64(),
        outcome.time_to_complete.as_secs_f64(),
        outcome.size,
        outcome.q
    );
    Ok(())
}

async fn bench_live(args: &BenchArgs) -> anyhow::Result<ExitCode> {
    use sluice_client::live_bench::{LivePlan, LiveProtocol};
    let rtmp_url = args
        .rtmp
        .clone()
        .context("--rtmp rtmp://host:port/app/stream is needed for bench live")?;
    anyhow::ensure!(args.players > 0, "--players must be at least 1");
    anyhow::ensure!(args.bitrate >= 8_000, "--bitrate must be at least 8000");
    let protocol = match args.protocol {
        crate::cli::LiveProtocolArg::Rtmp => LiveProtocol::Rtmp,
        crate::cli::LiveProtocolArg::Flv => LiveProtocol::Flv,
    };
    anyhow::ensure!(
        protocol == LiveProtocol::Rtmp || args.flv.is_some(),
        "--protocol flv needs --flv http://host:port/live/app/stream.flv"
    );
    let plan = LivePlan {
        rtmp_url,
        flv_url: args.flv.clone(),
        protocol,
        players: args.players,
        duration: std::time::Duration::from_secs(args.duration.max(1)),
        bitrate: args.bitrate,
    };
    let report = sluice_client::live_bench::run(&plan)
        .await
        .map_err(anyhow::Error::msg)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.playing == report.players {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
