//! `sluice serve` configuration: defaults that work on a laptop, a TOML file over them, flags
//! over that, validated once before anything starts.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use sluice_proto::{ByteSize, GroupName, TimeSpan};
use sluice_storage::{BlobStoreOptions, HotCacheLimits};

use crate::cli::ServeArgs;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub data: PathBuf,
    pub http: SocketAddr,
    pub group: String,
    pub max_upload_size: ByteSize,
    /// Size of a checksummed block in data files (fixed per file when written).
    pub block_size: ByteSize,
    /// Memory for the cache of small, recently read files.
    pub hot_cache_size: ByteSize,
    /// Largest file the hot cache takes.
    pub hot_cache_max_file: ByteSize,
    /// Seconds that requests in flight may take to finish after SIGTERM/Ctrl-C.
    pub shutdown_grace_secs: u64,
    /// Connections served at once; more wait in the accept queue.
    pub max_connections: usize,
    /// Seconds a client has to send a request head.
    pub header_read_timeout_secs: u64,
    /// Seconds an upload body may stall before the upload is dropped (408).
    pub body_idle_timeout_secs: u64,
    /// A client that takes no bytes of a response for this long is cut off.
    pub send_timeout: TimeSpan,
    /// Trackers a storage node registers with (`sluice storage --tracker`).
    pub trackers: Vec<String>,
    /// The URL clients and peers should use for this node; default: the listen address.
    pub advertise: Option<String>,
    /// Milliseconds between heartbeats to the trackers.
    pub heartbeat_interval_ms: u64,
    /// Free space the node keeps back; below it, trackers send it no uploads.
    pub free_space_reserve: ByteSize,
    /// Most bytes of files the node holds (uploads past it get 507); default: the disk's size.
    pub capacity: Option<ByteSize>,
    /// Seconds between background scrub passes (each reads and verifies every file).
    pub scrub_interval_secs: u64,
    /// How fast the scrub reads.
    pub scrub_bytes_per_sec: ByteSize,
    /// Web origins allowed to read (`["*"]`: any).
    pub cors_origins: Vec<String>,
    /// Serve HTML, SVG, XML and JavaScript files inline (still sandboxed by CSP) instead of
    /// as attachments.
    pub active_content_inline: bool,
    /// Copies (this node included) an upload needs before its 201; fewer gets 503.
    pub min_copies: usize,
    /// Milliseconds a peer may take to store a replica before the upload goes on without it.
    pub replication_timeout_ms: u64,
    /// Milliseconds between catch-up rounds (pulling peers' oplogs).
    pub catch_up_interval_ms: u64,
    /// Progressive uploads: the share that must arrive before a file gets its id, when the
    /// upload names neither `q` nor `mts` (1.0: when it is whole).
    pub default_q: f64,
    /// Progressive uploads: a sender quiet this long leaves its file finalised at what arrived.
    pub abandon_after_ms: u64,
    /// Where `file.committed|completed|abandoned` events are POSTed (signed with
    /// `SLUICE_WEBHOOK_SECRET` when set).
    pub webhook_url: Option<String>,
    /// Client address prefixes and their regions (`"10.8.0.0/16" = "eu"`), for edge routing.
    pub regions: std::collections::BTreeMap<String, String>,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: Vec<String>,
    /// `sluice serve`: RTMP address for live streaming (off when unset).
    pub rtmp: Option<SocketAddr>,
    /// `sluice serve`: record every publish into storage (`--record`).
    pub record: bool,
    /// Most bytes per second one RTMP publisher may send; a faster one is cut off as a flood.
    pub rtmp_max_ingest_rate: ByteSize,
    /// Asked (POST, JSON `{action, app, stream, query, client}`) before each publish;
    /// anything but 2xx refuses it.
    pub on_publish: Option<String>,
    /// Asked before each RTMP play.
    pub on_play: Option<String>,
    /// Milliseconds a publish/play hook may take; slower refuses.
    pub hook_timeout_ms: u64,
    /// Seconds a publisher may send nothing before it is taken as gone.
    pub rtmp_idle_timeout_secs: u64,
    /// HLS segments are cut on the first keyframe at least this many seconds after the last.
    pub hls_target_secs: u64,
    /// Longest RTMP message (a video frame) accepted.
    pub rtmp_max_message: ByteSize,
    /// Per stream: bytes of the current group of pictures kept for players that join.
    pub live_gop_cache: ByteSize,
    /// Per stream: bytes of frames kept for players that have not read them yet; a player
    /// further behind skips to the next keyframe.
    pub live_player_backlog: ByteSize,
    /// An HLS segment is cut, keyframe or not, once it holds this many bytes...
    pub hls_max_segment_size: ByteSize,
    /// ...or spans this long.
    pub hls_max_segment_duration: TimeSpan,
    /// A recording is stored after this many frames and the next part begins.
    pub record_max_frames: usize,
    /// A live player (RTMP or HTTP-FLV) whose connection takes nothing this long is dropped.
    pub live_player_stall_timeout: TimeSpan,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            data: PathBuf::from("sluice-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            group: "g1".into(),
            max_upload_size: ByteSize(16 << 30),
            block_size: ByteSize(64 << 10),
            hot_cache_size: ByteSize(256 << 20),
            hot_cache_max_file: ByteSize(1 << 20),
            shutdown_grace_secs: 30,
            max_connections: 10_000,
            header_read_timeout_secs: 30,
            body_idle_timeout_secs: 60,
            send_timeout: TimeSpan(std::time::Duration::from_secs(60)),
            trackers: Vec::new(),
            advertise: None,
            heartbeat_interval_ms: 2000,
            free_space_reserve: ByteSize(1 << 30),
            capacity: None,
            scrub_interval_secs: 24 * 3600,
            scrub_bytes_per_sec: ByteSize(20 << 20),
            cors_origins: vec!["*".into()],
            active_content_inline: false,
            min_copies: 1,
            replication_timeout_ms: 5000,
            catch_up_interval_ms: 1000,
            default_q: 1.0,
            abandon_after_ms: 600_000,
            webhook_url: None,
            regions: Default::default(),
            trusted_proxies: Vec::new(),
            rtmp: None,
            record: false,
            rtmp_max_ingest_rate: ByteSize(12_500_000),
            on_publish: None,
            on_play: None,
            hook_timeout_ms: 3000,
            rtmp_idle_timeout_secs: 10,
            hls_target_secs: 2,
            rtmp_max_message: ByteSize(4 << 20),
            live_gop_cache: ByteSize(4 << 20),
            live_player_backlog: ByteSize(4 << 20),
            hls_max_segment_size: ByteSize(4 << 20),
            hls_max_segment_duration: TimeSpan(std::time::Duration::from_secs(10)),
            record_max_frames: 200_000,
            live_player_stall_timeout: TimeSpan(std::time::Duration::from_secs(10)),
        }
    }
}

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

