//! Configuration: defaults that work on a laptop, a TOML file over them (`--config FILE`), flags
//! over that, validated once before anything starts.
//!
//! One file serves every role: top-level keys (what `serve` and `storage` have always read) and
//! a section per role, `[storage]`, `[tracker]`, `[edge]`, `[live]`. Each role reads its own
//! section; `serve` reads the top level and the sections of the roles it runs (from `[live]`
//! the stream settings, from `[tracker]` the routing ones). Every section present is checked
//! whichever role reads the file, so a misspelt key fails at once, by name. Sizes are
//! `"64KiB"`, durations `"2s"`; the older `*_ms` and `*_secs` integer keys are still taken.

mod edge;
mod file;
mod live;
pub(crate) mod serve;
mod tracker;

pub use edge::EdgeKeys;
pub use file::ConfigFile;
pub use live::LiveRoleKeys;
pub use serve::ServeConfig;
pub use tracker::TrackerKeys;

/// `PREFIX -> REGION` pairs, checked.
pub fn parse_regions<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> anyhow::Result<Vec<(sluice_proto::net::IpPrefix, String)>> {
    pairs
        .map(|(prefix, region)| {
            check_region(region)?;
            Ok((
                sluice_proto::net::IpPrefix::parse(prefix)?,
                region.to_owned(),
            ))
        })
        .collect()
}

pub fn parse_prefixes(list: &[String]) -> anyhow::Result<Vec<sluice_proto::net::IpPrefix>> {
    list.iter()
        .map(|p| Ok(sluice_proto::net::IpPrefix::parse(p)?))
        .collect()
}

/// An http(s) URL with a host, or an error naming `what`.
pub(crate) fn check_url(what: &str, url: &str) -> anyhow::Result<()> {
    let host = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?', '#']).next().unwrap_or(""));
    anyhow::ensure!(
        host.is_some_and(|h| !h.is_empty() && !h.contains(char::is_whitespace)),
        "{what}: {url:?} is not an http(s) URL with a host"
    );
    Ok(())
}

/// `span` within `lo..=hi`, or an error naming `what` and the bounds.
pub(crate) fn within(
    what: &str,
    span: sluice_proto::TimeSpan,
    lo: std::time::Duration,
    hi: std::time::Duration,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (lo..=hi).contains(&span.0),
        "{what} must be between {} and {} (it is {span})",
        sluice_proto::TimeSpan(lo),
        sluice_proto::TimeSpan(hi)
    );
    Ok(())
}

pub(crate) const MS: std::time::Duration = std::time::Duration::from_millis(1);
pub(crate) const SEC: std::time::Duration = std::time::Duration::from_secs(1);
pub(crate) const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A region name: short, without spaces (what trackers accept from edges).
pub(crate) fn check_region(region: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !region.is_empty() && region.len() <= 64 && region.bytes().all(|b| b.is_ascii_graphic()),
        "region {region:?} must be a short name without spaces"
    );
    Ok(())
}

/// The HTTP limits every role's server keeps.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct HttpKeys {
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Time a client has to send a request head.
    pub header_read_timeout: sluice_proto::TimeSpan,
    /// A client that takes no bytes of a response for this long is cut off.
    pub send_timeout: sluice_proto::TimeSpan,
    /// How long requests in flight may finish after SIGTERM/Ctrl-C.
    pub shutdown_grace: sluice_proto::TimeSpan,
}

impl HttpKeys {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=1_000_000).contains(&self.max_connections),
            "max_connections must be between 1 and 1000000"
        );
        within("header_read_timeout", self.header_read_timeout, SEC, HOUR)?;
        within("send_timeout", self.send_timeout, SEC, HOUR)?;
        within(
            "shutdown_grace",
            self.shutdown_grace,
            std::time::Duration::ZERO,
            HOUR,
        )
    }

    pub fn limits(&self) -> sluice_http::HttpLimits {
        sluice_http::HttpLimits {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout.0,
            send_timeout: self.send_timeout.0,
        }
    }

    pub fn shutdown(&self) -> sluice_http::ShutdownLimits {
        sluice_http::ShutdownLimits {
            grace: self.shutdown_grace.0,
            ..sluice_http::ShutdownLimits::default()
        }
    }
}

impl Default for HttpKeys {
    fn default() -> Self {
        let limits = sluice_http::HttpLimits::default();
        Self {
            max_connections: limits.max_connections,
            header_read_timeout: sluice_proto::TimeSpan(limits.header_read_timeout),
            send_timeout: sluice_proto::TimeSpan(limits.send_timeout),
            shutdown_grace: sluice_proto::TimeSpan(std::time::Duration::from_secs(30)),
        }
    }
}
