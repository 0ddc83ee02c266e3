//! The stream hub: one [`Channel`] per live stream, owned by its publisher, fanned out to any
//! number of players.
//!
//! Each frame is one [`Frame`] shared by every player (an `Arc`), and its wire encodings (RTMP
//! chunks, FLV tag) are made once, on first use, and shared too: a thousand players cost one
//! encoding, not a thousand copies. The fan-out is a [`Backlog`] bounded in batches and bytes:
//! the publisher never waits for anyone; a player that falls behind by more than it holds is
//! told so and skips to the next keyframe, and one that keeps falling behind is dropped.
//!
//! Everything a stream holds is bounded whatever its publisher sends: the GOP cache, the
//! backlog, the batch being gathered ([`StreamLimits`]); the HLS segmenter and the recorder
//! bound their own.
//!
//! Frames go out in batches, every `merge` interval (100 ms by default), the way SRS merges
//! writes: a player wakes and writes once per batch rather than once per frame, which is
//! most of the cost of serving many players; a few tens of milliseconds of latency buy it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_media::flv;
use sluice_rtmp::Message;
use sluice_rtmp::amf0::{self, Amf0};
use sluice_state::LockRecover;
use tokio::sync::watch;

use crate::backlog::{Backlog, Follower, Next};

/// Batches a player may be behind before it skips to the next keyframe (at 100 ms a batch,
/// about six seconds), within [`StreamLimits::backlog`] bytes.
pub const PLAYER_BACKLOG: usize = 64;
/// A batch goes out early once it holds this many bytes.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// What one stream may hold in memory for its players.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    /// Bytes of the current group of pictures kept for players that join.
    pub gop_cache: usize,
    /// Bytes of batches kept for players that have not read them yet.
    pub backlog: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            gop_cache: 4 << 20,
            backlog: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Audio,
    Video,
    /// `onMetaData`.
    Data,
}

impl FrameKind {
    /// The RTMP message type, which is also the FLV tag type.
    pub fn type_id(self) -> u8 {
        match self {
            FrameKind::Audio => flv::TAG_AUDIO,
            FrameKind::Video => flv::TAG_VIDEO,
            FrameKind::Data => flv::TAG_SCRIPT,
        }
    }

    fn csid(self) -> u32 {
        match self {
            FrameKind::Audio => sluice_rtmp::message::CSID_AUDIO,
            FrameKind::Video => sluice_rtmp::message::CSID_VIDEO,
            FrameKind::Data => sluice_rtmp::message::CSID_DATA,
        }
    }
}

/// One audio, video or metadata message of a stream, shared by every player.
pub struct Frame {
    /// Order within its stream: a player skips what its start set already held.
    pub seq: u64,
    pub kind: FrameKind,
    pub timestamp: u32,
    pub payload: Bytes,
    pub keyframe: bool,
    /// RTMP chunks for the usual player (message stream 1, our chunk size), made once and
    /// written to every RTMP player from here. (HTTP-FLV players are sent the payload itself
    /// between small tag headers: no copy at all.)
    rtmp: OnceLock<Bytes>,
}

/// The message stream id almost every player gets from createStream.
pub const USUAL_STREAM_ID: u32 = 1;

impl Frame {
    pub fn new(seq: u64, kind: FrameKind, timestamp: u32, payload: Bytes) -> Arc<Self> {
        let keyframe = kind == FrameKind::Video
            && flv::video_info(&payload).is_some_and(|v| v.keyframe && !v.sequence_header);
        Arc::new(Self {
            seq,
            kind,
            timestamp,
            payload,
            keyframe,
            rtmp: OnceLock::new(),
        })
    }

    fn message(&self, stream_id: u32) -> Message {
        Message {
            csid: self.kind.csid(),
            timestamp: self.timestamp,
            type_id: self.kind.type_id(),
            stream_id,
            payload: self.payload.clone(),
        }
    }

    /// The frame as RTMP chunks for a player on `stream_id` receiving chunks of `chunk_size`.
    pub fn rtmp_bytes(&self, stream_id: u32, chunk_size: u32) -> Bytes {
        let encode = || sluice_rtmp::chunk::encode_to_bytes(&self.message(stream_id), chunk_size);
        if stream_id == USUAL_STREAM_ID && chunk_size == crate::CHUNK_SIZE {
            self.rtmp.get_or_init(encode).clone()
        } else {
            encode()
        }
    }
}

