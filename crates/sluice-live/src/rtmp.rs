//! RTMP connections: one task each, reading into the pure session and writing its answers,
//! the publisher's frames into the hub, and (for a player) the stream's frames out in
//! batches.

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_rtmp::{Event, ServerSession, SessionConfig};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::hub::{Channel, Feed, FeedStep, FrameKind, ended, metadata_payload};

use crate::{CHUNK_SIZE, LiveState};

/// Frames written to a player in one go, at most (several batches, when it is behind).
const BATCH_FRAMES: usize = 256;
/// A timestamp this far behind the previous one of the same kind is a broken publisher.
const MAX_BACKWARDS_MS: u32 = 1000;

pub(crate) async fn serve(
    listener: TcpListener,
    state: LiveState,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(state.config().max_connections.max(1)));
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "RTMP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "RTMP connection limit reached; refusing a connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let (state, stopped) = (state.clone(), stopped.clone());
        tokio::spawn(async move {
            // Its streams end when it drops, however the connection ends (a panic included).
            let mut connection = Connection::new(state, peer, seed);
            match connection.run(stream, stopped).await {
                Err(why) => tracing::info!(%peer, %why, "RTMP connection closed"),
                Ok(how) => tracing::debug!(%peer, how, "RTMP connection ended"),
            }
            drop(connection);
            drop(permit);
        });
    }
    let _ = stop.send(true);
    // Every connection ends (and with a publisher, its stream), and every recording of an
    // ended stream is stored, before the listener's work is done: shutdown waits for this
    // while the HTTP side still serves.
    let all = u32::try_from(state.config().max_connections.max(1)).unwrap_or(u32::MAX);
    let _ = permits.acquire_many(all).await;
    state.recordings_stored().await;
    let list = state.clone();
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(recordings) = list.recordings() {
            recordings.flush();
        }
    })
    .await;
    Ok(())
}

/// One RTMP player: its message stream and its position in the stream.
struct Playing {
    stream_id: u32,
    feed: Feed,
}

/// Bytes per second over the last few seconds, for flood detection.
struct IngestRate {
    window_start: Instant,
    bytes: u64,
}

struct Connection {
    state: LiveState,
    peer: SocketAddr,
    session: ServerSession,
    app: String,
    publishing: HashMap<u32, Published>,
    rate: IngestRate,
}

/// What an event asks of the connection's play side.
enum PlayChange {
    Start(Playing),
    Stop,
}

struct Published {
    channel: Arc<Channel>,
    last_audio: Option<u32>,
    last_video: Option<u32>,
}

impl Connection {
    fn new(state: LiveState, peer: SocketAddr, seed: u64) -> Self {
        let config = SessionConfig {
            max_message: state.config().max_message,
            chunk_size: CHUNK_SIZE,
            window_ack: 2_500_000,
        };
        Self {
            state,
            peer,
            session: ServerSession::new(config, seed),
            app: String::new(),
            publishing: HashMap::new(),
            rate: IngestRate {
                window_start: Instant::now(),
                bytes: 0,
            },
        }
    }

