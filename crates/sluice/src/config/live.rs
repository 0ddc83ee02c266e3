//! The live role's keys: the stream settings (top level for `serve`, and `[live]`) and, for
//! `sluice live` alone, where it listens and where recordings go (`[live]`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use sluice_proto::{ByteSize, TimeSpan};

use super::file::{no_more, take};
use super::{HOUR, HttpKeys, MS, SEC, check_url, within};

fn secs(n: u64) -> TimeSpan {
    TimeSpan(std::time::Duration::from_secs(n))
}

/// How streams are taken in, held and served.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LiveKeys {
    /// `sluice serve`: RTMP address for live streaming (off when unset).
    pub rtmp: Option<SocketAddr>,
    /// Record every publish into storage (`--record`).
    pub record: bool,
    /// Most bytes per second one RTMP publisher may send; a faster one is cut off as a flood.
    pub rtmp_max_ingest_rate: ByteSize,
    /// Asked (POST, JSON `{action, app, stream, query, client}`) before each publish;
    /// anything but 2xx refuses it.
    pub on_publish: Option<String>,
    /// Asked before each RTMP play.
    pub on_play: Option<String>,
    /// A publish/play hook slower than this refuses.
    pub hook_timeout: TimeSpan,
    /// A publisher that sends nothing this long is taken as gone.
    pub rtmp_idle_timeout: TimeSpan,
    /// HLS segments are cut on the first keyframe at least this long after the last.
    pub hls_target: TimeSpan,
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

impl Default for LiveKeys {
    fn default() -> Self {
        Self {
            rtmp: None,
            record: false,
            rtmp_max_ingest_rate: ByteSize(12_500_000),
            on_publish: None,
            on_play: None,
            hook_timeout: secs(3),
            rtmp_idle_timeout: secs(10),
            hls_target: secs(2),
            rtmp_max_message: ByteSize(4 << 20),
            live_gop_cache: ByteSize(4 << 20),
            live_player_backlog: ByteSize(4 << 20),
            hls_max_segment_size: ByteSize(4 << 20),
            hls_max_segment_duration: secs(10),
            record_max_frames: 200_000,
            live_player_stall_timeout: secs(10),
        }
    }
}

impl LiveKeys {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (what, url) in [("on_publish", &self.on_publish), ("on_play", &self.on_play)] {
            if let Some(url) = url {
                check_url(what, url)?;
            }
        }
        within(
            "live_player_stall_timeout",
            self.live_player_stall_timeout,
            SEC,
            HOUR,
        )?;
        within("rtmp_idle_timeout", self.rtmp_idle_timeout, SEC, HOUR)?;
        within("hls_target", self.hls_target, SEC, 60 * SEC)?;
        within("hook_timeout", self.hook_timeout, 10 * MS, 60 * SEC)?;
        within(
            "hls_max_segment_duration",
            self.hls_max_segment_duration,
            SEC,
            600 * SEC,
        )?;
        anyhow::ensure!(
            self.live_gop_cache.0 >= 64 << 10 && self.live_player_backlog.0 >= 64 << 10,
            "live_gop_cache and live_player_backlog must be at least 64KiB"
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
                && self.hls_max_segment_duration.0 >= self.hls_target.0,
            "hls_max_segment_size must be at least 64KiB and hls_max_segment_duration at least hls_target"
        );
        anyhow::ensure!(
            self.record_max_frames >= 100,
            "record_max_frames must be at least 100"
        );
        Ok(())
    }

    /// The live role's settings; `access` from the environment.
    pub fn live_config(&self) -> sluice_live::LiveConfig {
        sluice_live::LiveConfig {
            access: crate::roles::access_policy(),
            max_ingest_rate: self.rtmp_max_ingest_rate.0,
            max_message: u32::try_from(self.rtmp_max_message.0).unwrap_or(u32::MAX),
            stream_limits: sluice_live::StreamLimits {
                gop_cache: self.live_gop_cache.0 as usize,
                backlog: self.live_player_backlog.0 as usize,
            },
            hls_max_segment_bytes: self.hls_max_segment_size.0 as usize,
            hls_max_segment_duration: self.hls_max_segment_duration.0,
            record_max_frames: self.record_max_frames,
            on_publish: self.on_publish.clone(),
            on_play: self.on_play.clone(),
            hook_timeout: self.hook_timeout.0,
            idle_timeout: self.rtmp_idle_timeout.0,
            player_stall_timeout: self.live_player_stall_timeout.0,
            hls_target: self.hls_target.0,
            ..sluice_live::LiveConfig::default()
        }
    }
}

/// `sluice live` alone: where it listens, where recordings go.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LivePlace {
    /// HTTP-FLV, HLS and the stream list.
    pub http: SocketAddr,
    /// Trackers of the cluster recordings are stored in.
    pub trackers: Vec<String>,
    /// Recordings in progress and the recordings list.
    pub data: PathBuf,
}

impl Default for LivePlace {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8090)),
            trackers: Vec::new(),
            data: PathBuf::from("sluice-live"),
        }
    }
}

/// Every key of `[live]`.
#[derive(Debug, Clone)]
pub struct LiveRoleKeys {
    pub place: LivePlace,
    pub http: HttpKeys,
    pub live: LiveKeys,
}

impl LiveRoleKeys {
    pub fn from_table(mut table: toml::Table, at: &str) -> anyhow::Result<Self> {
        let keys = Self {
            place: take(&mut table, at)?,
            http: take(&mut table, at)?,
            live: take(&mut table, at)?,
        };
        no_more(table, at)?;
        Ok(keys)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for url in &self.place.trackers {
            check_url("trackers", url)?;
        }
        anyhow::ensure!(
            !self.live.record || !self.place.trackers.is_empty(),
            "recording (--record) needs a tracker (where recordings are stored): --tracker URL"
        );
        self.http.validate()?;
        self.live.validate()
    }
}
