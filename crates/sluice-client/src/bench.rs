//! The load generator behind `sluice bench`, in the spirit of `weed benchmark` and
//! `redis-benchmark`: C connections share N requests; every latency is kept (N is bounded by
//! the caller) and the report gives rates and percentiles.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::{Client, ClientError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchKind {
    Upload,
    Download,
}

#[derive(Debug, Clone)]
pub struct BenchPlan {
    pub kind: BenchKind,
    pub connections: usize,
    pub requests: usize,
    pub size: usize,
    /// For downloads: how many distinct files to upload first and then read at random.
    pub distinct_files: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub kind: BenchKind,
    pub connections: usize,
    pub requests: usize,
    pub size: usize,
    pub completed: usize,
    pub failed: usize,
    pub seconds: f64,
    pub requests_per_sec: f64,
    pub mb_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first error seen, if any, so a failing run says why.
    pub first_error: Option<String>,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            BenchKind::Upload => "upload",
            BenchKind::Download => "download",
        };
        writeln!(
            f,
            "{kind}: {} requests of {} bytes over {} connections",
            self.requests, self.size, self.connections
        )?;
        writeln!(
            f,
            "  completed   {} ({} failed) in {:.2} s",
            self.completed, self.failed, self.seconds
        )?;
        writeln!(f, "  requests/s  {:.1}", self.requests_per_sec)?;
        writeln!(f, "  MB/s        {:.2}", self.mb_per_sec)?;
        write!(
            f,
            "  latency ms  p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
            self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )?;
        if let Some(e) = &self.first_error {
            write!(f, "\n  first error {e}")?;
        }
        Ok(())
    }
}

/// Runs a plan against `client`'s server.
pub async fn run(client: &Client, plan: &BenchPlan) -> Result<BenchReport, ClientError> {
    let payload = Bytes::from(payload(plan.size));
    let fileids = match plan.kind {
        BenchKind::Upload => Arc::new(Vec::new()),
        BenchKind::Download => Arc::new(prepare_downloads(client, plan, &payload).await?),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(plan.connections);
    for worker in 0..plan.connections.max(1) {
        let client = client.clone();
        let next = next.clone();
        let payload = payload.clone();
        let fileids = fileids.clone();
        let plan = plan.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(plan.requests / plan.connections.max(1) + 1);
            let mut failed = 0usize;
            let mut first_error = None;
            let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (worker as u64 + 1));
            while next.fetch_add(1, Ordering::Relaxed) < plan.requests {
                let t = Instant::now();
                let outcome = match plan.kind {
                    BenchKind::Upload => client
                        .upload_bytes(payload.clone(), "application/octet-stream")
                        .await
                        .map(|_| ()),
                    BenchKind::Download => {
                        let id = &fileids[(rng.next() % fileids.len() as u64) as usize];
                        client.download_bytes(id).await.and_then(|body| {
                            if body.len() == plan.size {
                                Ok(())
                            } else {
                                Err(ClientError::Transport {
                                    url: id.clone(),
                                    message: format!(
                                        "got {} bytes, want {}",
                                        body.len(),
                                        plan.size
                                    ),
                                })
                            }
                        })
                    }
                };
                match outcome {
                    Ok(()) => latencies.push(t.elapsed()),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            (latencies, failed, first_error)
        }));
    }
    let mut latencies = Vec::with_capacity(plan.requests);
    let mut failed = 0;
    let mut first_error = None;
    for w in workers {
        let (l, f, e) = w.await.map_err(|e| ClientError::Transport {
            url: client.base().to_owned(),
            message: format!("bench worker failed: {e}"),
        })?;
        latencies.extend(l);
        failed += f;
        if first_error.is_none() {
            first_error = e;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(report(plan, latencies, failed, first_error, seconds))
}

async fn prepare_downloads(
    client: &Client,
    plan: &BenchPlan,
    payload: &Bytes,
) -> Result<Vec<String>, ClientError> {
    let count = plan.distinct_files.clamp(1, plan.requests.max(1));
    let mut ids = Vec::with_capacity(count);
    // Upload with modest concurrency; this part is not measured.
    for batch in (0..count)
        .collect::<Vec<_>>()
        .chunks(plan.connections.clamp(1, 32))
    {
        let uploads = batch
            .iter()
            .map(|_| client.upload_bytes(payload.clone(), "application/octet-stream"));
        for r in futures_util::future::join_all(uploads).await {
            ids.push(r?.fileid);
        }
    }
    Ok(ids)
}

fn report(
    plan: &BenchPlan,
    mut latencies: Vec<Duration>,
    failed: usize,
    first_error: Option<String>,
    seconds: f64,
) -> BenchReport {
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let idx = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[idx].as_secs_f64() * 1000.0
    };
    let completed = latencies.len();
    let seconds = seconds.max(1e-9);
    BenchReport {
        kind: plan.kind,
        connections: plan.connections,
        requests: plan.requests,
        size: plan.size,
        completed,
        failed,
        seconds,
        requests_per_sec: completed as f64 / seconds,
        mb_per_sec: (completed * plan.size) as f64 / seconds / 1e6,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        max_ms: latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        first_error,
    }
}

/// Bytes that do not compress away, so no layer can cheat on them.
fn payload(size: usize) -> Vec<u8> {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    (0..size).map(|_| rng.next() as u8).collect()
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let plan = BenchPlan {
            kind: BenchKind::Upload,
            connections: 1,
            requests: 100,
            size: 1000,
            distinct_files: 1,
        };
        let lat = (1..=100).map(Duration::from_millis).collect();
        let r = report(&plan, lat, 0, None, 2.0);
        assert_eq!(r.completed, 100);
        assert!((r.p50_ms - 50.0).abs() < 1e-6);
        assert!((r.p90_ms - 90.0).abs() < 1e-6);
        assert!((r.p99_ms - 99.0).abs() < 1e-6);
        assert!((r.requests_per_sec - 50.0).abs() < 1e-6);
        assert!((r.mb_per_sec - 0.05).abs() < 1e-9);
    }
}
