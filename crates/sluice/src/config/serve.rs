//! `sluice serve` and `sluice storage`: a storage node's keys (top level and `[storage]`),
//! and for `serve` the stream keys (top level and `[live]`) and routing keys (top level and
//! `[tracker]`).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;
use sluice_proto::{ByteSize, GroupName, TimeSpan};
use sluice_storage::{BlobStoreOptions, HotCacheLimits};

use super::file::{ConfigFile, fields_of, no_more, overlay, take};
use super::live::LiveKeys;
use super::tracker::RoutingKeys;
use super::{HOUR, HttpKeys, MS, SEC, check_url, within};
use crate::cli::ServeArgs;

fn secs(n: u64) -> TimeSpan {
    TimeSpan(std::time::Duration::from_secs(n))
}

fn millis(n: u64) -> TimeSpan {
    TimeSpan(std::time::Duration::from_millis(n))
}

/// A storage node's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NodeKeys {
    pub data: PathBuf,
    pub http: SocketAddr,
    pub group: String,
    pub max_upload_size: ByteSize,
    /// Size of a checksummed block in data files (fixed per file when written).
    pub block_size: ByteSize,
    /// Complete files up to this size are packed into volumes (0: every file gets its own
    /// data file).
    pub volume_max_file: ByteSize,
    /// A volume this long is sealed and a new one started.
    pub volume_size: ByteSize,
    /// A sealed volume whose dead share (deleted or moved records) reaches this is compacted.
    pub compact_threshold: f64,
    /// How often volumes are checked for compaction.
    pub compact_interval: TimeSpan,
    /// How fast compaction copies live records at most (bytes per second).
    pub compact_bytes_per_sec: ByteSize,
    /// Memory for the cache of small, recently read files.
    pub hot_cache_size: ByteSize,
    /// Largest file the hot cache takes.
    pub hot_cache_max_file: ByteSize,
    /// An upload body that stalls this long is dropped (408).
    pub body_idle_timeout: TimeSpan,
    /// Trackers a storage node registers with (`sluice storage --tracker`).
    pub trackers: Vec<String>,
    /// The URL clients and peers should use for this node; default: the listen address.
    pub advertise: Option<String>,
    /// Between heartbeats to the trackers.
    pub heartbeat_interval: TimeSpan,
    /// Free space the node keeps back; below it, trackers send it no uploads.
    pub free_space_reserve: ByteSize,
    /// Most bytes of files the node holds (uploads past it get 507); default: the disk's size.
    pub capacity: Option<ByteSize>,
    /// Pause between background scrub passes (each reads and verifies every file).
    pub scrub_interval: TimeSpan,
    /// How fast the scrub reads.
    pub scrub_bytes_per_sec: ByteSize,
    /// Web origins allowed to read (`["*"]`: any).
    pub cors_origins: Vec<String>,
    /// Serve HTML, SVG, XML and JavaScript files inline (still sandboxed by CSP) instead of
    /// as attachments.
    pub active_content_inline: bool,
    /// Copies (this node included) an upload needs before its 201; fewer gets 503.
    pub min_copies: usize,
    /// A peer slower than this to store a replica is left to catch up later.
    pub replication_timeout: TimeSpan,
    /// Between catch-up rounds (pulling peers' oplogs).
    pub catch_up_interval: TimeSpan,
    /// Progressive uploads: the share that must arrive before a file gets its id, when the
    /// upload names neither `q` nor `mts` (1.0: when it is whole).
    pub default_q: f64,
    /// Progressive uploads: a sender quiet this long leaves its file finalised at what arrived.
    pub abandon_after: TimeSpan,
    /// Where `file.committed|completed|abandoned` events are POSTed (signed with
    /// `SLUICE_WEBHOOK_SECRET` when set).
    pub webhook_url: Option<String>,
}

impl Default for NodeKeys {
    fn default() -> Self {
        Self {
            data: PathBuf::from("sluice-data"),
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            group: "g1".into(),
            max_upload_size: ByteSize(16 << 30),
            block_size: ByteSize(64 << 10),
            volume_max_file: ByteSize(1 << 20),
            volume_size: ByteSize(1 << 30),
            compact_threshold: 0.3,
            compact_interval: secs(300),
            compact_bytes_per_sec: ByteSize(32 << 20),
            hot_cache_size: ByteSize(256 << 20),
            hot_cache_max_file: ByteSize(1 << 20),
            body_idle_timeout: secs(60),
            trackers: Vec::new(),
            advertise: None,
            heartbeat_interval: millis(2000),
            free_space_reserve: ByteSize(1 << 30),
            capacity: None,
            scrub_interval: secs(24 * 3600),
            scrub_bytes_per_sec: ByteSize(20 << 20),
            cors_origins: vec!["*".into()],
            active_content_inline: false,
            min_copies: 1,
            replication_timeout: millis(5000),
            catch_up_interval: millis(1000),
            default_q: 1.0,
            abandon_after: secs(600),
            webhook_url: None,
        }
    }
}

