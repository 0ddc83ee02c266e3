//! The tracker's keys (`[tracker]`), and the routing keys `serve` takes too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use sluice_proto::TimeSpan;
use sluice_tracker::Placement;

use super::file::{no_more, take};
use super::{HttpKeys, parse_prefixes, parse_regions};

/// How clients are routed to edges.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RoutingKeys {
    /// Client address prefixes and their regions (`"10.8.0.0/16" = "eu"`).
    pub regions: BTreeMap<String, String>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<String>,
}

impl RoutingKeys {
    pub fn validate(&self) -> anyhow::Result<()> {
        self.regions()?;
        parse_prefixes(&self.trusted_proxies)?;
        Ok(())
    }

    pub fn regions(&self) -> anyhow::Result<Vec<(sluice_proto::net::IpPrefix, String)>> {
        parse_regions(self.regions.iter().map(|(p, r)| (p.as_str(), r.as_str())))
    }
}

/// Where the tracker listens and keeps its members file, and how it places uploads.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct TrackerPlace {
    pub http: SocketAddr,
    /// The members file's directory.
    pub data: PathBuf,
    /// A node not heard from for this long is offline.
    pub offline_after: TimeSpan,
    pub placement: Placement,
}

impl Default for TrackerPlace {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 9090)),
            data: PathBuf::from("sluice-tracker"),
            offline_after: TimeSpan(std::time::Duration::from_secs(6)),
            placement: Placement::MostFree,
        }
    }
}

/// Every key of `[tracker]`.
#[derive(Debug, Clone, Default)]
pub struct TrackerKeys {
    pub place: TrackerPlace,
    pub http: HttpKeys,
    pub routing: RoutingKeys,
}

impl TrackerKeys {
    pub fn from_table(mut table: toml::Table, at: &str) -> anyhow::Result<Self> {
        let keys = Self {
            place: take(&mut table, at)?,
            http: take(&mut table, at)?,
            routing: take(&mut table, at)?,
        };
        no_more(table, at)?;
        Ok(keys)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        super::within(
            "offline_after",
            self.place.offline_after,
            100 * super::MS,
            super::HOUR,
        )?;
        self.http.validate()?;
        self.routing.validate()
    }
}