impl ValidServeConfig {
    /// The live role's settings from this config; `access` from the environment.
    pub fn live(&self) -> sluice_live::LiveConfig {
        let raw = &self.raw;
        sluice_live::LiveConfig {
            access: crate::roles::access_policy(),
            max_ingest_rate: raw.rtmp_max_ingest_rate.0,
            max_message: u32::try_from(raw.rtmp_max_message.0).unwrap_or(u32::MAX),
            stream_limits: sluice_live::StreamLimits {
                gop_cache: raw.live_gop_cache.0 as usize,
                backlog: raw.live_player_backlog.0 as usize,
            },
            hls_max_segment_bytes: raw.hls_max_segment_size.0 as usize,
            hls_max_segment_duration: raw.hls_max_segment_duration.0,
            record_max_frames: raw.record_max_frames,
            on_publish: raw.on_publish.clone(),
            on_play: raw.on_play.clone(),
            hook_timeout: std::time::Duration::from_millis(raw.hook_timeout_ms),
            idle_timeout: std::time::Duration::from_secs(raw.rtmp_idle_timeout_secs),
            player_stall_timeout: raw.live_player_stall_timeout.0,
            hls_target: std::time::Duration::from_secs(raw.hls_target_secs),
            ..sluice_live::LiveConfig::default()
        }
    }

    pub fn active_content(&self) -> sluice_http::ActiveContent {
        if self.raw.active_content_inline {
            sluice_http::ActiveContent::Inline
        } else {
            sluice_http::ActiveContent::Attachment
        }
    }

    pub fn progressive(&self) -> sluice_storage::progressive::ProgressiveConfig {
        sluice_storage::progressive::ProgressiveConfig {
            default_q: self.raw.default_q,
            abandon_after: std::time::Duration::from_millis(self.raw.abandon_after_ms),
            public_url: self.raw.advertise.clone(),
            ..Default::default()
        }
    }