/// What `/v1/live/streams` says of a stream.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StreamInfo {
    pub app: String,
    pub stream: String,
    pub video_codec: Option<String>,
    pub audio_codec: Option<String>,
    /// Pixels, as the publisher's metadata says (whole numbers, whatever AMF0 carries them as).
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub frame_rate: Option<f64>,
    /// Bits per second received, averaged since the publish began.
    pub bitrate: u64,
    pub players: usize,
    pub uptime_secs: u64,
}

/// A dimension from metadata (AMF0 numbers are doubles), if it is a sane one.
fn whole_pixels(n: f64) -> Option<u32> {
    (n.is_finite() && (1.0..=65_535.0).contains(&n)).then(|| n.round() as u32)
}

/// Frames sent to players together.
pub type Batch = Arc<Vec<Arc<Frame>>>;

#[derive(Default)]
struct ChannelState {
    next_seq: u64,
    /// Frames published since the last batch went out, and their bytes.
    pending: Vec<Arc<Frame>>,
    pending_bytes: usize,
    metadata: Option<Arc<Frame>>,
    video_header: Option<Arc<Frame>>,
    audio_header: Option<Arc<Frame>>,
    /// From the last keyframe on.
    gop: std::collections::VecDeque<Arc<Frame>>,
    gop_bytes: usize,
    video_codec: Option<flv::VideoCodec>,
    audio_codec: Option<flv::AudioCodec>,
}

/// One live stream.
pub struct Channel {
    pub app: String,
    pub name: String,
    started: Instant,
    limits: StreamLimits,
    state: Mutex<ChannelState>,
    backlog: Arc<Backlog<Batch>>,
    ended: watch::Sender<bool>,
    pub bytes_in: AtomicU64,
    pub players: AtomicUsize,
}

/// What a new player starts with, and where the rest comes from.
pub struct Subscription {
    /// Metadata, sequence headers and the current GOP, in order.
    pub start: Vec<Arc<Frame>>,
    /// Frames up to this sequence number were in `start`: skip them in batches.
    pub start_seq: u64,
    pub live: Follower<Batch>,
    pub ended: watch::Receiver<bool>,
    _count: Option<PlayerCount>,
}

/// Counts a player for as long as it lives.
struct PlayerCount(Arc<Channel>);

