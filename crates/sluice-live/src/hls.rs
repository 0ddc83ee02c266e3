//! HLS: each live H.264/AAC stream is cut into MPEG-TS segments on keyframes (at least the
//! target duration, 2 s by default) kept in a sliding window in memory, and listed in a live
//! playlist; after unpublish the playlist ends with `#EXT-X-ENDLIST` and stays for a while.
//!
//! The segmenter is one task per stream, subscribed to the stream like a player (so HLS costs
//! the publisher nothing), and the only writer of its [`HlsStream`].

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sluice_media::flv;
use sluice_media::ts::{AacConfig, AvcConfig, PID_AUDIO, PID_VIDEO, TsWriter, annex_b};

use crate::LiveState;
use crate::hub::{Channel, Feed, FeedStep, Frame, FrameKind};

/// Segments kept in the playlist's window.
pub const WINDOW: usize = 6;
/// How long an ended stream's playlist and segments stay for players to finish.
pub const LINGER: Duration = Duration::from_secs(60);

pub struct Segment {
    pub seq: u64,
    pub duration_ms: u64,
    pub data: Bytes,
}

struct Building {
    seq: u64,
    start_ms: u64,
    last_ms: u64,
    data: BytesMut,
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
}

/// One stream's segments and playlist.
#[derive(Default)]
pub struct HlsStream {
    state: Mutex<HlsState>,
    target: Duration,
}

impl HlsStream {
    pub fn new(target: Duration) -> Self {
        Self {
            state: Mutex::default(),
            target,
        }
    }

    fn feed(&self, frame: &Frame) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
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
                writer.write_pes(PID_VIDEO, ts, pts, &au, frame.keyframe, &mut b.data);
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
                writer.write_pes(PID_AUDIO, ts, ts, &pes, false, &mut b.data);
            }
        }
    }

    /// Closes the segment being built if it is long enough, and starts the next at `ts`.
    fn cut_if_due(&self, s: &mut HlsState, ts: u64) {
        if let Some(b) = &s.building {
            if ts.saturating_sub(b.start_ms) < self.target.as_millis() as u64 {
                return;
            }
        }
        Self::close(s, Some(ts));
        let seq = s.next_seq;
        s.next_seq += 1;
        let mut data = BytesMut::new();
        s.writer.write_tables(&mut data);
        s.building = Some(Building {
            seq,
            start_ms: ts,
            last_ms: ts,
            data,
        });
    }

    fn close(s: &mut HlsState, next_start: Option<u64>) {
        if let Some(b) = s.building.take() {
            let end = next_start.unwrap_or(b.last_ms + 40);
            s.segments.push_back(Segment {
                seq: b.seq,
                duration_ms: end.saturating_sub(b.start_ms).max(1),
                data: b.data.freeze(),
            });
            while s.segments.len() > WINDOW {
                s.segments.pop_front();
            }
        }
    }

    fn end(&self) {
        if let Ok(mut s) = self.state.lock() {
            Self::close(&mut s, None);
            s.ended = true;
        }
    }

    pub fn segment(&self, seq: u64) -> Option<Bytes> {
        let s = self.state.lock().ok()?;
        s.segments
            .iter()
            .find(|g| g.seq == seq)
            .map(|g| g.data.clone())
    }

    /// The playlist; `uri(seq)` names each segment. `None` before the first segment is whole.
    pub fn playlist(&self, uri: impl Fn(u64) -> String) -> Option<String> {
        let s = self.state.lock().ok()?;
        let first = s.segments.front()?;
        let target = s
            .segments
            .iter()
            .map(|g| g.duration_ms)
            .max()
            .unwrap_or(0)
            .max(self.target.as_millis() as u64);
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

/// Starts segmenting `channel`; the stream's HLS lives on for [`LINGER`] after it ends.
pub(crate) fn spawn(state: LiveState, channel: Arc<Channel>) {
    let hls = Arc::new(HlsStream::new(state.config().hls_target));
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

    #[test]
    fn cuts_on_keyframes_after_the_target_and_slides() {
        let hls = HlsStream::new(Duration::from_secs(2));
        let mut seq = 0;
        let mut next = || {
            seq += 1;
            seq
        };
        let avc_header = vec![
            0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 2, 0x67, 1, 1, 0, 1, 0x68,
        ];
        hls.feed(&frame(next(), FrameKind::Video, 0, avc_header));
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
        let data = hls.segment(5).unwrap();
        assert_eq!(data.len() % 188, 0);
        assert!(data.chunks(188).all(|p| p[0] == 0x47));
        assert!(hls.segment(0).is_none(), "slid out of the window");
        hls.end();
        let ended = hls.playlist(|s| format!("cam-{s}.ts")).unwrap();
        assert!(ended.ends_with("#EXT-X-ENDLIST\n"), "{ended}");
    }
}