/// Everything `serve` (or `storage`) reads: defaults, the file, then flags.
#[derive(Debug, Clone, Default)]
pub struct ServeConfig {
    pub node: NodeKeys,
    pub http: HttpKeys,
    pub live: LiveKeys,
    pub routing: RoutingKeys,
}

/// The config after validation.
pub struct ValidServeConfig {
    pub raw: ServeConfig,
    pub group: GroupName,
    pub blob: BlobStoreOptions,
}

impl ServeConfig {
    /// `sluice serve`: the top level, `[storage]`, the stream keys of `[live]` and the routing
    /// keys of `[tracker]`; then flags.
    pub fn load(args: &ServeArgs) -> anyhow::Result<ValidServeConfig> {
        let file = ConfigFile::read(args.config.as_deref())?;
        let mut config = Self::from_file(&file, true)?;
        config.apply(args);
        config.validate()
    }

    /// `sluice storage`: the top level and `[storage]`, then the node flags and where the
    /// trackers are.
    pub fn load_storage(args: &crate::cli::StorageArgs) -> anyhow::Result<ValidServeConfig> {
        let file = ConfigFile::read(args.node.config.as_deref())?;
        let mut config = Self::from_file(&file, false)?;
        config.apply(&args.node);
        if !args.trackers.is_empty() {
            config.node.trackers = args.trackers.clone();
        }
        config.node.trackers = config
            .node
            .trackers
            .iter()
            .map(|t| t.trim_end_matches('/').to_owned())
            .collect();
        if let Some(v) = &args.advertise {
            config.node.advertise = Some(v.clone());
        }
        config.node.advertise = config
            .node
            .advertise
            .map(|a| a.trim_end_matches('/').to_owned());
        anyhow::ensure!(
            !config.node.trackers.is_empty(),
            "a storage node needs a tracker: --tracker URL (repeat for several), or `trackers` in the config"
        );
        config.validate()
    }

    fn from_file(file: &ConfigFile, with_roles: bool) -> anyhow::Result<Self> {
        let mut top = file.top();
        overlay(&mut top, file.section("storage"), None);
        if with_roles {
            overlay(
                &mut top,
                file.section("live"),
                Some(fields_of::<LiveKeys>()),
            );
            overlay(
                &mut top,
                file.section("tracker"),
                Some(fields_of::<RoutingKeys>()),
            );
        }
        let at = file.name();
        let config = Self {
            node: take(&mut top, &at)?,
            http: take(&mut top, &at)?,
            live: take(&mut top, &at)?,
            routing: take(&mut top, &at)?,
        };
        no_more(top, &at)?;
        Ok(config)
    }

    /// Flags over the file.
    fn apply(&mut self, args: &ServeArgs) {
        let node = &mut self.node;
        if let Some(v) = &args.data {
            node.data = v.clone();
        }
        if let Some(v) = args.http {
            node.http = v;
        }
        if let Some(v) = &args.group {
            node.group = v.clone();
        }
        if let Some(v) = args.max_upload_size {
            node.max_upload_size = v;
        }
        if let Some(v) = args.heartbeat_interval_ms {
            node.heartbeat_interval = millis(v);
        }
        if let Some(v) = args.capacity {
            node.capacity = Some(v);
        }
        if let Some(v) = args.free_space_reserve {
            node.free_space_reserve = v;
        }
    }