impl Drop for PlayerCount {
    fn drop(&mut self) {
        self.0.players.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Channel {
    fn new(app: &str, name: &str, limits: StreamLimits) -> Arc<Self> {
        Arc::new(Self {
            app: app.to_owned(),
            name: name.to_owned(),
            started: Instant::now(),
            limits,
            state: Mutex::default(),
            backlog: Backlog::new(PLAYER_BACKLOG, limits.backlog),
            ended: watch::channel(false).0,
            bytes_in: AtomicU64::new(0),
            players: AtomicUsize::new(0),
        })
    }

    /// A frame from the publisher: kept as needed for late joiners, and queued for the next
    /// batch (sent now when `immediate`).
    pub fn publish(&self, kind: FrameKind, timestamp: u32, payload: Bytes, immediate: bool) {
        self.bytes_in
            .fetch_add(payload.len() as u64, Ordering::Relaxed);
        let mut s = self.state.lock_or_recover();
        s.next_seq += 1;
        let frame = Frame::new(s.next_seq, kind, timestamp, payload);
        // Headers (metadata, codec configuration) are kept apart from the GOP: a new player
        // gets the latest of each first.
        let mut is_header = true;
        match frame.kind {
            FrameKind::Data => s.metadata = Some(frame.clone()),
            FrameKind::Video => match flv::video_info(&frame.payload) {
                Some(info) if info.sequence_header => {
                    s.video_codec = Some(info.codec);
                    s.video_header = Some(frame.clone());
                }
                info => {
                    s.video_codec = info.map(|i| i.codec).or(s.video_codec);
                    is_header = false;
                }
            },
            FrameKind::Audio => match flv::audio_info(&frame.payload) {
                Some(info) if info.sequence_header => {
                    s.audio_codec = Some(info.codec);
                    s.audio_header = Some(frame.clone());
                }
                info => {
                    s.audio_codec = info.map(|i| i.codec).or(s.audio_codec);
                    is_header = false;
                }
            },
        }
        if !is_header {
            if frame.keyframe {
                s.gop.clear();
                s.gop_bytes = 0;
            }
            let size = frame.payload.len();
            if s.gop_bytes + size <= self.limits.gop_cache || s.gop.is_empty() {
                s.gop_bytes += size;
                s.gop.push_back(frame.clone());
            } else if s.video_codec.is_none() {
                // Audio-only streams have no keyframes: keep a tail within the limit instead
                // (as many old frames go as the new one needs, whatever their sizes).
                while s.gop_bytes + size > self.limits.gop_cache {
                    let Some(dropped) = s.gop.pop_front() else {
                        break;
                    };
                    s.gop_bytes -= dropped.payload.len();
                }
                s.gop_bytes += size;
                s.gop.push_back(frame.clone());
            }
        }
        s.pending_bytes += frame.payload.len();
        s.pending.push(frame);
        if immediate || s.pending_bytes >= MAX_BATCH_BYTES {
            self.send_pending(&mut s);
        }
    }

    fn send_pending(&self, s: &mut ChannelState) {
        if !s.pending.is_empty() {
            let bytes = std::mem::take(&mut s.pending_bytes);
            self.backlog
                .push(Arc::new(std::mem::take(&mut s.pending)), bytes);
        }
    }

    /// Sends the frames queued since the last batch.
    pub fn flush(&self) {
        let mut s = self.state.lock_or_recover();
        self.send_pending(&mut s);
    }

    /// A player's subscription (counted in the stream's players).
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.players.fetch_add(1, Ordering::Relaxed);
        let mut sub = self.follow();
        sub._count = Some(PlayerCount(self.clone()));
        sub
    }

    /// The same frames for the server's own use (the HLS segmenter): not counted as a player.
    pub fn follow(self: &Arc<Self>) -> Subscription {
        let s = self.state.lock_or_recover();
        let mut start: Vec<Arc<Frame>> = Vec::new();
        start.extend(s.metadata.clone());
        start.extend(s.video_header.clone());
        start.extend(s.audio_header.clone());
        start.extend(s.gop.iter().cloned());
        let start_seq = s.next_seq;
        let live = self.backlog.follow();
        drop(s);
        Subscription {
            start,
            start_seq,
            live,
            ended: self.ended.subscribe(),
            _count: None,
        }
    }

    /// The publisher is gone: the last frames go out, then players are told and finish.
    pub fn end(&self) {
        self.flush();
        self.ended.send_replace(true);
    }

    pub fn is_ended(&self) -> bool {
        *self.ended.borrow()
    }

    pub fn has_audio(&self) -> bool {
        self.state.lock_or_recover().audio_codec.is_some()
    }

    pub fn has_video(&self) -> bool {
        self.state.lock_or_recover().video_codec.is_some()
    }

    pub fn info(&self) -> StreamInfo {
        let s = self.state.lock_or_recover();
        let meta = s
            .metadata
            .as_ref()
            .and_then(|m| amf0::decode_all(&m.payload).ok())
            .and_then(|v| v.into_iter().nth(1));
        let number = |key: &str| {
            meta.as_ref()
                .and_then(|m| m.get(key))
                .and_then(Amf0::as_number)
        };
        let uptime = self.started.elapsed();
        StreamInfo {
            app: self.app.clone(),
            stream: self.name.clone(),
            video_codec: s.video_codec.map(|c| c.name().to_owned()),
            audio_codec: s.audio_codec.map(|c| c.name().to_owned()),
            width: number("width").and_then(whole_pixels),
            height: number("height").and_then(whole_pixels),
            frame_rate: number("framerate").or_else(|| number("fps")),
            bitrate: (self.bytes_in.load(Ordering::Relaxed) as f64 * 8.0
                / uptime.as_secs_f64().max(1.0)) as u64,
            players: self.players.load(Ordering::Relaxed),
            uptime_secs: uptime.as_secs(),
        }
    }
}

/// Every live stream, by app and name.
#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<(String, String), Arc<Channel>>>,
}

