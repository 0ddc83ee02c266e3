//! HLS: each live H.264/AAC stream is cut into MPEG-TS segments on keyframes (at least the
//! target duration, 2 s by default) kept in a sliding window in memory, and listed in a live
//! playlist; after unpublish the playlist ends with `#EXT-X-ENDLIST` and stays for a while.
//!
//! A segment is also cut, keyframe or not, once it reaches a size or a duration limit: a
//! stream whose keyframes are far apart (an intra-refresh encoder, or one keyframe and then
//! only P-frames) would otherwise grow one segment without bound. The window is bounded in
//! bytes too, so a stream's HLS holds at most five times the segment size limit.
//!
//! The segmenter is one task per stream, subscribed to the stream like a player (so HLS costs
//! the publisher nothing), and the only writer of its [`HlsStream`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_media::flv;
use sluice_media::ts::{AacConfig, AvcConfig, PID_AUDIO, PID_VIDEO, TsWriter, annex_b};
use sluice_state::LockRecover;

use crate::LiveState;
use crate::hub::{Channel, Feed, FeedStep, Frame, FrameKind};

/// Segments kept in the playlist's window...
pub const WINDOW: usize = 6;
/// ...unless they pass [`WINDOW_SEGMENT_BYTES`] times the segment size limit together (a
/// stream near the limit keeps fewer), but never fewer than this many.
pub const MIN_WINDOW: usize = 3;
/// The window's bytes, in segment size limits.
pub const WINDOW_SEGMENT_BYTES: usize = 4;
/// How long an ended stream's playlist and segments stay for players to finish.
pub const LINGER: Duration = Duration::from_secs(60);

pub struct Segment {
    pub seq: u64,
    pub duration_ms: u64,
    pub data: SegmentData,
}

/// A segment's bytes as its frames were muxed, one piece each, so none is copied into a
/// growing buffer (whose spare capacity a finished segment would keep).
#[derive(Clone, Default)]
pub struct SegmentData {
    pub parts: Vec<Bytes>,
    pub len: usize,
}

impl SegmentData {
    fn push(&mut self, part: BytesMut) {
        self.len += part.len();
        self.parts.push(part.freeze());
    }
}

struct Building {
    seq: u64,
    start_ms: u64,
    last_ms: u64,
    data: SegmentData,
}

#[derive(Default)]
struct HlsState {
    segments: VecDeque<Segment>,
    building: Option<Building>,
    next_seq: u64,
    writer: TsWriter,
    avc: Option<AvcConfig>,
    aac: Option<AacConfig>,
    ended: bool,
    forced_cuts_logged: bool,
}

/// When segments are cut.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    /// Cut on the first keyframe at least this long after the last cut.
    pub target: Duration,
    /// Cut on any frame once a segment holds this many bytes...
    pub max_bytes: usize,
    /// ...or spans this long.
    pub max_duration: Duration,
}

/// One stream's segments and playlist.
pub struct HlsStream {
    state: Mutex<HlsState>,
    limits: SegmentLimits,
}

impl HlsStream {
    pub fn new(limits: SegmentLimits) -> Self {
        Self {
            state: Mutex::default(),
            limits,
        }
    }

    /// Whether the segment being built must be cut before a frame of `len` bytes at `ts`,
    /// keyframe or not.
    fn over_limits(&self, s: &HlsState, ts: u64, len: usize) -> bool {
        s.building.as_ref().is_some_and(|b| {
            b.data.len + len > self.limits.max_bytes
                || ts.saturating_sub(b.start_ms) >= self.limits.max_duration.as_millis() as u64
        })
    }

    /// Cuts a segment that ran into a limit, and says so once per stream.
    fn force_cut(&self, s: &mut HlsState, ts: u64) {
        if !s.forced_cuts_logged {
            s.forced_cuts_logged = true;
            tracing::warn!(
                max_bytes = self.limits.max_bytes,
                max_secs = self.limits.max_duration.as_secs_f64(),
                "HLS segment cut before a keyframe at its size or duration limit; players that join there wait for the next keyframe"
            );
        }
        self.cut(s, ts);
    }

