//! Recording: each publish is followed (like the HLS segmenter, not counted as a player) and
//! its H.264 and AAC samples spooled to disk as they arrive; on unpublish the recording
//! becomes an MP4 with its `moov` first (plays and seeks over HTTP at once), is uploaded into
//! storage like any file (to `sluice serve` itself, or through the trackers), and listed at
//! `GET /v1/live/recordings`.
//!
//! The samples' table is the one thing a recording holds in memory, one entry per frame: once
//! a part has `record_max_frames` frames, it is stored at the next keyframe and the next part
//! begins with that keyframe (nothing lost between them), so memory stays bounded however long
//! the stream or however small its frames. A stream that sends no keyframe is cut at twice
//! the limit regardless.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sluice_client::cluster::Endpoint;
use sluice_media::flv;
use sluice_media::mp4::{self, Sample, Track, TrackKind};
use sluice_rtmp::amf0::{self, Amf0};
use sluice_state::LockRecover;

use crate::LiveState;
use crate::hub::{Channel, Feed, FeedStep, Frame, FrameKind};

/// Where recordings go.
#[derive(Clone)]
pub struct RecordConfig {
    /// Spool files and the recordings list (`recordings.json`).
    pub dir: PathBuf,
    /// Storage to upload finished recordings into.
    pub store: Endpoint,
}

/// One finished recording, as `GET /v1/live/recordings` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Recording {
    pub app: String,
    pub stream: String,
    pub fileid: String,
    /// Seconds.
    pub duration: f64,
    pub size: u64,
    /// Unix seconds when this recording (this part) began.
    pub started: u64,
    /// Which part of its publish this is, from 1 (a publish longer than `record_max_frames`
    /// is stored in parts, listed in order).
    #[serde(default = "first_part")]
    pub part: u32,
}

fn first_part() -> u32 {
    1
}

/// The format version of `recordings.json`.
const RECORDINGS_VERSION: u32 = 1;

/// The recordings list, kept in `recordings.json`: written durably on each change by its own
/// writer, which tries again until a write succeeds (a full disk, a read-only directory).
pub struct Recordings {
    list: Mutex<Vec<Recording>>,
    saver: sluice_state::Saver<Vec<Recording>>,
}

impl Recordings {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir.join("spool"))?;
        let file = dir.join("recordings.json");
        // An unreadable list stops the start (saving over it would lose every entry), before
        // anything else is touched.
        let list = sluice_state::load(&file, RECORDINGS_VERSION)?.unwrap_or_default();
        // Spools of a previous run's unfinished recordings cannot be finished now (finished
        // MP4s that could not be stored stay for an operator).
        for entry in std::fs::read_dir(dir.join("spool"))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "data") {
                let _ = std::fs::remove_file(path);
            }
        }
        let failing = std::sync::atomic::AtomicBool::new(false);
        let saver = sluice_state::Saver::start(&file, RECORDINGS_VERSION, move |result| {
            use std::sync::atomic::Ordering::Relaxed;
            match result {
                Err(e) if !failing.swap(true, Relaxed) => {
                    tracing::error!(error = %e, "could not save the recordings list; trying again");
                }
                Err(_) => {}
                Ok(()) if failing.swap(false, Relaxed) => {
                    tracing::info!("the recordings list is saved again");
                }
                Ok(()) => {}
            }
        })?;
        Ok(Self {
            list: Mutex::new(list),
            saver,
        })
    }

    pub fn list(&self) -> Vec<Recording> {
        self.list.lock_or_recover().clone()
    }

    /// Adds a recording; the list is saved by its writer.
    fn add(&self, recording: Recording) {
        let mut list = self.list.lock_or_recover();
        list.push(recording);
        self.saver.save(list.clone());
    }

    /// Waits (blocking) until the list as it is now has been written once.
    pub fn flush(&self) {
        self.saver.flush();
    }
}

/// What the recorder has gathered of one stream.
struct Recorder {
    /// Unix seconds when this recording began.
    started: u64,
    /// Its part of the publish, from 1.
    part: u32,
    spool: File,
    spool_path: PathBuf,
    written: u64,
    video: Option<Track>,
    audio: Option<Track>,
    first_video_ts: Option<u32>,
    audio_frames: u64,
    width: u16,
    height: u16,
}