impl Hub {
    /// Starts a stream; `None` when it already has a publisher. With a `merge` interval, a
    /// task sends each interval's frames as one batch until the stream ends.
    pub fn start(
        &self,
        app: &str,
        name: &str,
        merge: Duration,
        limits: StreamLimits,
    ) -> Option<Arc<Channel>> {
        let mut map = self.channels.lock_or_recover();
        let key = (app.to_owned(), name.to_owned());
        if map.contains_key(&key) {
            return None;
        }
        let channel = Channel::new(app, name, limits);
        map.insert(key, channel.clone());
        if !merge.is_zero() {
            let ticking = Arc::downgrade(&channel);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(merge);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    match ticking.upgrade() {
                        Some(c) if !c.is_ended() => c.flush(),
                        _ => return,
                    }
                }
            });
        }
        Some(channel)
    }

    /// Ends a stream (its publisher left).
    pub fn stop(&self, channel: &Arc<Channel>) {
        channel.end();
        let mut map = self.channels.lock_or_recover();
        let key = (channel.app.clone(), channel.name.clone());
        if map.get(&key).is_some_and(|c| Arc::ptr_eq(c, channel)) {
            map.remove(&key);
        }
    }

    pub fn get(&self, app: &str, name: &str) -> Option<Arc<Channel>> {
        self.channels
            .lock_or_recover()
            .get(&(app.to_owned(), name.to_owned()))
            .cloned()
    }

    pub fn list(&self) -> Vec<StreamInfo> {
        let channels: Vec<Arc<Channel>> =
            self.channels.lock_or_recover().values().cloned().collect();
        let mut out: Vec<StreamInfo> = channels.iter().map(|c| c.info()).collect();
        out.sort_by(|a, b| (&a.app, &a.stream).cmp(&(&b.app, &b.stream)));
        out
    }
}

/// Metadata as players receive it: `onMetaData` and its object (the `@setDataFrame` wrapper
/// publishers send is not for players).
pub fn metadata_payload(values: &[Amf0]) -> Bytes {
    Bytes::from(amf0::encode_all(values))
}

/// What a follower of a stream gets next.
pub enum FeedStep {
    Frames(Vec<Arc<Frame>>),
    /// The publisher is gone (every frame before that was delivered).
    Ended,
    /// Fell behind by a whole backlog more than [`MAX_LAGS`] times in a row.
    TooSlow,
}

/// Lags in a row before a follower is given up.
pub const MAX_LAGS: u32 = 5;

/// A follower's position in a stream: players (RTMP, HTTP-FLV), the HLS segmenter and the
/// recorder all read a stream through one. It hands out the start set first, then batches,
/// skipping frames already in the start set; after a lag it drops frames up to the next
/// keyframe (any frame, for a stream without video), so what follows always decodes.
pub struct Feed {
    subscription: Subscription,
    started: bool,
    skipping: bool,
    lags: u32,
    /// Whether the stream has shown video (so a skip waits for a keyframe).
    seen_video: bool,
}

impl Feed {
    pub fn new(subscription: Subscription) -> Self {
        Self {
            subscription,
            started: false,
            skipping: false,
            lags: 0,
            seen_video: false,
        }
    }

    /// The next frames: all that are waiting, up to about `max` frames or
    /// [`MAX_BATCH_BYTES`] (whole batches).
    pub async fn next(&mut self, max: usize) -> FeedStep {
        if !self.started {
            self.started = true;
            let start = std::mem::take(&mut self.subscription.start);
            self.seen_video = start.iter().any(|f| f.kind == FrameKind::Video);
            return FeedStep::Frames(start);
        }
        let mut frames = Vec::new();
        let mut bytes = 0;
        loop {
            // Batches before the end: a stream's last frames reach every follower.
            let received = if frames.is_empty() {
                tokio::select! {
                    biased;
                    next = self.subscription.live.next() => next,
                    () = ended(&mut self.subscription.ended) => return FeedStep::Ended,
                }
            } else {
                match self.subscription.live.try_next() {
                    Some(next) => next,
                    None => return FeedStep::Frames(frames),
                }
            };
            match received {
                Next::Item(batch) => {
                    for frame in batch.iter().filter(|f| f.seq > self.subscription.start_seq) {
                        self.seen_video |= frame.kind == FrameKind::Video;
                        if self.skipping && (frame.keyframe || !self.seen_video) {
                            self.skipping = false;
                        }
                        if !self.skipping {
                            bytes += frame.payload.len();
                            frames.push(frame.clone());
                        }
                    }
                    if !self.skipping {
                        self.lags = 0;
                    }
                }
                Next::Lagged(missed) => {
                    tracing::debug!(missed, "follower lagged; skipping to the next keyframe");
                    self.lags += 1;
                    if self.lags > MAX_LAGS {
                        return FeedStep::TooSlow;
                    }
                    self.skipping = true;
                }
            }
            if frames.len() >= max || bytes >= MAX_BATCH_BYTES {
                return FeedStep::Frames(frames);
            }
        }
    }
}