    fn validate(self) -> anyhow::Result<ValidServeConfig> {
        let n = &self.node;
        let group = GroupName::new(&n.group).with_context(|| format!("group {:?}", n.group))?;
        let block_size = u32::try_from(n.block_size.0)
            .ok()
            .filter(|b| (4096..=(16 << 20)).contains(b))
            .context("block_size must be between 4KiB and 16MiB")?;
        anyhow::ensure!(
            n.max_upload_size.0 > 0,
            "max_upload_size must be more than 0"
        );
        self.http.validate()?;
        anyhow::ensure!(
            (1..=16).contains(&n.min_copies),
            "min_copies must be between 1 and 16"
        );
        anyhow::ensure!(
            n.scrub_bytes_per_sec.0 >= 1024,
            "scrub_bytes_per_sec must be at least 1KiB"
        );
        within("scrub_interval", n.scrub_interval, SEC, 366 * 24 * HOUR)?;
        within("replication_timeout", n.replication_timeout, 10 * MS, HOUR)?;
        within("catch_up_interval", n.catch_up_interval, 10 * MS, HOUR)?;
        within(
            "heartbeat_interval",
            n.heartbeat_interval,
            10 * MS,
            60 * SEC,
        )?;
        anyhow::ensure!(
            n.default_q > 0.0 && n.default_q <= 1.0,
            "default_q must be more than 0 and at most 1"
        );
        within("abandon_after", n.abandon_after, 100 * MS, 30 * 24 * HOUR)?;
        within("body_idle_timeout", n.body_idle_timeout, SEC, HOUR)?;
        anyhow::ensure!(
            n.hot_cache_max_file.0 <= n.hot_cache_size.0.max(1 << 20)
                && n.hot_cache_max_file.0 <= 1 << 30,
            "hot_cache_max_file must be at most hot_cache_size and 1GiB"
        );
        anyhow::ensure!(
            n.capacity.is_none_or(|c| c.0 > 0),
            "capacity must be more than 0 (leave it out for the whole disk)"
        );
        for url in n.trackers.iter() {
            check_url("trackers", url)?;
        }
        for (what, url) in [("advertise", &n.advertise), ("webhook_url", &n.webhook_url)] {
            if let Some(url) = url {
                check_url(what, url)?;
            }
        }
        anyhow::ensure!(
            n.volume_max_file.0 <= sluice_storage::MAX_VOLUME_FILE,
            "volume_max_file must be at most {} (0 turns volumes off)",
            ByteSize(sluice_storage::MAX_VOLUME_FILE)
        );
        anyhow::ensure!(
            (64 << 10..=1 << 40).contains(&n.volume_size.0)
                && n.volume_size.0 >= n.volume_max_file.0,
            "volume_size must be between 64KiB and 1TiB, and at least volume_max_file"
        );
        anyhow::ensure!(
            n.compact_threshold > 0.0 && n.compact_threshold <= 1.0,
            "compact_threshold must be more than 0 and at most 1"
        );
        within(
            "compact_interval",
            n.compact_interval,
            100 * MS,
            7 * 24 * HOUR,
        )?;
        anyhow::ensure!(
            n.compact_bytes_per_sec.0 >= 64 << 10,
            "compact_bytes_per_sec must be at least 64KiB"
        );
        self.live.validate()?;
        self.routing.validate()?;
        let volumes = (n.volume_max_file.0 > 0).then_some(sluice_storage::VolumeOptions {
            max_file: n.volume_max_file.0,
            volume_size: n.volume_size.0,
            compact_threshold: n.compact_threshold,
            compact_interval: n.compact_interval.0,
            compact_rate: n.compact_bytes_per_sec.0,
            ..Default::default()
        });
        let blob = BlobStoreOptions {
            block_size,
            hot_cache: HotCacheLimits {
                capacity: n.hot_cache_size.0,
                max_file: n.hot_cache_max_file.0,
            },
            volumes,
        };
        Ok(ValidServeConfig {
            raw: self,
            group,
            blob,
        })
    }
}

impl ValidServeConfig {
    /// The live role's settings from this config; `access` from the environment.
    pub fn live(&self) -> sluice_live::LiveConfig {
        self.raw.live.live_config()
    }

    pub fn active_content(&self) -> sluice_http::ActiveContent {
        if self.raw.node.active_content_inline {
            sluice_http::ActiveContent::Inline
        } else {
            sluice_http::ActiveContent::Attachment
        }
    }

    pub fn progressive(&self) -> sluice_storage::progressive::ProgressiveConfig {
        sluice_storage::progressive::ProgressiveConfig {
            default_q: self.raw.node.default_q,
            abandon_after: self.raw.node.abandon_after.0,
            public_url: self.raw.node.advertise.clone(),
            ..Default::default()
        }
    }

    pub fn webhook(&self) -> Option<sluice_storage::events::WebhookConfig> {
        let secret = std::env::var("SLUICE_WEBHOOK_SECRET")
            .ok()
            .and_then(|v| sluice_proto::SecretSet::parse(&v));
        self.raw
            .node
            .webhook_url
            .clone()
            .map(|url| sluice_storage::events::WebhookConfig::new(url, secret))
    }