    fn feed(&self, frame: &Frame) {
        let mut s = self.state.lock_or_recover();
        let ts = u64::from(frame.timestamp);
        match frame.kind {
            FrameKind::Data => {}
            FrameKind::Video => {
                let Some(info) = flv::video_info(&frame.payload) else {
                    return;
                };
                if info.codec != flv::VideoCodec::H264 {
                    return;
                }
                if info.sequence_header {
                    s.avc = frame
                        .payload
                        .get(5..)
                        .and_then(|r| AvcConfig::parse(r).ok());
                    s.writer.has_video = true;
                    return;
                }
                if s.avc.is_none() {
                    return;
                }
                if frame.keyframe {
                    self.cut_if_due(&mut s, ts);
                }
                if self.over_limits(&s, ts, frame.payload.len()) {
                    self.force_cut(&mut s, ts);
                }
                // Disjoint borrows of the segment, the writer and the configuration.
                let HlsState {
                    building: Some(b),
                    writer,
                    avc: Some(config),
                    ..
                } = &mut *s
                else {
                    return;
                };
                let body = frame.payload.get(5..).unwrap_or_default();
                let Ok(au) = annex_b(config, body, frame.keyframe) else {
                    return;
                };
                let cts = flv::composition_time(&frame.payload);
                let pts = (ts as i64 + i64::from(cts)).max(0) as u64;
                b.last_ms = ts;
                let mut part = BytesMut::with_capacity(ts_size(au.len()));
                writer.write_pes(PID_VIDEO, ts, pts, &au, frame.keyframe, &mut part);
                b.data.push(part);
            }
            FrameKind::Audio => {
                let Some(info) = flv::audio_info(&frame.payload) else {
                    return;
                };
                if info.codec != flv::AudioCodec::Aac {
                    return;
                }
                if info.sequence_header {
                    s.aac = frame
                        .payload
                        .get(2..)
                        .and_then(|c| AacConfig::parse(c).ok());
                    s.writer.has_audio = true;
                    return;
                }
                if s.aac.is_none() {
                    return;
                }
                // Audio-only streams are cut on any frame.
                if s.avc.is_none() {
                    self.cut_if_due(&mut s, ts);
                }
                if self.over_limits(&s, ts, frame.payload.len()) {
                    self.force_cut(&mut s, ts);
                }
                let HlsState {
                    building: Some(b),
                    writer,
                    aac: Some(config),
                    ..
                } = &mut *s
                else {
                    return;
                };
                let raw = frame.payload.get(2..).unwrap_or_default();
                let mut pes = config.adts(raw.len()).to_vec();
                pes.extend_from_slice(raw);
                b.last_ms = b.last_ms.max(ts);
                let mut part = BytesMut::with_capacity(ts_size(pes.len()));
                writer.write_pes(PID_AUDIO, ts, ts, &pes, false, &mut part);
                b.data.push(part);
            }
        }
    }

    /// Closes the segment being built if it is long enough, and starts the next at `ts`.
    fn cut_if_due(&self, s: &mut HlsState, ts: u64) {
        if let Some(b) = &s.building {
            if ts.saturating_sub(b.start_ms) < self.limits.target.as_millis() as u64 {
                return;
            }
        }
        self.cut(s, ts);
    }

    /// Closes the segment being built, and starts the next at `ts`.
    fn cut(&self, s: &mut HlsState, ts: u64) {
        self.close(s, Some(ts));
        let seq = s.next_seq;
        s.next_seq += 1;
        let mut tables = BytesMut::new();
        s.writer.write_tables(&mut tables);
        let mut data = SegmentData::default();
        data.push(tables);
        s.building = Some(Building {
            seq,
            start_ms: ts,
            last_ms: ts,
            data,
        });
    }