/// Resolves once `flag` is true (or its sender is gone); holds no lock across the wait's end.
pub async fn ended(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|e| *e).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video(key: bool) -> Bytes {
        let b0 = if key { 0x17 } else { 0x27 };
        Bytes::from(vec![b0, 1, 0, 0, 0, 9, 9])
    }

    #[test]
    fn late_joiners_start_at_the_last_keyframe_with_headers() {
        let hub = Hub::default();
        let limits = StreamLimits::default();
        let ch = hub.start("live", "cam", Duration::ZERO, limits).unwrap();
        assert!(
            hub.start("live", "cam", Duration::ZERO, limits).is_none(),
            "one publisher per stream"
        );
        let header = Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]);
        ch.publish(FrameKind::Video, 0, header, false);
        let aac = Bytes::from_static(&[0xAF, 0, 0x12, 0x10]);
        ch.publish(FrameKind::Audio, 0, aac, false);
        for ts in 0..10 {
            ch.publish(FrameKind::Video, ts * 40, video(ts % 5 == 0), false);
        }
        let sub = ch.subscribe();
        let ts: Vec<u32> = sub.start.iter().map(|f| f.timestamp).collect();
        // Two headers, then the GOP from the keyframe at 200 ms.
        assert_eq!(ts, vec![0, 0, 200, 240, 280, 320, 360]);
        assert!(sub.start[2].keyframe);
        // Those frames are still queued for the next batch: the player skips them there.
        assert_eq!(sub.start_seq, 12);
        assert_eq!(ch.players.load(Ordering::Relaxed), 1);
        drop(sub);
        assert_eq!(ch.players.load(Ordering::Relaxed), 0);
        let info = ch.info();
        assert_eq!(
            (info.video_codec.as_deref(), info.audio_codec.as_deref()),
            (Some("h264"), Some("aac"))
        );
        hub.stop(&ch);
        assert!(hub.get("live", "cam").is_none());
    }

    #[test]
    fn an_audio_only_stream_keeps_a_tail_within_the_limit_whatever_its_frame_sizes() {
        let limits = StreamLimits {
            gop_cache: 10_000,
            ..StreamLimits::default()
        };
        let ch = Hub::default()
            .start("live", "radio", Duration::ZERO, limits)
            .unwrap();
        ch.publish(
            FrameKind::Audio,
            0,
            Bytes::from_static(&[0xAF, 0, 0x12, 0x10]),
            false,
        );
        // Many tiny frames, then large ones: each large one must push out many tiny ones.
        for ts in 0..5000 {
            ch.publish(
                FrameKind::Audio,
                ts,
                Bytes::from(vec![0xAF, 1, 0, 0]),
                false,
            );
        }
        for ts in 5000..5100 {
            ch.publish(FrameKind::Audio, ts, Bytes::from(vec![0xAF; 3000]), false);
        }
        let held: usize = ch.follow().start.iter().map(|f| f.payload.len()).sum();
        assert!(held <= 10_000 + 4, "the audio tail holds {held} bytes");
    }

    #[test]
    fn encodings_are_made_once_and_shared() {
        let f = Frame::new(1, FrameKind::Video, 40, video(true));
        let a = f.rtmp_bytes(USUAL_STREAM_ID, crate::CHUNK_SIZE);
        let b = f.rtmp_bytes(USUAL_STREAM_ID, crate::CHUNK_SIZE);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same bytes, not a copy");
        assert_ne!(f.rtmp_bytes(2, crate::CHUNK_SIZE).as_ptr(), a.as_ptr());
    }
}