    pub fn webhook(&self) -> Option<sluice_storage::events::WebhookConfig> {
        let secret = std::env::var("SLUICE_WEBHOOK_SECRET")
            .ok()
            .and_then(|v| sluice_proto::SecretSet::parse(&v));
        self.raw
            .webhook_url
            .clone()
            .map(|url| sluice_storage::events::WebhookConfig::new(url, secret))
    }

    /// The storage node this config describes; a member of a cluster when it names trackers.
    pub fn node(&self, cluster: sluice_http::ClusterAccess) -> sluice_storage::NodeConfig {
        let raw = &self.raw;
        sluice_storage::NodeConfig {
            data: raw.data.clone(),
            store: self.blob.clone(),
            storage: sluice_storage::StorageConfig {
                group: self.group.clone(),
                max_upload_size: raw.max_upload_size.0,
                body_idle_timeout: std::time::Duration::from_secs(raw.body_idle_timeout_secs),
                http: self.http_limits(),
                cluster,
                node_id: None,
                capacity: raw.capacity.map(|c| c.0),
                access: crate::roles::access_policy(),
                active_content: self.active_content(),
                cors: sluice_http::CorsPolicy::from_list(&raw.cors_origins),
                progressive: self.progressive(),
                webhook: self.webhook(),
            },
            scrub: sluice_storage::scrub::ScrubConfig {
                interval: std::time::Duration::from_secs(raw.scrub_interval_secs),
                bytes_per_sec: raw.scrub_bytes_per_sec.0,
            },
            shutdown: self.shutdown_limits(),
            membership: (!raw.trackers.is_empty()).then(|| sluice_storage::Membership {
                trackers: raw.trackers.clone(),
                advertise: raw.advertise.clone(),
                heartbeat_interval: std::time::Duration::from_millis(raw.heartbeat_interval_ms),
                free_space_reserve: raw.free_space_reserve.0,
                min_copies: raw.min_copies,
                replication_timeout: std::time::Duration::from_millis(raw.replication_timeout_ms),
                catch_up_interval: std::time::Duration::from_millis(raw.catch_up_interval_ms),
            }),
        }
    }

    pub fn shutdown_limits(&self) -> sluice_http::ShutdownLimits {
        sluice_http::ShutdownLimits {
            grace: std::time::Duration::from_secs(self.raw.shutdown_grace_secs),
            ..sluice_http::ShutdownLimits::default()
        }
    }

    pub fn http_limits(&self) -> sluice_storage::HttpLimits {
        sluice_storage::HttpLimits {
            max_connections: self.raw.max_connections,
            header_read_timeout: std::time::Duration::from_secs(self.raw.header_read_timeout_secs),
            send_timeout: self.raw.send_timeout.0,
        }
    }
}

/// The config after validation.
pub struct ValidServeConfig {
    pub raw: ServeConfig,
    pub group: GroupName,
    pub blob: BlobStoreOptions,
}

impl ServeConfig {
    pub fn load(args: &ServeArgs) -> anyhow::Result<ValidServeConfig> {
        Self::merged(args)?.validate()
    }