    async fn run(
        &mut self,
        stream: TcpStream,
        mut stopped: watch::Receiver<bool>,
    ) -> Result<&'static str, String> {
        let (mut reader, mut writer) = stream.into_split();
        let mut buf = vec![0u8; 64 * 1024];
        let idle = self.state.config().idle_timeout;
        let stall = self.state.config().player_stall_timeout;
        let mut playing: Option<Playing> = None;
        loop {
            let next_frames = async {
                match playing.as_mut() {
                    Some(p) => p.feed.next(BATCH_FRAMES).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                read = tokio::time::timeout(idle, reader.read(&mut buf)) => {
                    let n = match read {
                        // Players may say nothing for long; publishers and handshakes may not.
                        Err(_) if playing.is_some() && self.publishing.is_empty() => continue,
                        Err(_) => return Err(format!("nothing received for {idle:?}")),
                        Ok(Ok(0)) => return Ok("the peer closed"),
                        Ok(Err(e)) => return Err(e.to_string()),
                        Ok(Ok(n)) => n,
                    };
                    self.check_rate(n)?;
                    let events = self.session.push(&buf[..n]).map_err(|e| e.to_string())?;
                    for event in events {
                        // The publish and play hooks: only this connection waits on them.
                        if let Some(refusal) = self.ask_hook(&event, self.peer).await {
                            match event {
                                Event::Publish { stream_id, .. } => self.session.refuse_publish(stream_id, "NetStream.Publish.Denied", &refusal),
                                Event::Play { stream_id, .. } => self.session.refuse_play(stream_id, "NetStream.Play.Failed", &refusal),
                                _ => {}
                            }
                            tracing::info!(peer = %self.peer, app = %self.app, %refusal, "refused by hook");
                            continue;
                        }
                        match self.handle(event)? {
                            Some(PlayChange::Start(p)) => playing = Some(p),
                            Some(PlayChange::Stop) => playing = None,
                            None => {}
                        }
                    }
                    self.flush_session(&mut writer).await?;
                }
                step = next_frames => match step {
                    FeedStep::Frames(frames) => {
                        let stream_id = playing.as_ref().map_or(1, |p| p.stream_id);
                        let chunk = self.session.out_chunk_size();
                        let parts: Vec<Bytes> = frames.iter().map(|f| f.rtmp_bytes(stream_id, chunk)).collect();
                        // A player whose socket takes nothing for this long is gone.
                        tokio::time::timeout(stall, write_all_vectored(&mut writer, &parts))
                            .await
                            .map_err(|_| "player stalled; dropped".to_owned())?
                            .map_err(|e| e.to_string())?;
                    }
                    FeedStep::Ended => {
                        if let Some(p) = playing.take() {
                            self.session.end_play(p.stream_id);
                        }
                        self.flush_session(&mut writer).await?;
                        return Ok("the stream ended");
                    }
                    FeedStep::TooSlow => return Err("player too slow; dropped".into()),
                },
                () = ended(&mut stopped) => return Ok("shutdown"),
            }
        }
    }

    async fn flush_session(
        &mut self,
        writer: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), String> {
        if self.session.has_output() {
            let out = self.session.take_output();
            writer.write_all(&out).await.map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn check_rate(&mut self, n: usize) -> Result<(), String> {
        if self.publishing.is_empty() {
            return Ok(());
        }
        self.rate.bytes += n as u64;
        let elapsed = self.rate.window_start.elapsed();
        // Judged over at least a second (a keyframe may arrive in a burst), at most three.
        if elapsed >= Duration::from_secs(1) {
            let per_sec = self.rate.bytes as f64 / elapsed.as_secs_f64();
            if per_sec > self.state.config().max_ingest_rate as f64 {
                return Err(format!(
                    "publisher flooding at {per_sec:.0} B/s (limit {})",
                    self.state.config().max_ingest_rate
                ));
            }
            if elapsed >= Duration::from_secs(3) {
                self.rate.window_start = Instant::now();
                self.rate.bytes = 0;
            }
        }
        Ok(())
    }

    /// Checks an app and stream name; `Ok((stream, query))`.
    fn split_name<'n>(&self, name: &'n str) -> Result<(&'n str, Option<&'n str>), &'static str> {
        let (stream, query) = match name.split_once('?') {
            Some((s, q)) => (s, Some(q)),
            None => (name, None),
        };
        let valid = |s: &str| {
            !s.is_empty()
                && s.len() <= 128
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !valid(stream) || !valid(&self.app) {
            return Err("app and stream names are letters, digits, '-', '_' and '.'");
        }
        Ok((stream, query))
    }

    /// A play: with URL secrets, the name must carry a play link's signature.
    fn authorise_play(&self, name: &str) -> Result<String, &'static str> {
        let (stream, query) = self.split_name(name)?;
        if let Some(secrets) = &self.state.config().access.url_secret {
            let path = format!("/{}/{stream}", self.app);
            sluice_proto::signature::verify_download(
                secrets,
                &path,
                query,
                sluice_http::access::now_unix(),
            )
            .map_err(|_| "the stream name needs a valid signature")?;
        }
        Ok(stream.to_owned())
    }