    fn close(&self, s: &mut HlsState, next_start: Option<u64>) {
        if let Some(b) = s.building.take() {
            let end = next_start.unwrap_or(b.last_ms + 40);
            s.segments.push_back(Segment {
                seq: b.seq,
                duration_ms: end.saturating_sub(b.start_ms).max(1),
                data: b.data,
            });
            let budget = self.limits.max_bytes.saturating_mul(WINDOW_SEGMENT_BYTES);
            let mut held: usize = s.segments.iter().map(|g| g.data.len).sum();
            while s.segments.len() > WINDOW || (s.segments.len() > MIN_WINDOW && held > budget) {
                if let Some(gone) = s.segments.pop_front() {
                    held -= gone.data.len;
                }
            }
        }
    }

    fn end(&self) {
        let mut s = self.state.lock_or_recover();
        self.close(&mut s, None);
        s.ended = true;
    }

    pub fn segment(&self, seq: u64) -> Option<SegmentData> {
        let s = self.state.lock_or_recover();
        s.segments
            .iter()
            .find(|g| g.seq == seq)
            .map(|g| g.data.clone())
    }

    /// The playlist; `uri(seq)` names each segment. `None` before the first segment is whole.
    pub fn playlist(&self, uri: impl Fn(u64) -> String) -> Option<String> {
        let s = self.state.lock_or_recover();
        let first = s.segments.front()?;
        let target = s
            .segments
            .iter()
            .map(|g| g.duration_ms)
            .max()
            .unwrap_or(0)
            .max(self.limits.target.as_millis() as u64);
        let mut out = format!(
            "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:{}\n#EXT-X-MEDIA-SEQUENCE:{}\n",
            target.div_ceil(1000),
            first.seq
        );
        for g in &s.segments {
            out.push_str(&format!(
                "#EXTINF:{:.3},\n{}\n",
                g.duration_ms as f64 / 1000.0,
                uri(g.seq)
            ));
        }
        if s.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        }
        Some(out)
    }
}

/// Room for `payload` bytes muxed into TS packets (a packet carries at least 176 of them
/// after its header, adaptation field and PCR; the PES header takes up to 19).
fn ts_size(payload: usize) -> usize {
    (payload + 19).div_ceil(176) * 188
}

