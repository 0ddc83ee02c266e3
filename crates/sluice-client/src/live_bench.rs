//! `sluice bench live`, in the spirit of srs-bench: one publisher of a generated stream at a
//! set bitrate, and N lightweight players (RTMP, or HTTP-FLV) that only count bytes and
//! frames and measure publish-to-player latency. Works against any RTMP server (nginx-rtmp,
//! SRS), so the same run can measure them side by side.
//!
//! Every video frame carries the time it was sent (microseconds since the epoch, at bytes
//! 5-12 of its payload); a player's latency sample is its arrival time minus that.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use sluice_rtmp::amf0::Amf0;
use sluice_rtmp::{ChunkDecoder, Message};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LiveProtocol {
    Rtmp,
    Flv,
}

#[derive(Debug, Clone)]
pub struct LivePlan {
    /// `rtmp://host:port/app/stream`: where the publisher publishes (and RTMP players play).
    pub rtmp_url: String,
    /// For HTTP-FLV players: the stream's `.flv` URL.
    pub flv_url: Option<String>,
    pub protocol: LiveProtocol,
    pub players: usize,
    pub duration: Duration,
    /// Bits per second of the generated stream.
    pub bitrate: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LiveReport {
    pub protocol: LiveProtocol,
    pub players: usize,
    /// Players that received the stream.
    pub playing: usize,
    pub seconds: f64,
    pub bitrate: u64,
    pub frames_sent: u64,
    /// Video frames received, averaged over playing players.
    pub frames_per_player: f64,
    pub mbit_per_sec_total: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    pub first_error: Option<String>,
}

impl std::fmt::Display for LiveReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "live {:?}: {} of {} players receiving a {} kbit/s stream for {:.1} s",
            self.protocol,
            self.playing,
            self.players,
            self.bitrate / 1000,
            self.seconds
        )?;
        writeln!(
            f,
            "  frames sent {}, received per player {:.1}; {:.1} Mbit/s to players in all",
            self.frames_sent, self.frames_per_player, self.mbit_per_sec_total
        )?;
        write!(
            f,
            "  publish-to-player latency p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            self.latency_p50_ms, self.latency_p99_ms, self.latency_max_ms
        )?;
        if let Some(e) = &self.first_error {
            write!(f, "\n  first error: {e}")?;
        }
        Ok(())
    }
}

struct Target {
    addr: String,
    app: String,
    stream: String,
    tc_url: String,
}