    /// A publish needs its own credential, never a viewer's play link: with API tokens, a
    /// publish link signed with one (`sluice sign --publish`); with only a URL secret, the
    /// on_publish hook's word (it was asked before this); with neither, nothing.
    fn authorise_publish(&self, name: &str) -> Result<String, &'static str> {
        let (stream, query) = self.split_name(name)?;
        let config = self.state.config();
        match (&config.access.api_tokens, &config.access.url_secret) {
            (Some(tokens), _) => {
                let path = format!("/{}/{stream}", self.app);
                sluice_proto::signature::verify_publish(
                    tokens,
                    &path,
                    query,
                    sluice_http::access::now_unix(),
                )
                .map_err(|_| "publishing needs a publish link signed with the API token")?;
            }
            (None, Some(_)) if config.on_publish.is_none() => {
                return Err(
                    "publishing is closed: SLUICE_URL_SECRET is set without SLUICE_API_TOKEN or an on_publish hook",
                );
            }
            _ => {}
        }
        Ok(stream.to_owned())
    }

    fn handle(&mut self, event: Event) -> Result<Option<PlayChange>, String> {
        match event {
            Event::Connect { app, .. } => self.app = app,
            Event::Publish { stream_id, name } => {
                let stream = match self.authorise_publish(&name) {
                    Ok(s) => s,
                    Err(why) => {
                        self.session
                            .refuse_publish(stream_id, "NetStream.Publish.Denied", why);
                        tracing::warn!(peer = %self.peer, app = %self.app, why, "publish refused");
                        return Ok(None);
                    }
                };
                match self.state.hub().start(
                    &self.app,
                    &stream,
                    self.state.config().merge,
                    self.state.config().stream_limits,
                ) {
                    None => {
                        self.session.refuse_publish(
                            stream_id,
                            "NetStream.Publish.BadName",
                            "this stream already has a publisher",
                        );
                        tracing::info!(peer = %self.peer, app = %self.app, %stream, "second publisher refused");
                    }
                    Some(channel) => {
                        tracing::info!(peer = %self.peer, app = %self.app, %stream, "publishing");
                        crate::hls::spawn(self.state.clone(), channel.clone());
                        if let Some(record) = self.state.record_config() {
                            crate::record::spawn(
                                self.state.clone(),
                                channel.clone(),
                                record.clone(),
                            );
                        }
                        self.session.accept_publish(stream_id, &stream);
                        let replaced = self.publishing.insert(
                            stream_id,
                            Published {
                                channel,
                                last_audio: None,
                                last_video: None,
                            },
                        );
                        // The session allows one publish per stream id; should another ever
                        // get here, the stream it replaces still ends and frees its name.
                        if let Some(old) = replaced {
                            self.state.hub().stop(&old.channel);
                        }
                        self.rate.window_start = Instant::now();
                        self.rate.bytes = 0;
                    }
                }
            }
            Event::Metadata { stream_id, values } => {
                if let Some(p) = self.publishing.get(&stream_id) {
                    p.channel.publish(
                        FrameKind::Data,
                        0,
                        metadata_payload(&values),
                        self.immediate(),
                    );
                }
            }
            Event::Media(message) => {
                let Some(p) = self.publishing.get_mut(&message.stream_id) else {
                    return Ok(None);
                };
                let (kind, last) = if message.type_id == 8 {
                    (FrameKind::Audio, &mut p.last_audio)
                } else {
                    (FrameKind::Video, &mut p.last_video)
                };
                if let Some(prev) = *last {
                    if message.timestamp.saturating_add(MAX_BACKWARDS_MS) < prev {
                        return Err(format!(
                            "timestamps jump back from {prev} to {} ms",
                            message.timestamp
                        ));
                    }
                }
                *last = Some(message.timestamp);
                let immediate = self.state.config().merge.is_zero();
                p.channel
                    .publish(kind, message.timestamp, message.payload, immediate);
            }
            Event::Unpublish { stream_id } => {
                if let Some(p) = self.publishing.remove(&stream_id) {
                    tracing::info!(app = %p.channel.app, stream = %p.channel.name, "unpublished");
                    self.state.hub().stop(&p.channel);
                }
            }
            Event::Play { stream_id, name } => {
                let stream = match self.authorise_play(&name) {
                    Ok(s) => s,
                    Err(why) => {
                        self.session
                            .refuse_play(stream_id, "NetStream.Play.Failed", why);
                        return Ok(None);
                    }
                };
                match self.state.hub().get(&self.app, &stream) {
                    None => self.session.refuse_play(
                        stream_id,
                        "NetStream.Play.StreamNotFound",
                        "no such live stream",
                    ),
                    Some(channel) => {
                        self.session.accept_play(stream_id, &stream);
                        return Ok(Some(PlayChange::Start(Playing {
                            stream_id,
                            feed: Feed::new(channel.subscribe()),
                        })));
                    }
                }
            }
            Event::StopPlay { .. } => return Ok(Some(PlayChange::Stop)),
        }
        Ok(None)
    }

    /// Asks the configured on_publish/on_play URL about a publish or play: `Some(reason)`
    /// refuses it. Any answer but 2xx, or none within the hook timeout, refuses.
    async fn ask_hook(&self, event: &Event, peer: SocketAddr) -> Option<String> {
        let config = self.state.config();
        let (action, name, url) = match event {
            Event::Publish { name, .. } => ("publish", name, config.on_publish.as_ref()?),
            Event::Play { name, .. } => ("play", name, config.on_play.as_ref()?),
            _ => return None,
        };
        let (stream, query) = name.split_once('?').unwrap_or((name.as_str(), ""));
        let body = serde_json::json!({
            "action": action,
            "app": self.app,
            "stream": stream,
            "query": query,
            "client": peer.ip().to_string(),
        });
        let ask = self.state.hook_client().post(url).json(&body).send();
        match tokio::time::timeout(config.hook_timeout, ask).await {
            Ok(Ok(r)) if r.status().is_success() => None,
            Ok(Ok(r)) => Some(format!("the {action} hook answered {}", r.status())),
            Ok(Err(e)) => Some(format!("the {action} hook failed: {e}")),
            Err(_) => Some(format!(
                "the {action} hook did not answer within {:?}",
                config.hook_timeout
            )),
        }
    }

    fn immediate(&self) -> bool {
        self.state.config().merge.is_zero()
    }
}

/// A publisher that leaves, however it leaves, ends its streams and frees their names.
impl Drop for Connection {
    fn drop(&mut self) {
        for (_, p) in self.publishing.drain() {
            tracing::info!(app = %p.channel.app, stream = %p.channel.name, "publisher gone");
            self.state.hub().stop(&p.channel);
        }
    }
}

/// Writes every part, in as few system calls as the socket allows.
pub(crate) async fn write_all_vectored(
    writer: &mut (impl AsyncWrite + Unpin),
    parts: &[Bytes],
) -> std::io::Result<()> {
    let mut index = 0;
    let mut offset = 0;
    while index < parts.len() {
        let slices: Vec<IoSlice<'_>> = std::iter::once(IoSlice::new(&parts[index][offset..]))
            .chain(parts[index + 1..].iter().map(|p| IoSlice::new(p)))
            .take(64)
            .collect();
        let mut written = writer.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while index < parts.len() && written > 0 {
            let left = parts[index].len() - offset;
            if written >= left {
                written -= left;
                index += 1;
                offset = 0;
            } else {
                offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}