    /// Defaults, then the config file, then flags.
    fn merged(args: &ServeArgs) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => Self::from_file(path)?,
            None => Self::default(),
        };
        if let Some(v) = &args.data {
            config.data = v.clone();
        }
        if let Some(v) = args.http {
            config.http = v;
        }
        if let Some(v) = &args.group {
            config.group = v.clone();
        }
        if let Some(v) = args.max_upload_size {
            config.max_upload_size = v;
        }
        if let Some(v) = args.heartbeat_interval_ms {
            config.heartbeat_interval_ms = v;
        }
        if let Some(v) = args.capacity {
            config.capacity = Some(v);
        }
        if let Some(v) = args.free_space_reserve {
            config.free_space_reserve = v;
        }
        Ok(config)
    }

    /// `sluice storage`: the node flags plus where the trackers are.
    pub fn load_storage(args: &crate::cli::StorageArgs) -> anyhow::Result<ValidServeConfig> {
        let mut config = Self::merged(&args.node)?;
        config.trackers = args
            .trackers
            .iter()
            .map(|t| t.trim_end_matches('/').to_owned())
            .collect();
        if let Some(v) = &args.advertise {
            config.advertise = Some(v.trim_end_matches('/').to_owned());
        }
        config.validate()
    }

    fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))
    }

    fn validate(self) -> anyhow::Result<ValidServeConfig> {
        let group =
            GroupName::new(&self.group).with_context(|| format!("group {:?}", self.group))?;
        let block_size = u32::try_from(self.block_size.0)
            .ok()
            .filter(|b| (4096..=(16 << 20)).contains(b))
            .context("block_size must be between 4KiB and 16MiB")?;
        anyhow::ensure!(
            self.max_upload_size.0 > 0,
            "max_upload_size must be more than 0"
        );
        anyhow::ensure!(
            self.max_connections > 0,
            "max_connections must be at least 1"
        );
        anyhow::ensure!(self.min_copies >= 1, "min_copies must be at least 1");
        anyhow::ensure!(
            self.scrub_interval_secs >= 1 && self.scrub_bytes_per_sec.0 >= 1024,
            "scrub_interval_secs must be at least 1 and scrub_bytes_per_sec at least 1KiB"
        );
        anyhow::ensure!(
            self.replication_timeout_ms >= 10 && self.catch_up_interval_ms >= 10,
            "replication_timeout_ms and catch_up_interval_ms must be at least 10"
        );
        anyhow::ensure!(
            self.heartbeat_interval_ms >= 10,
            "heartbeat_interval_ms must be at least 10"
        );
        anyhow::ensure!(
            self.default_q > 0.0 && self.default_q <= 1.0,
            "default_q must be more than 0 and at most 1"
        );
        anyhow::ensure!(
            self.abandon_after_ms >= 100,
            "abandon_after_ms must be at least 100"
        );
        for url in self
            .trackers
            .iter()
            .chain(&self.advertise)
            .chain(&self.webhook_url)
            .chain(&self.on_publish)
            .chain(&self.on_play)
        {
            anyhow::ensure!(
                url.starts_with("http://") || url.starts_with("https://"),
                "{url:?} is not an http(s) URL"
            );
        }
        anyhow::ensure!(
            self.header_read_timeout_secs > 0 && self.body_idle_timeout_secs > 0,
            "header_read_timeout_secs and body_idle_timeout_secs must be at least 1"
        );
        anyhow::ensure!(
            self.send_timeout.0 >= std::time::Duration::from_secs(1),
            "send_timeout must be at least 1s"
        );
        anyhow::ensure!(
            self.live_player_stall_timeout.0 >= std::time::Duration::from_secs(1),
            "live_player_stall_timeout must be at least 1s"
        );
        anyhow::ensure!(
            self.rtmp_idle_timeout_secs >= 1 && self.hls_target_secs >= 1,
            "rtmp_idle_timeout_secs and hls_target_secs must be at least 1"
        );
        anyhow::ensure!(
            self.rtmp_max_ingest_rate.0 >= 1024,
            "rtmp_max_ingest_rate must be at least 1KiB"
        );
        anyhow::ensure!(
            (4096..=(256 << 20)).contains(&self.rtmp_max_message.0),
            "rtmp_max_message must be between 4KiB and 256MiB"
        );
        anyhow::ensure!(
            self.hls_max_segment_size.0 >= 64 << 10
                && self.hls_max_segment_duration.0.as_secs() >= self.hls_target_secs,
            "hls_max_segment_size must be at least 64KiB and hls_max_segment_duration at least hls_target_secs"
        );
        anyhow::ensure!(
            self.record_max_frames >= 100,
            "record_max_frames must be at least 100"
        );
        parse_regions(self.regions.iter().map(|(p, r)| (p.as_str(), r.as_str())))?;
        parse_prefixes(&self.trusted_proxies)?;
        let blob = BlobStoreOptions {
            block_size,
            hot_cache: HotCacheLimits {
                capacity: self.hot_cache_size.0,
                max_file: self.hot_cache_max_file.0,
            },
        };
        Ok(ValidServeConfig {
            raw: self,
            group,
            blob,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_flags() {
        let config: ServeConfig =
            toml::from_str("group = \"photos\"\nmax_upload_size = \"1MiB\"\n").unwrap();
        assert_eq!(config.group, "photos");
        assert_eq!(config.max_upload_size, ByteSize(1 << 20));
        assert_eq!(config.http.port(), 8080);
        assert!(toml::from_str::<ServeConfig>("nonsense = 1").is_err());
        let bad = ServeConfig {
            group: "Bad/Group".into(),
            ..ServeConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = ServeConfig {
            max_connections: 0,
            ..ServeConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}
