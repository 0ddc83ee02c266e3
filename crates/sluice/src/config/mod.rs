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
            anyhow::ensure!(
                !region.is_empty()
                    && region.len() <= 64
                    && region.bytes().all(|b| b.is_ascii_graphic()),
                "region {region:?} must be a short name without spaces"
            );
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

/// An http(s) URL, or an error naming `what`.
pub(crate) fn check_url(what: &str, url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        url.starts_with("http://") || url.starts_with("https://"),
        "{what}: {url:?} is not an http(s) URL"
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
            self.max_connections > 0,
            "max_connections must be at least 1"
        );
        anyhow::ensure!(
            self.header_read_timeout.0 >= std::time::Duration::from_secs(1),
            "header_read_timeout must be at least 1s"
        );
        anyhow::ensure!(
            self.send_timeout.0 >= std::time::Duration::from_secs(1),
            "send_timeout must be at least 1s"
        );
        Ok(())
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