impl Recorder {
    /// A new recording of `channel`; after `previous`, with its codec configuration (a
    /// stream sends that once, at its start) and starting at the next keyframe.
    fn start(
        config: &RecordConfig,
        channel: &Channel,
        previous: Option<&Recorder>,
    ) -> std::io::Result<Self> {
        let started = sluice_http::access::now_unix();
        let name = format!(
            "{}-{}-{started}-{:x}",
            channel.app,
            channel.name,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let spool_path = config.dir.join("spool").join(format!("{name}.data"));
        let spool = File::create(&spool_path)?;
        let empty = |t: &Option<Track>| {
            t.as_ref().map(|t| Track {
                samples: Vec::new(),
                ..t.clone()
            })
        };
        Ok(Self {
            started,
            part: previous.map_or(1, |p| p.part + 1),
            spool,
            spool_path,
            written: 0,
            video: previous.and_then(|p| empty(&p.video)),
            audio: previous.and_then(|p| empty(&p.audio)),
            first_video_ts: None,
            audio_frames: 0,
            width: previous.map_or(0, |p| p.width),
            height: previous.map_or(0, |p| p.height),
        })
    }

    /// Frames recorded so far.
    fn frames(&self) -> usize {
        [&self.video, &self.audio]
            .into_iter()
            .flatten()
            .map(|t| t.samples.len())
            .sum()
    }

    /// Whether this part is full and the next should begin with `next`: at a keyframe (any
    /// frame, without video) once the part holds `max` frames, at any frame past twice that.
    fn full_before(&self, next: &Frame, max: usize) -> bool {
        let n = self.frames();
        n >= max && (next.keyframe || self.video.is_none() || n >= max.saturating_mul(2))
    }

    /// Feeds `frames` until the part is full; returns how many it took.
    fn feed_until_full(&mut self, frames: &[Arc<Frame>], max: usize) -> std::io::Result<usize> {
        for (taken, frame) in frames.iter().enumerate() {
            if self.full_before(frame, max) {
                return Ok(taken);
            }
            self.feed(frame)?;
        }
        Ok(frames.len())
    }

    fn sample(&mut self, data: &[u8]) -> std::io::Result<(u64, u32)> {
        self.spool.write_all(data)?;
        let at = self.written;
        self.written += data.len() as u64;
        Ok((at, data.len() as u32))
    }

    fn feed(&mut self, frame: &Frame) -> std::io::Result<()> {
        match frame.kind {
            FrameKind::Data => {
                if let Ok(values) = amf0::decode_all(&frame.payload) {
                    if let Some(meta) = values.get(1) {
                        let n = |k: &str| meta.get(k).and_then(Amf0::as_number).unwrap_or(0.0);
                        self.width = n("width") as u16;
                        self.height = n("height") as u16;
                    }
                }
            }
            FrameKind::Video => {
                let Some(info) = flv::video_info(&frame.payload) else {
                    return Ok(());
                };
                if info.codec != flv::VideoCodec::H264 {
                    return Ok(());
                }
                let body = frame.payload.get(5..).unwrap_or_default();
                if info.sequence_header {
                    if self.video.is_none() {
                        self.video = Some(Track {
                            kind: TrackKind::H264 {
                                avcc: body.to_vec(),
                                width: 0,
                                height: 0,
                            },
                            timescale: 1000,
                            samples: Vec::new(),
                            last_duration: 40,
                        });
                    }
                    return Ok(());
                }
                if self.video.is_none() || (self.first_video_ts.is_none() && !frame.keyframe) {
                    // A recording starts on a keyframe.
                    return Ok(());
                }
                let first = *self.first_video_ts.get_or_insert(frame.timestamp);
                let cts = flv::composition_time(&frame.payload);
                let (offset, size) = self.sample(body)?;
                if let Some(v) = self.video.as_mut() {
                    v.samples.push(Sample {
                        offset,
                        size,
                        dts: u64::from(frame.timestamp.saturating_sub(first)),
                        cts,
                        sync: frame.keyframe,
                    });
                }
            }
            FrameKind::Audio => {
                let Some(info) = flv::audio_info(&frame.payload) else {
                    return Ok(());
                };
                if info.codec != flv::AudioCodec::Aac {
                    return Ok(());
                }
                let body = frame.payload.get(2..).unwrap_or_default();
                if info.sequence_header {
                    if self.audio.is_none() {
                        let config = sluice_media::ts::AacConfig::parse(body).ok();
                        let rate = config.map_or(44100, |c| c.sample_rate());
                        self.audio = Some(Track {
                            kind: TrackKind::Aac {
                                asc: body.to_vec(),
                                sample_rate: rate,
                                channels: config.map_or(2, |c| u16::from(c.channels)),
                            },
                            timescale: rate,
                            samples: Vec::new(),
                            last_duration: 1024,
                        });
                    }
                    return Ok(());
                }
                // Audio waits for the first video keyframe, so both start together.
                if self.audio.is_none() || (self.video.is_some() && self.first_video_ts.is_none()) {
                    return Ok(());
                }
                let (offset, size) = self.sample(body)?;
                let dts = self.audio_frames * 1024;
                self.audio_frames += 1;
                if let Some(a) = self.audio.as_mut() {
                    a.samples.push(Sample {
                        offset,
                        size,
                        dts,
                        cts: 0,
                        sync: true,
                    });
                }
            }
        }
        Ok(())
    }

    /// The finished MP4, written beside the spool; `None` when nothing was recorded.
    fn finish(mut self) -> std::io::Result<Option<(PathBuf, u64)>> {
        self.spool.flush()?;
        let mut tracks = Vec::new();
        if let Some(mut v) = self.video.take() {
            if let TrackKind::H264 { width, height, .. } = &mut v.kind {
                (*width, *height) = (self.width, self.height);
            }
            if !v.samples.is_empty() {
                tracks.push(v);
            }
        }
        if let Some(a) = self.audio.take() {
            if !a.samples.is_empty() {
                tracks.push(a);
            }
        }
        if tracks.is_empty() {
            let _ = std::fs::remove_file(&self.spool_path);
            return Ok(None);
        }
        let duration = mp4::duration_ms(&tracks);
        let out_path = self.spool_path.with_extension("mp4");
        let mut out = File::create(&out_path)?;
        out.write_all(&mp4::header(&tracks, self.written))?;
        let mut data = File::open(&self.spool_path)?;
        std::io::copy(&mut data, &mut out)?;
        out.sync_all()?;
        let _ = std::fs::remove_file(&self.spool_path);
        Ok(Some((out_path, duration)))
    }
}

/// Frames fed to a recorder at a time: how far a part may run past `record_max_frames`.
const FEED_FRAMES: usize = 1024;

/// Starts recording `channel`.
pub(crate) fn spawn(state: LiveState, channel: Arc<Channel>, config: RecordConfig) {
    let mut recorder = match Recorder::start(&config, &channel, None) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start a recording");
            return;
        }
    };
    let max_frames = state.config().record_max_frames.max(1);
    // Parts are stored one after another, in order, by one task (a few may wait for it; then
    // the recording waits, and lags rather than holds more).
    let (parts, mut to_store) = tokio::sync::mpsc::channel::<Recorder>(4);
    {
        let (state, channel, config) = (state.clone(), channel.clone(), config.clone());
        let underway = state.recording_began();
        tokio::spawn(async move {
            while let Some(part) = to_store.recv().await {
                store(state.clone(), channel.clone(), config.clone(), part).await;
            }
            drop(underway);
        });
    }
    tokio::spawn(async move {
        // After a lag (frames lost to the recording) it goes on from the next keyframe.
        let mut feed = Feed::new(channel.follow());
        while let FeedStep::Frames(frames) = feed.next(FEED_FRAMES).await {
            let mut frames: &[Arc<Frame>] = &frames;
            while !frames.is_empty() {
                // Spool writes are small and sequential; one blocking-pool hop per batch
                // keeps them off the async threads.
                let (mut rec, batch) = (recorder, frames.to_vec());
                let outcome = tokio::task::spawn_blocking(move || {
                    let taken = rec.feed_until_full(&batch, max_frames);
                    (rec, taken)
                })
                .await;
                let taken = match outcome {
                    Ok((rec, Ok(taken))) => {
                        recorder = rec;
                        taken
                    }
                    Ok((rec, Err(e))) => {
                        tracing::error!(app = %channel.app, stream = %channel.name, error = %e, "recording failed");
                        let _ = std::fs::remove_file(&rec.spool_path);
                        return;
                    }
                    Err(e) => {
                        tracing::error!(app = %channel.app, stream = %channel.name, error = %e, "recording task failed");
                        return;
                    }
                };
                frames = &frames[taken..];
                if !frames.is_empty() {
                    // This part is full: store it, and go on in the next from this frame.
                    let next = match Recorder::start(&config, &channel, Some(&recorder)) {
                        Ok(next) => next,
                        Err(e) => {
                            tracing::error!(error = %e, "cannot start the next part of a recording");
                            let _ = parts.send(recorder).await;
                            return;
                        }
                    };
                    let done = std::mem::replace(&mut recorder, next);
                    tracing::info!(app = %channel.app, stream = %channel.name, max_frames, "recording part full; storing it and going on in the next");
                    let _ = parts.send(done).await;
                }
            }
        }
        drop(feed);
        let _ = parts.send(recorder).await;
    });
}