fn parse_rtmp(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("rtmp://")
        .ok_or_else(|| format!("{url:?} is not an rtmp:// URL"))?;
    let mut parts = rest.splitn(3, '/');
    let host = parts.next().unwrap_or_default();
    let app = parts.next().unwrap_or_default();
    let stream = parts.next().unwrap_or_default();
    if host.is_empty() || app.is_empty() || stream.is_empty() {
        return Err(format!("{url:?}: want rtmp://host:port/app/stream"));
    }
    let addr = if host.contains(':') {
        host.to_owned()
    } else {
        format!("{host}:1935")
    };
    Ok(Target {
        addr,
        app: app.to_owned(),
        stream: stream.to_owned(),
        tc_url: format!("rtmp://{host}/{app}"),
    })
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// An RTMP connection, handshaken and connected to `app`.
struct RtmpClient {
    tcp: TcpStream,
    decoder: ChunkDecoder,
    out_chunk: u32,
    received: u64,
    acked: u64,
    window: u64,
}

impl RtmpClient {
    async fn connect(target: &Target) -> Result<Self, String> {
        let mut tcp = TcpStream::connect(&target.addr)
            .await
            .map_err(|e| format!("{}: {e}", target.addr))?;
        let _ = tcp.set_nodelay(true);
        let mut hello = vec![3u8];
        hello.extend((0..1536).map(|i| (i * 13) as u8));
        hello[1..9].fill(0);
        tcp.write_all(&hello).await.map_err(|e| e.to_string())?;
        let mut answer = vec![0u8; 1 + 2 * 1536];
        tcp.read_exact(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        // C2 echoes S1.
        tcp.write_all(&answer[1..1 + 1536])
            .await
            .map_err(|e| e.to_string())?;
        let mut c = Self {
            tcp,
            decoder: ChunkDecoder::new(16 << 20),
            out_chunk: 128,
            received: 0,
            acked: 0,
            window: 2_500_000,
        };
        c.send(&Message::command(
            0,
            &[
                Amf0::string("connect"),
                Amf0::Number(1.0),
                Amf0::object([
                    ("app", Amf0::string(&target.app)),
                    (
                        "flashVer",
                        Amf0::string("FMLE/3.0 (compatible; sluice-bench)"),
                    ),
                    ("tcUrl", Amf0::string(&target.tc_url)),
                    ("fpad", Amf0::Boolean(false)),
                    ("capabilities", Amf0::Number(15.0)),
                    ("audioCodecs", Amf0::Number(3191.0)),
                    ("videoCodecs", Amf0::Number(252.0)),
                    ("videoFunction", Amf0::Number(1.0)),
                ]),
            ],
        ))
        .await?;
        c.send(&Message::set_chunk_size(4096)).await?;
        c.out_chunk = 4096;
        c.send(&Message::command(
            0,
            &[Amf0::string("createStream"), Amf0::Number(2.0), Amf0::Null],
        ))
        .await?;
        Ok(c)
    }

    async fn send(&mut self, message: &Message) -> Result<(), String> {
        let mut out = BytesMut::new();
        sluice_rtmp::chunk::encode(message, self.out_chunk, &mut out);
        self.tcp.write_all(&out).await.map_err(|e| e.to_string())
    }

    /// The next message from the server (answering acknowledgement windows and pings).
    async fn next(&mut self, buf: &mut [u8]) -> Result<Message, String> {
        loop {
            if let Some(m) = self.decoder.next_message().map_err(|e| e.to_string())? {
                match m.type_id {
                    5 => {
                        if let Some(b) = m.payload.get(..4) {
                            self.window = u64::from(u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                        }
                    }
                    4 => {
                        if let Some(sluice_rtmp::UserControl::PingRequest(t)) =
                            sluice_rtmp::UserControl::parse(&m.payload)
                        {
                            self.send(&Message::user_control(
                                sluice_rtmp::UserControl::PingResponse(t),
                            ))
                            .await?;
                        }
                    }
                    _ => {}
                }
                return Ok(m);
            }
            let n = self.tcp.read(buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("the server closed the connection".into());
            }
            self.received += n as u64;
            if self.received - self.acked >= self.window / 2 {
                self.acked = self.received;
                self.send(&Message::acknowledgement(self.received as u32))
                    .await?;
            }
            self.decoder.push(&buf[..n]);
        }
    }

    /// Waits for an `onStatus` whose code starts with `prefix`.
    async fn wait_status(&mut self, buf: &mut [u8], want: &str) -> Result<(), String> {
        loop {
            let m = self.next(buf).await?;
            if let Ok(c) = sluice_rtmp::Command::parse(&m) {
                if c.name == "onStatus" {
                    let code = c
                        .args
                        .first()
                        .and_then(|o| o.get("code"))
                        .and_then(Amf0::as_str)
                        .unwrap_or_default()
                        .to_owned();
                    if code.starts_with(want) {
                        return Ok(());
                    }
                    if code.contains("Failed")
                        || code.contains("BadName")
                        || code.contains("NotFound")
                        || code.contains("Denied")
                    {
                        return Err(code);
                    }
                }
            }
        }
    }
}

/// The generated stream: 25 fps video (a keyframe every 2 s, eight times the size of the
/// others) and 43 audio frames per second, together at `bitrate`.
async fn publish(
    target: Target,
    bitrate: u64,
    until: Instant,
    sent: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut c = RtmpClient::connect(&target).await?;
    c.send(&Message::command(
        1,
        &[
            Amf0::string("publish"),
            Amf0::Number(3.0),
            Amf0::Null,
            Amf0::string(&target.stream),
            Amf0::string("live"),
        ],
    ))
    .await?;
    let mut buf = vec![0u8; 64 * 1024];
    c.wait_status(&mut buf, "NetStream.Publish.Start").await?;
    let audio_bytes = 200usize;
    let video_per_sec = (bitrate / 8)
        .saturating_sub(43 * audio_bytes as u64)
        .max(25 * 64);
    // 50 frames per 2 s: one keyframe of 8 units and 49 of 1.
    let unit = (video_per_sec * 2 / 57) as usize;
    let media = |csid: u32, type_id: u8, ts: u32, payload: Vec<u8>| Message {
        csid,
        timestamp: ts,
        type_id,
        stream_id: 1,
        payload: Bytes::from(payload),
    };
    c.send(&media(6, 9, 0, vec![0x17, 0, 0, 0, 0, 1, 0x42, 0, 0x1E]))
        .await?;
    c.send(&media(4, 8, 0, vec![0xAF, 0, 0x12, 0x10])).await?;
    let start = Instant::now();
    let mut frame = 0u64;
    let mut audio = 0u64;
    while Instant::now() < until {
        let video_due = start + Duration::from_millis(frame * 40);
        let audio_due = start + Duration::from_micros(audio * 23_220);
        if audio_due < video_due {
            tokio::time::sleep_until(audio_due.into()).await;
            let mut p = vec![0xAF, 1];
            p.resize(audio_bytes, 0x55);
            c.send(&media(4, 8, (audio * 23_220 / 1000) as u32, p))
                .await?;
            audio += 1;
            continue;
        }
        tokio::time::sleep_until(video_due.into()).await;
        let key = frame % 50 == 0;
        let mut p = vec![if key { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        p.extend_from_slice(&now_micros().to_be_bytes());
        p.resize(if key { unit * 8 } else { unit }.max(13), 0xAA);
        c.send(&media(6, 9, (frame * 40) as u32, p)).await?;
        sent.fetch_add(1, Ordering::Relaxed);
        frame += 1;
        // Drain what the server says (acknowledgements, pings) without waiting on it.
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::ZERO, c.tcp.read(&mut buf)).await {
            if n == 0 {
                return Err("the server closed the publisher".into());
            }
            c.decoder.push(&buf[..n]);
            while let Ok(Some(_)) = c.decoder.next_message() {}
        }
    }
    Ok(())
}

/// What one player saw.
struct PlayerTally {
    frames: u64,
    bytes: u64,
    latencies_us: Vec<u64>,
    /// When the player asked to play: frames sent before (the GOP a new player starts with)
    /// say nothing of latency.
    joined_us: u64,
}

impl PlayerTally {
    fn new() -> Self {
        Self {
            frames: 0,
            bytes: 0,
            latencies_us: Vec::new(),
            joined_us: now_micros(),
        }
    }

    fn video(&mut self, payload: &[u8]) {
        if payload.len() >= 13 && matches!(payload[0], 0x17 | 0x27) {
            self.frames += 1;
            let sent = u64::from_be_bytes(payload[5..13].try_into().unwrap_or([0; 8]));
            // Every third frame is enough for percentiles and keeps memory small; three is
            // prime to the frame and batch rhythms, so the samples fall at every phase.
            if sent >= self.joined_us && self.frames % 3 == 0 {
                self.latencies_us.push(now_micros().saturating_sub(sent));
            }
        }
    }
}

async fn play_rtmp(target: Arc<Target>, until: Instant) -> Result<PlayerTally, String> {
    let mut c = RtmpClient::connect(&target).await?;
    c.send(&Message::command(
        1,
        &[
            Amf0::string("play"),
            Amf0::Number(0.0),
            Amf0::Null,
            Amf0::string(&target.stream),
        ],
    ))
    .await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut tally = PlayerTally::new();
    loop {
        let m = match tokio::time::timeout_at(until.into(), c.next(&mut buf)).await {
            Err(_) => return Ok(tally),
            Ok(m) => m?,
        };
        tally.bytes += m.payload.len() as u64;
        if m.type_id == 9 {
            tally.video(&m.payload);
        }
    }
}

async fn play_flv(url: Arc<String>, until: Instant) -> Result<PlayerTally, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("the FLV URL must be http://")?;
    let (host, path) = rest.split_once('/').ok_or("the FLV URL has no path")?;
    let mut tcp = TcpStream::connect(host).await.map_err(|e| e.to_string())?;
    tcp.write_all(format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut tally = PlayerTally::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut data = BytesMut::new();
    let mut body_started = false;
    let mut chunk_left = 0usize;
    let mut flv = BytesMut::new();
    let mut flv_header_done = false;
    loop {
        let n = match tokio::time::timeout_at(until.into(), tcp.read(&mut buf)).await {
            Err(_) => return Ok(tally),
            Ok(Ok(0)) => return Ok(tally),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.to_string()),
        };
        tally.bytes += n as u64;
        data.extend_from_slice(&buf[..n]);
        if !body_started {
            let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if !data.starts_with(b"HTTP/1.1 200") {
                return Err(String::from_utf8_lossy(&data[..end.min(60)]).into_owned());
            }
            let _ = data.split_to(end + 4);
            body_started = true;
        }
        // Chunked transfer coding: move chunk bodies into `flv`.
        loop {
            if chunk_left > 0 {
                let take = chunk_left.min(data.len());
                flv.extend_from_slice(&data.split_to(take));
                chunk_left -= take;
                if chunk_left > 0 {
                    break;
                }
                continue;
            }
            let Some(line) = data.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            if line == 0 {
                let _ = data.split_to(2);
                continue;
            }
            let size = usize::from_str_radix(&String::from_utf8_lossy(&data[..line]), 16)
                .map_err(|_| "bad chunked encoding")?;
            let _ = data.split_to(line + 2);
            if size == 0 {
                return Ok(tally);
            }
            chunk_left = size;
        }
        if !flv_header_done && flv.len() >= 13 {
            let _ = flv.split_to(13);
            flv_header_done = true;
        }
        while flv_header_done && flv.len() >= 11 {
            let size =
                (usize::from(flv[1]) << 16) | (usize::from(flv[2]) << 8) | usize::from(flv[3]);
            if flv.len() < 15 + size {
                break;
            }
            let tag = flv.split_to(15 + size);
            if tag[0] == 9 {
                tally.video(&tag[11..11 + size]);
            }
        }
    }
}

pub async fn run(plan: &LivePlan) -> Result<LiveReport, String> {
    let target = parse_rtmp(&plan.rtmp_url)?;
    let started = Instant::now();
    let warmup = Duration::from_secs(2);
    let until = started + warmup + plan.duration;
    let sent = Arc::new(AtomicU64::new(0));
    // The publisher outlives the players, so none of them sees the stream end.
    let publisher = tokio::spawn(publish(
        parse_rtmp(&plan.rtmp_url)?,
        plan.bitrate,
        until + Duration::from_secs(1),
        sent.clone(),
    ));
    // Let the stream begin (and its first keyframe arrive) before players join.
    tokio::time::sleep(warmup).await;
    if publisher.is_finished() {
        return Err(match publisher.await {
            Ok(Err(e)) => format!("publisher: {e}"),
            _ => "publisher ended early".into(),
        });
    }
    let target = Arc::new(target);
    let flv_url = Arc::new(plan.flv_url.clone().unwrap_or_default());
    let players: Vec<_> = (0..plan.players)
        .map(|_| {
            let (target, flv_url) = (target.clone(), flv_url.clone());
            let protocol = plan.protocol;
            tokio::spawn(async move {
                match protocol {
                    LiveProtocol::Rtmp => play_rtmp(target, until).await,
                    LiveProtocol::Flv => play_flv(flv_url, until).await,
                }
            })
        })
        .collect();
    let play_started = Instant::now();
    let mut tallies = Vec::new();
    let mut first_error = None;
    for p in players {
        match p.await {
            Ok(Ok(t)) => tallies.push(t),
            Ok(Err(e)) => {
                if std::env::var_os("SLUICE_BENCH_DEBUG").is_some() {
                    eprintln!("player: {e}");
                }
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let seconds = play_started.elapsed().as_secs_f64();
    if let Ok(Err(e)) = publisher.await {
        first_error.get_or_insert(format!("publisher: {e}"));
    }
    let playing: Vec<&PlayerTally> = tallies.iter().filter(|t| t.frames > 0).collect();
    let mut latencies: Vec<u64> = playing
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    latencies.sort_unstable();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() - 1) as f64 * p).round() as usize;
        latencies[i] as f64 / 1000.0
    };
    let bytes: u64 = tallies.iter().map(|t| t.bytes).sum();
    Ok(LiveReport {
        protocol: plan.protocol,
        players: plan.players,
        playing: playing.len(),
        seconds,
        bitrate: plan.bitrate,
        frames_sent: sent.load(Ordering::Relaxed),
        frames_per_player: if playing.is_empty() {
            0.0
        } else {
            playing.iter().map(|t| t.frames as f64).sum::<f64>() / playing.len() as f64
        },
        mbit_per_sec_total: bytes as f64 * 8.0 / seconds.max(1e-9) / 1e6,
        latency_p50_ms: pct(0.5),
        latency_p99_ms: pct(0.99),
        latency_max_ms: latencies.last().map_or(0.0, |l| *l as f64 / 1000.0),
        first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtmp_urls() {
        let t = parse_rtmp("rtmp://127.0.0.1:1936/live/cam").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.app.as_str(), t.stream.as_str()),
            ("127.0.0.1:1936", "live", "cam")
        );
        assert_eq!(parse_rtmp("rtmp://h/live/x").unwrap().addr, "h:1935");
        assert!(parse_rtmp("http://h/live/x").is_err());
        assert!(parse_rtmp("rtmp://h/live").is_err());
    }
}
