//! The edge's keys (`[edge]`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use sluice_proto::{ByteSize, TimeSpan};

use super::file::{no_more, take};
use super::{HttpKeys, check_url};

/// Where an edge listens, what it fronts, and its cache.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EdgePlace {
    /// Where files come from on a miss: a `sluice serve`, a storage node or a tracker.
    pub origin: Option<String>,
    pub http: SocketAddr,
    /// The cache directory (survives restarts).
    pub cache: PathBuf,
    /// Most bytes of files kept; least recently used files go first.
    pub cache_size: ByteSize,
    /// Memory for the cache of small hot files.
    pub hot_cache_size: ByteSize,
    /// The region this edge serves (trackers route clients of that region here).
    pub region: Option<String>,
    /// Trackers to register with.
    pub trackers: Vec<String>,
    /// The URL clients should use for this edge; default: the listen address.
    pub advertise: Option<String>,
    /// Between heartbeats to the trackers.
    pub heartbeat_interval: TimeSpan,
    /// Serve HTML, SVG, XML and JavaScript files inline (still sandboxed).
    pub active_content_inline: bool,
}

impl Default for EdgePlace {
    fn default() -> Self {
        Self {
            origin: None,
            http: SocketAddr::from(([127, 0, 0, 1], 8088)),
            cache: PathBuf::from("sluice-edge-cache"),
            cache_size: ByteSize(1 << 30),
            hot_cache_size: ByteSize(256 << 20),
            region: None,
            trackers: Vec::new(),
            advertise: None,
            heartbeat_interval: TimeSpan(std::time::Duration::from_secs(2)),
            active_content_inline: false,
        }
    }
}

/// Every key of `[edge]`.
#[derive(Debug, Clone, Default)]
pub struct EdgeKeys {
    pub place: EdgePlace,
    pub http: HttpKeys,
}

impl EdgeKeys {
    pub fn from_table(mut table: toml::Table, at: &str) -> anyhow::Result<Self> {
        let keys = Self {
            place: take(&mut table, at)?,
            http: take(&mut table, at)?,
        };
        no_more(table, at)?;
        Ok(keys)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let p = &self.place;
        let origin = p.origin.as_deref().ok_or_else(|| {
            anyhow::anyhow!("an edge needs an origin: --origin URL, or `origin` in [edge]")
        })?;
        check_url("origin", origin)?;
        for url in p.trackers.iter().chain(&p.advertise) {
            check_url("trackers and advertise", url)?;
        }
        anyhow::ensure!(p.cache_size.0 > 0, "cache_size must be more than 0");
        super::within(
            "heartbeat_interval",
            p.heartbeat_interval,
            10 * super::MS,
            60 * super::SEC,
        )?;
        if let Some(region) = &p.region {
            super::check_region(region)?;
        }
        self.http.validate()
    }
}