/// Finishes a recording into an MP4 and stores it; one that cannot be stored stays on disk.
async fn store(state: LiveState, channel: Arc<Channel>, config: RecordConfig, recorder: Recorder) {
    let (started, part) = (recorder.started, recorder.part);
    let finished = tokio::task::spawn_blocking(move || recorder.finish()).await;
    let (path, duration_ms) = match finished {
        Ok(Ok(Some(done))) => done,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "could not finish a recording");
            return;
        }
        Err(_) => return,
    };
    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
    match config.store.upload_file(&path, |_| {}).await {
        Ok(uploaded) => {
            tracing::info!(app = %channel.app, stream = %channel.name, fileid = %uploaded.fileid, duration_ms, "recording stored");
            let recording = Recording {
                app: channel.app.clone(),
                stream: channel.name.clone(),
                fileid: uploaded.fileid,
                duration: duration_ms as f64 / 1000.0,
                size,
                started,
                part,
            };
            // The list is saved to disk: off the async threads.
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(list) = state.recordings() {
                    list.add(recording);
                }
                let _ = std::fs::remove_file(&path);
            })
            .await;
        }
        Err(e) => {
            // Kept on disk for an operator: a recording is never thrown away silently.
            tracing::error!(path = %path.display(), error = %e, "could not store a recording; it stays on disk");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn h264(key: bool, len: usize) -> Bytes {
        let mut p = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        p.extend_from_slice(&(len as u32).to_be_bytes());
        p.push(if key { 0x65 } else { 0x41 });
        p.extend(std::iter::repeat_n(0, len - 1));
        Bytes::from(p)
    }

    #[test]
    fn parts_end_at_keyframes_or_at_twice_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        let config = RecordConfig {
            dir: dir.path().to_owned(),
            store: Endpoint::new(Some("http://127.0.0.1:9"), &[], None).unwrap(),
        };
        let channel = crate::hub::Hub::default()
            .start("live", "cam", std::time::Duration::ZERO, Default::default())
            .unwrap();
        let header = Frame::new(
            1,
            FrameKind::Video,
            0,
            Bytes::from_static(&[
                0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 2, 0x67, 1, 1, 0, 1, 0x68,
            ]),
        );
        let frames: Vec<Arc<Frame>> = std::iter::once(header)
            .chain((0..100u32).map(|i| {
                Frame::new(
                    2 + u64::from(i),
                    FrameKind::Video,
                    i * 40,
                    h264(i % 25 == 0, 50),
                )
            }))
            .collect();
        let mut rec = Recorder::start(&config, &channel, None).unwrap();
        // A part of at least 15 frames: it ends before the keyframe at frame 25.
        assert_eq!(rec.feed_until_full(&frames, 15).unwrap(), 26);
        assert_eq!(rec.frames(), 25);
        let mut next = Recorder::start(&config, &channel, Some(&rec)).unwrap();
        assert!(frames[26].keyframe);
        assert_eq!(next.feed_until_full(&frames[26..], 15).unwrap(), 25);
        assert_eq!(
            next.frames(),
            25,
            "the next part starts whole, with its keyframe"
        );
        // Without keyframes a part still ends, at twice the limit.
        let p_frames: Vec<Arc<Frame>> = (0..100u32)
            .map(|i| {
                Frame::new(
                    500 + u64::from(i),
                    FrameKind::Video,
                    4000 + i * 40,
                    h264(false, 50),
                )
            })
            .collect();
        let mut last = Recorder::start(&config, &channel, Some(&next)).unwrap();
        last.feed(&frames[1]).unwrap();
        assert_eq!(last.feed_until_full(&p_frames, 15).unwrap(), 29);
        assert_eq!(last.frames(), 30);
    }
}