/// Starts segmenting `channel`; the stream's HLS lives on for [`LINGER`] after it ends.
pub(crate) fn spawn(state: LiveState, channel: Arc<Channel>) {
    let config = state.config();
    let hls = Arc::new(HlsStream::new(SegmentLimits {
        target: config.hls_target,
        max_bytes: config.hls_max_segment_bytes,
        max_duration: config.hls_max_segment_duration,
    }));
    state.set_hls(&channel.app, &channel.name, hls.clone());
    tokio::spawn(async move {
        // After a lag (it should never be that slow) the next keyframe starts a segment.
        let mut feed = Feed::new(channel.follow());
        while let FeedStep::Frames(frames) = feed.next(usize::MAX).await {
            for f in &frames {
                hls.feed(f);
            }
        }
        hls.end();
        drop(feed);
        tokio::time::sleep(LINGER).await;
        state.remove_hls(&channel.app, &channel.name, &hls);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, kind: FrameKind, ts: u32, payload: Vec<u8>) -> Arc<Frame> {
        Frame::new(seq, kind, ts, Bytes::from(payload))
    }

    fn limits() -> SegmentLimits {
        SegmentLimits {
            target: Duration::from_secs(2),
            max_bytes: 4 << 20,
            max_duration: Duration::from_secs(10),
        }
    }

    fn avc_header() -> Vec<u8> {
        vec![
            0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 2, 0x67, 1, 1, 0, 1, 0x68,
        ]
    }

    /// An H.264 frame in FLV form: one NAL unit of `len` bytes.
    fn h264(key: bool, len: usize) -> Vec<u8> {
        let mut p = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.push(if key { 0x65 } else { 0x41 });
        p.extend(std::iter::repeat_n(0xAA, len - 1));
        p
    }

    #[test]
    fn one_keyframe_then_only_p_frames_cannot_grow_a_segment_without_bound() {
        let hls = HlsStream::new(SegmentLimits {
            max_bytes: 1 << 20,
            ..limits()
        });
        hls.feed(&frame(1, FrameKind::Video, 0, avc_header()));
        hls.feed(&frame(2, FrameKind::Video, 0, h264(true, 1000)));
        // 20 MB of P-frames, all within one second: only the size limit can cut.
        for i in 0..2000u32 {
            hls.feed(&frame(
                3 + u64::from(i),
                FrameKind::Video,
                i / 2,
                h264(false, 10_000),
            ));
        }
        let s = hls.state.lock().unwrap();
        let largest = s.segments.iter().map(|g| g.data.len).max().unwrap();
        assert!(largest <= (1 << 20) + 11_000, "{largest}");
        assert!(s.building.as_ref().unwrap().data.len <= (1 << 20) + 11_000);
        // Segments at the limit: the window keeps what fits in four of them.
        let window: usize = s.segments.iter().map(|g| g.data.len).sum();
        assert!(window <= 4 << 20, "{window}");
        assert!(s.segments.len() >= MIN_WINDOW);
        drop(s);
        // And the duration limit: slow P-frames over a minute.
        let hls = HlsStream::new(limits());
        hls.feed(&frame(1, FrameKind::Video, 0, avc_header()));
        hls.feed(&frame(2, FrameKind::Video, 0, h264(true, 100)));
        for i in 1..=60u32 {
            hls.feed(&frame(
                2 + u64::from(i),
                FrameKind::Video,
                i * 1000,
                h264(false, 100),
            ));
        }
        let playlist = hls.playlist(|s| format!("{s}.ts")).unwrap();
        assert!(playlist.contains("#EXTINF:10.000,"), "{playlist}");
    }

    #[test]
    fn cuts_on_keyframes_after_the_target_and_slides() {
        let hls = HlsStream::new(limits());
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        hls.feed(&frame(next(), FrameKind::Video, 0, avc_header()));
        hls.feed(&frame(
            next(),
            FrameKind::Audio,
            0,
            vec![0xAF, 0, 0x12, 0x10],
        ));
        assert!(
            hls.playlist(|s| format!("{s}.ts")).is_none(),
            "no segment yet"
        );
        // 20 s at 25 fps, a keyframe every second.
        for i in 0..500u32 {
            let key = i % 25 == 0;
            let mut p = vec![
                if key { 0x17 } else { 0x27 },
                1,
                0,
                0,
                0,
                0,
                0,
                0,
                2,
                0x65,
                0xAA,
            ];
            p[9] = if key { 0x65 } else { 0x41 };
            hls.feed(&frame(next(), FrameKind::Video, i * 40, p));
            hls.feed(&frame(
                next(),
                FrameKind::Audio,
                i * 40,
                vec![0xAF, 1, 0x21, 0x10],
            ));
        }
        let live = hls.playlist(|s| format!("cam-{s}.ts")).unwrap();
        assert!(live.contains("#EXT-X-TARGETDURATION:2\n"), "{live}");
        assert_eq!(live.matches("#EXTINF:2.000,").count(), WINDOW, "{live}");
        assert!(!live.contains("ENDLIST"));
        assert!(live.contains("#EXT-X-MEDIA-SEQUENCE:3\n"), "{live}");
        let data = hls.segment(5).unwrap().parts.concat();
        assert_eq!(data.len() % 188, 0);
        assert!(data.chunks(188).all(|p| p[0] == 0x47));
        assert!(hls.segment(0).is_none(), "slid out of the window");
        hls.end();
        let ended = hls.playlist(|s| format!("cam-{s}.ts")).unwrap();
        assert!(ended.ends_with("#EXT-X-ENDLIST\n"), "{ended}");
    }
}