    /// The storage node this config describes; a member of a cluster when it names trackers.
    pub fn node(&self, cluster: sluice_http::ClusterAccess) -> sluice_storage::NodeConfig {
        let n = &self.raw.node;
        sluice_storage::NodeConfig {
            data: n.data.clone(),
            store: self.blob.clone(),
            storage: sluice_storage::StorageConfig {
                role: "storage",
                group: self.group.clone(),
                max_upload_size: n.max_upload_size.0,
                body_idle_timeout: n.body_idle_timeout.0,
                http: self.raw.http.limits(),
                cluster,
                node_id: None,
                capacity: n.capacity.map(|c| c.0),
                access: crate::roles::access_policy(),
                active_content: self.active_content(),
                cors: sluice_http::CorsPolicy::from_list(&n.cors_origins),
                progressive: self.progressive(),
                webhook: self.webhook(),
            },
            scrub: sluice_storage::scrub::ScrubConfig {
                interval: n.scrub_interval.0,
                bytes_per_sec: n.scrub_bytes_per_sec.0,
            },
            shutdown: self.raw.http.shutdown(),
            membership: (!n.trackers.is_empty()).then(|| sluice_storage::Membership {
                trackers: n.trackers.clone(),
                advertise: n.advertise.clone(),
                heartbeat_interval: n.heartbeat_interval.0,
                free_space_reserve: n.free_space_reserve.0,
                min_copies: n.min_copies,
                replication_timeout: n.replication_timeout.0,
                catch_up_interval: n.catch_up_interval.0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<ServeConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, text).unwrap();
        ServeConfig::from_file(&ConfigFile::read(Some(&path))?, true)
    }

    #[test]
    fn file_keys_over_defaults_and_sections_over_the_top_level() {
        let config = parse(
            "group = \"photos\"\nmax_upload_size = \"1MiB\"\nhook_timeout_ms = 500\n\
             [storage]\nmin_copies = 2\n[live]\nhls_target = \"4s\"\nhttp = \"127.0.0.1:1\"\n\
             [tracker]\ntrusted_proxies = [\"10.0.0.1\"]\noffline_after = \"9s\"\n",
        )
        .unwrap();
        assert_eq!(config.node.group, "photos");
        assert_eq!(config.node.max_upload_size, ByteSize(1 << 20));
        assert_eq!(config.node.http.port(), 8080, "[live]'s http is live's own");
        assert_eq!(config.node.min_copies, 2);
        assert_eq!(config.live.hook_timeout, millis(500), "an older key");
        assert_eq!(config.live.hls_target, secs(4));
        assert_eq!(config.routing.trusted_proxies, ["10.0.0.1"]);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_by_name() {
        let e = parse("nonsense = 1\n").unwrap_err();
        assert!(format!("{e:#}").contains("nonsense"), "{e:#}");
        let e = parse("send_timeout = \"soon\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("soon"), "{e:#}");
        let bad = ServeConfig {
            node: NodeKeys {
                group: "Bad/Group".into(),
                ..NodeKeys::default()
            },
            ..ServeConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = ServeConfig {
            http: HttpKeys {
                max_connections: 0,
                ..HttpKeys::default()
            },
            ..ServeConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn absurd_values_are_refused_with_their_bounds() {
        for (text, what) in [
            ("abandon_after = \"100000000h\"\n", "abandon_after"),
            ("shutdown_grace = \"999999h\"\n", "shutdown_grace"),
            ("send_timeout = \"999999h\"\n", "send_timeout"),
            ("hook_timeout = \"0s\"\n", "hook_timeout"),
            ("live_gop_cache = \"0B\"\n", "live_gop_cache"),
            ("capacity = \"0B\"\n", "capacity"),
            ("hot_cache_max_file = \"999TiB\"\n", "hot_cache_max_file"),
            ("webhook_url = \"http://\"\n", "webhook_url"),
        ] {
            let e = parse(text)
                .and_then(|c| c.validate().map(|_| ()))
                .unwrap_err();
            assert!(format!("{e:#}").contains(what), "{text}: {e:#}");
        }
    }

    #[test]
    fn every_role_refuses_a_top_level_key_no_role_knows() {
        let e = ConfigFile::parse("nonsense = 1\n", None).unwrap_err();
        assert!(format!("{e:#}").contains("nonsense"), "{e:#}");
        let e = ConfigFile::parse("[tracker]\nheartbeat_interval_ms = 2000\n", None).unwrap_err();
        assert!(format!("{e:#}").contains("heartbeat_interval_ms"), "{e:#}");
    }

    /// The README's example is a file that works as it stands, for every role.
    #[test]
    fn the_readme_example_file_is_valid_for_every_role() {
        let readme = include_str!("../../../../README.md");
        let start = readme
            .find("## Configuration")
            .and_then(|at| {
                readme[at..]
                    .find("```toml")
                    .map(|i| at + i + "```toml".len())
            })
            .expect("a toml block under ## Configuration");
        let end = start + readme[start..].find("```").expect("the block ends");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sluice.toml");
        std::fs::write(&path, &readme[start..end]).unwrap();
        let file = ConfigFile::read(Some(&path)).unwrap();
        ServeConfig::from_file(&file, true)
            .unwrap()
            .validate()
            .unwrap();
        ServeConfig::from_file(&file, false)
            .unwrap()
            .validate()
            .unwrap();
        super::super::TrackerKeys::from_table(file.section("tracker"), "tracker")
            .unwrap()
            .validate()
            .unwrap();
        super::super::EdgeKeys::from_table(file.section("edge"), "edge")
            .unwrap()
            .validate()
            .unwrap();
        super::super::LiveRoleKeys::from_table(file.section("live"), "live")
            .unwrap()
            .validate()
            .unwrap();
    }
}
