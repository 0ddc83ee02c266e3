//! The server side of one RTMP connection, as a state machine: bytes in, events and bytes to
//! send out. It does the handshake, the chunk stream, acknowledgements, pings and the
//! NetConnection/NetStream commands (connect, releaseStream, FCPublish, createStream,
//! publish, play, FCUnpublish, deleteStream, closeStream) with their `_result` and `onStatus`
//! answers; what a publish or play is allowed to do is the caller's decision
//! ([`ServerSession::accept_publish`] and friends).

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use crate::amf0::{self, Amf0};
use crate::chunk::{ChunkDecoder, ChunkError, encode};
use crate::handshake::{HandshakeError, ServerHandshake};
use crate::message::{Command, Message, MessageType, UserControl};

#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Longest message accepted from the peer.
    pub max_message: u32,
    /// The chunk size we send with (announced right after connect).
    pub chunk_size: u32,
    /// Window acknowledgement size we announce, and the peer bandwidth we set.
    pub window_ack: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            max_message: 8 << 20,
            chunk_size: 4096,
            window_ack: 2_500_000,
        }
    }
}

/// What the peer did that the server has to act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connect {
        app: String,
        tc_url: Option<String>,
    },
    /// `name` is as sent, query (signature) included.
    Publish {
        stream_id: u32,
        name: String,
    },
    Play {
        stream_id: u32,
        name: String,
    },
    /// The publisher of `stream_id` stopped (FCUnpublish, deleteStream, closeStream).
    Unpublish {
        stream_id: u32,
    },
    /// A player of `stream_id` stopped.
    StopPlay {
        stream_id: u32,
    },
    /// `@setDataFrame onMetaData {...}` (or a bare `onMetaData`): the values from
    /// `onMetaData` on, as players should receive them.
    Metadata {
        stream_id: u32,
        values: Vec<Amf0>,
    },
    /// Audio or video.
    Media(Message),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("chunk stream: {0}")]
    Chunk(#[from] ChunkError),
    #[error("{0}")]
    Protocol(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Created,
    /// A publish was asked for and not yet answered: media may already follow (a client need
    /// not wait for NetStream.Publish.Start), for the server to keep or drop.
    PublishAsked,
    Publishing,
    Playing,
}

pub struct ServerSession {
    config: SessionConfig,
    handshake: Option<ServerHandshake>,
    decoder: ChunkDecoder,
    out: BytesMut,
    out_chunk_size: u32,
    /// The peer's window: acknowledge each time this many more bytes have arrived.
    peer_window: u32,
    received: u64,
    acked: u64,
    connected: bool,
    streams: HashMap<u32, Role>,
    next_stream_id: u32,
}

/// Streams one connection may create.
const MAX_STREAMS: usize = 16;
/// Longest message before the connection publishes (connect and other commands are a few
/// KB): a connection that has proved nothing holds little, however many there are.
pub const MAX_MESSAGE_BEFORE_PUBLISH: u32 = 64 << 10;

impl ServerSession {
    pub fn new(config: SessionConfig, seed: u64) -> Self {
        Self {
            decoder: ChunkDecoder::new(config.max_message.min(MAX_MESSAGE_BEFORE_PUBLISH)),
            config,
            handshake: Some(ServerHandshake::new(seed)),
            out: BytesMut::new(),
            out_chunk_size: crate::chunk::DEFAULT_CHUNK_SIZE,
            peer_window: 0,
            received: 0,
            acked: 0,
            connected: false,
            streams: HashMap::new(),
            next_stream_id: 1,
        }
    }

    /// Bytes to send now (handshake answers, command replies, acknowledgements).
    pub fn take_output(&mut self) -> Bytes {
        self.out.split().freeze()
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// The chunk size our messages to this peer use.
    pub fn out_chunk_size(&self) -> u32 {
        self.out_chunk_size
    }

    pub fn handshake_done(&self) -> bool {
        self.handshake.is_none()
    }

    fn send(&mut self, message: Message) {
        encode(&message, self.out_chunk_size, &mut self.out);
    }

    /// Feeds bytes from the peer.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Event>, SessionError> {
        let mut events = Vec::new();
        let data = match &mut self.handshake {
            Some(hs) => {
                let step = hs.push(data)?;
                self.out.extend_from_slice(&step.send);
                match step.done {
                    None => return Ok(events),
                    Some(rest) => {
                        self.handshake = None;
                        rest
                    }
                }
            }
            None => data.to_vec(),
        };
        self.received += data.len() as u64;
        self.decoder.push(&data);
        while let Some(message) = self.decoder.next_message()? {
            self.handle(message, &mut events)?;
        }
        if self.peer_window > 0 && self.received - self.acked >= u64::from(self.peer_window) {
            self.acked = self.received;
            self.send(Message::acknowledgement(self.received as u32));
        }
        Ok(events)
    }

    fn handle(&mut self, message: Message, events: &mut Vec<Event>) -> Result<(), SessionError> {
        match message.kind() {
            Some(MessageType::WindowAckSize) => {
                if let Some(b) = message.payload.get(..4) {
                    self.peer_window = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            Some(MessageType::UserControl) => {
                if let Some(UserControl::PingRequest(t)) = UserControl::parse(&message.payload) {
                    self.send(Message::user_control(UserControl::PingResponse(t)));
                }
            }
            Some(MessageType::CommandAmf0 | MessageType::CommandAmf3) => {
                let command =
                    Command::parse(&message).map_err(|e| SessionError::Protocol(e.to_string()))?;
                self.command(&message, command, events)?;
            }
            Some(MessageType::DataAmf0 | MessageType::DataAmf3) => {
                let payload = match message.kind() {
                    Some(MessageType::DataAmf3) => message.payload.get(1..).unwrap_or_default(),
                    _ => &message.payload[..],
                };
                // Metadata that does not parse is dropped, not fatal: players do without.
                if let Ok(mut values) = amf0::decode_all(payload) {
                    if values.first().and_then(Amf0::as_str) == Some("@setDataFrame") {
                        values.remove(0);
                    }
                    if values.first().and_then(Amf0::as_str) == Some("onMetaData") {
                        events.push(Event::Metadata {
                            stream_id: message.stream_id,
                            values,
                        });
                    }
                }
            }
            Some(MessageType::Audio | MessageType::Video) => {
                if !matches!(
                    self.streams.get(&message.stream_id),
                    Some(Role::Publishing | Role::PublishAsked)
                ) {
                    return Err(SessionError::Protocol(format!(
                        "media on stream {} which is not publishing",
                        message.stream_id
                    )));
                }
                events.push(Event::Media(message));
            }
            // Acknowledgements, bandwidth, chunk size and abort (applied by the decoder), and
            // what we do not use.
            _ => {}
        }
        Ok(())
    }

    fn result(&mut self, transaction: f64, values: Vec<Amf0>) {
        if transaction == 0.0 {
            return;
        }
        let mut all = vec![Amf0::string("_result"), Amf0::Number(transaction)];
        all.extend(values);
        self.send(Message::command(0, &all));
    }

    fn command(
        &mut self,
        message: &Message,
        command: Command,
        events: &mut Vec<Event>,
    ) -> Result<(), SessionError> {
        let stream_id = message.stream_id;
        let first_string = || {
            command
                .args
                .first()
                .and_then(Amf0::as_str)
                .map(str::to_owned)
        };
        match command.name.as_str() {
            "connect" => {
                let app = command
                    .object
                    .get("app")
                    .and_then(Amf0::as_str)
                    .unwrap_or_default()
                    .trim_matches('/')
                    .to_owned();
                let tc_url = command
                    .object
                    .get("tcUrl")
                    .and_then(Amf0::as_str)
                    .map(str::to_owned);
                self.send(Message::window_ack_size(self.config.window_ack));
                self.send(Message::set_peer_bandwidth(self.config.window_ack));
                self.send(Message::set_chunk_size(self.config.chunk_size));
                self.out_chunk_size = self.config.chunk_size;
                self.result(
                    command.transaction,
                    vec![
                        Amf0::object([
                            ("fmsVer", Amf0::string("FMS/3,0,1,123")),
                            ("capabilities", Amf0::Number(31.0)),
                        ]),
                        Amf0::object([
                            ("level", Amf0::string("status")),
                            ("code", Amf0::string("NetConnection.Connect.Success")),
                            ("description", Amf0::string("Connection succeeded.")),
                            ("objectEncoding", Amf0::Number(0.0)),
                        ]),
                    ],
                );
                self.connected = true;
                events.push(Event::Connect { app, tc_url });
            }
            _ if !self.connected => {
                return Err(SessionError::Protocol(format!(
                    "{} before connect",
                    command.name
                )));
            }
            "createStream" => {
                if self.streams.len() >= MAX_STREAMS {
                    return Err(SessionError::Protocol("too many streams".into()));
                }
                let id = self.next_stream_id;
                self.next_stream_id += 1;
                self.streams.insert(id, Role::Created);
                self.result(
                    command.transaction,
                    vec![Amf0::Null, Amf0::Number(f64::from(id))],
                );
            }
            "releaseStream" | "FCPublish" | "getStreamLength" | "_checkbw" => {
                self.result(command.transaction, vec![Amf0::Null, Amf0::Undefined]);
            }
            "publish" => {
                let name = first_string()
                    .ok_or_else(|| SessionError::Protocol("publish without a name".into()))?;
                match self.streams.get(&stream_id) {
                    None => {
                        return Err(SessionError::Protocol(format!(
                            "publish on unknown stream {stream_id}"
                        )));
                    }
                    Some(Role::Created) => {
                        self.streams.insert(stream_id, Role::PublishAsked);
                        events.push(Event::Publish { stream_id, name });
                    }
                    // One publish per stream id: a second would orphan the first stream.
                    Some(_) => self.on_status(
                        stream_id,
                        "error",
                        "NetStream.Publish.BadName",
                        "this stream id is already publishing or playing; create another stream",
                    ),
                }
            }
            "play" => {
                let name = first_string()
                    .ok_or_else(|| SessionError::Protocol("play without a name".into()))?;
                match self.streams.get(&stream_id) {
                    None => {
                        return Err(SessionError::Protocol(format!(
                            "play on unknown stream {stream_id}"
                        )));
                    }
                    // A stream id plays or publishes, never both: playing on a publishing one
                    // would hide its publish from every later command.
                    Some(Role::Publishing | Role::PublishAsked) => self.on_status(
                        stream_id,
                        "error",
                        "NetStream.Play.Failed",
                        "this stream id is publishing; create another stream to play",
                    ),
                    Some(Role::Created | Role::Playing) => {
                        events.push(Event::Play { stream_id, name })
                    }
                }
            }
            "FCUnpublish" | "deleteStream" | "closeStream" => {
                // deleteStream names its stream in an argument; the others act on the
                // publishing stream of this connection.
                let target = match command.name.as_str() {
                    "deleteStream" => command
                        .args
                        .first()
                        .and_then(Amf0::as_number)
                        .map(|n| n as u32),
                    "closeStream" => Some(stream_id),
                    _ => self
                        .streams
                        .iter()
                        .find(|(_, r)| matches!(r, Role::Publishing | Role::PublishAsked))
                        .map(|(id, _)| *id),
                };
                if let Some(id) = target {
                    match self.streams.get(&id) {
                        Some(Role::Publishing | Role::PublishAsked) => {
                            events.push(Event::Unpublish { stream_id: id })
                        }
                        Some(Role::Playing) => events.push(Event::StopPlay { stream_id: id }),
                        _ => {}
                    }
                    if command.name == "deleteStream" {
                        self.streams.remove(&id);
                    } else {
                        self.streams.insert(id, Role::Created);
                    }
                }
                if command.name == "FCUnpublish" {
                    self.result(command.transaction, vec![Amf0::Null, Amf0::Undefined]);
                }
            }
            // Anything else (receiveAudio, pause, ...) is acknowledged if it asks for a result.
            _ => self.result(command.transaction, vec![Amf0::Null, Amf0::Undefined]),
        }
        Ok(())
    }

    fn on_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.send(Message::command(
            stream_id,
            &[
                Amf0::string("onStatus"),
                Amf0::Number(0.0),
                Amf0::Null,
                Amf0::object([
                    ("level", Amf0::string(level)),
                    ("code", Amf0::string(code)),
                    ("description", Amf0::string(description)),
                ]),
            ],
        ));
    }

    pub fn accept_publish(&mut self, stream_id: u32, name: &str) {
        self.streams.insert(stream_id, Role::Publishing);
        // A publisher's frames may be as large as the config allows.
        self.decoder.set_max_message(self.config.max_message);
        self.send(Message::user_control(UserControl::StreamBegin(stream_id)));
        self.on_status(
            stream_id,
            "status",
            "NetStream.Publish.Start",
            &format!("{name} is now published."),
        );
    }

    /// `code`: `NetStream.Publish.BadName` (taken), `NetStream.Publish.Denied` (auth)...
    pub fn refuse_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        if self.streams.get(&stream_id) == Some(&Role::PublishAsked) {
            self.streams.insert(stream_id, Role::Created);
        }
        self.on_status(stream_id, "error", code, description);
    }

    pub fn accept_play(&mut self, stream_id: u32, name: &str) {
        self.streams.insert(stream_id, Role::Playing);
        self.send(Message::user_control(UserControl::StreamIsRecorded(
            stream_id,
        )));
        self.send(Message::user_control(UserControl::StreamBegin(stream_id)));
        self.on_status(
            stream_id,
            "status",
            "NetStream.Play.Reset",
            &format!("Playing and resetting {name}."),
        );
        self.on_status(
            stream_id,
            "status",
            "NetStream.Play.Start",
            &format!("Started playing {name}."),
        );
        self.send(Message::data(
            stream_id,
            0,
            &[
                Amf0::string("|RtmpSampleAccess"),
                Amf0::Boolean(true),
                Amf0::Boolean(true),
            ],
        ));
    }

    pub fn refuse_play(&mut self, stream_id: u32, code: &str, description: &str) {
        self.on_status(stream_id, "error", code, description);
    }

    /// Tells a player its stream ended.
    pub fn end_play(&mut self, stream_id: u32) {
        self.on_status(
            stream_id,
            "status",
            "NetStream.Play.UnpublishNotify",
            "The stream ended.",
        );
        self.send(Message::user_control(UserControl::StreamEof(stream_id)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkDecoder;

    /// A client in bytes: the handshake, then commands as chunks of 128.
    struct Client {
        out: BytesMut,
        decoder: ChunkDecoder,
    }

    impl Client {
        fn new() -> Self {
            let mut out = BytesMut::new();
            out.extend_from_slice(&[3]);
            out.extend_from_slice(&vec![7u8; 1536]);
            out.extend_from_slice(&vec![0u8; 1536]);
            Self {
                out,
                decoder: ChunkDecoder::new(1 << 20),
            }
        }

        /// A client that has connected to app `live` and created stream 1.
        fn with_stream() -> Self {
            let mut c = Self::new();
            c.command(
                0,
                &[
                    Amf0::string("connect"),
                    Amf0::Number(1.0),
                    Amf0::object([("app", Amf0::string("live"))]),
                ],
            );
            c.command(
                0,
                &[Amf0::string("createStream"), Amf0::Number(2.0), Amf0::Null],
            );
            c
        }

        fn command(&mut self, stream_id: u32, values: &[Amf0]) {
            encode(&Message::command(stream_id, values), 128, &mut self.out);
        }

        /// Everything the server sent, as messages (the handshake answer skipped).
        fn read(&mut self, server_bytes: &[u8]) -> Vec<Message> {
            self.decoder.push(server_bytes);
            let mut got = Vec::new();
            while let Some(m) = self.decoder.next_message().unwrap() {
                got.push(m);
            }
            got
        }
    }

    fn status_codes(messages: &[Message]) -> Vec<String> {
        messages
            .iter()
            .filter_map(|m| Command::parse(m).ok())
            .filter(|c| c.name == "onStatus")
            .filter_map(|c| c.args.first()?.get("code")?.as_str().map(str::to_owned))
            .collect()
    }

    #[test]
    fn publish_then_play_as_ffmpeg_does() {
        let mut s = ServerSession::new(SessionConfig::default(), 9);
        let mut c = Client::new();
        c.command(
            0,
            &[
                Amf0::string("connect"),
                Amf0::Number(1.0),
                Amf0::object([
                    ("app", Amf0::string("live")),
                    ("tcUrl", Amf0::string("rtmp://h/live")),
                ]),
            ],
        );
        c.command(
            0,
            &[
                Amf0::string("releaseStream"),
                Amf0::Number(2.0),
                Amf0::Null,
                Amf0::string("cam"),
            ],
        );
        c.command(
            0,
            &[
                Amf0::string("FCPublish"),
                Amf0::Number(3.0),
                Amf0::Null,
                Amf0::string("cam"),
            ],
        );
        c.command(
            0,
            &[Amf0::string("createStream"), Amf0::Number(4.0), Amf0::Null],
        );
        c.command(
            1,
            &[
                Amf0::string("publish"),
                Amf0::Number(5.0),
                Amf0::Null,
                Amf0::string("cam?sig=x"),
                Amf0::string("live"),
            ],
        );
        let bytes = c.out.split().freeze();
        let mut events = Vec::new();
        // In odd pieces, as TCP delivers them.
        for piece in bytes.chunks(333) {
            events.extend(s.push(piece).unwrap());
        }
        assert_eq!(
            events[0],
            Event::Connect {
                app: "live".into(),
                tc_url: Some("rtmp://h/live".into())
            }
        );
        assert_eq!(
            events[1],
            Event::Publish {
                stream_id: 1,
                name: "cam?sig=x".into()
            }
        );
        s.accept_publish(1, "cam");
        let out = s.take_output();
        let replies = c.read(&out[1 + 2 * 1536..]);
        let kinds: Vec<u8> = replies.iter().map(|m| m.type_id).collect();
        assert_eq!(
            &kinds[..3],
            &[5, 6, 1],
            "window, bandwidth, chunk size first"
        );
        let results: Vec<Command> = replies
            .iter()
            .filter_map(|m| Command::parse(m).ok())
            .filter(|c| c.name == "_result")
            .collect();
        assert_eq!(
            results.iter().map(|r| r.transaction).collect::<Vec<_>>(),
            vec![1.0, 2.0, 3.0, 4.0]
        );
        assert_eq!(
            results[3].args,
            vec![Amf0::Number(1.0)],
            "createStream gives stream 1"
        );
        assert_eq!(status_codes(&replies), vec!["NetStream.Publish.Start"]);

        // Media on the published stream, metadata, then unpublish.
        let mut m = BytesMut::new();
        encode(
            &Message::data(
                1,
                0,
                &[
                    Amf0::string("@setDataFrame"),
                    Amf0::string("onMetaData"),
                    Amf0::object([("width", Amf0::Number(640.0))]),
                ],
            ),
            128,
            &mut m,
        );
        encode(
            &Message {
                csid: 6,
                timestamp: 40,
                type_id: 9,
                stream_id: 1,
                payload: Bytes::from_static(&[0x17, 1, 0, 0, 0]),
            },
            128,
            &mut m,
        );
        c.out.extend_from_slice(&m);
        c.command(
            0,
            &[
                Amf0::string("FCUnpublish"),
                Amf0::Number(6.0),
                Amf0::Null,
                Amf0::string("cam"),
            ],
        );
        c.command(
            0,
            &[
                Amf0::string("deleteStream"),
                Amf0::Number(7.0),
                Amf0::Null,
                Amf0::Number(1.0),
            ],
        );
        let events = s.push(&c.out.split()).unwrap();
        assert!(
            matches!(&events[0], Event::Metadata { stream_id: 1, values } if values[0] == Amf0::string("onMetaData"))
        );
        assert!(matches!(&events[1], Event::Media(m) if m.timestamp == 40 && m.type_id == 9));
        assert_eq!(events[2], Event::Unpublish { stream_id: 1 });
        assert_eq!(
            events.len(),
            3,
            "deleteStream after FCUnpublish ends nothing twice"
        );
    }

    #[test]
    fn play_refusal_ping_and_bad_order() {
        let mut s = ServerSession::new(SessionConfig::default(), 9);
        let mut c = Client::with_stream();
        c.command(
            1,
            &[
                Amf0::string("play"),
                Amf0::Number(0.0),
                Amf0::Null,
                Amf0::string("nobody"),
            ],
        );
        encode(
            &Message::user_control(UserControl::PingRequest(77)),
            128,
            &mut c.out,
        );
        let events = s.push(&c.out.split()).unwrap();
        assert_eq!(
            events[1],
            Event::Play {
                stream_id: 1,
                name: "nobody".into()
            }
        );
        s.refuse_play(1, "NetStream.Play.StreamNotFound", "no such stream");
        let replies = c.read(&s.take_output()[1 + 2 * 1536..]);
        assert_eq!(
            status_codes(&replies),
            vec!["NetStream.Play.StreamNotFound"]
        );
        assert!(
            replies
                .iter()
                .any(|m| UserControl::parse(&m.payload) == Some(UserControl::PingResponse(77)))
        );

        // Media from a connection that never published; commands before connect.
        let mut c = Client::new();
        encode(
            &Message {
                csid: 6,
                timestamp: 0,
                type_id: 9,
                stream_id: 1,
                payload: Bytes::from_static(&[1]),
            },
            128,
            &mut c.out,
        );
        assert!(
            ServerSession::new(SessionConfig::default(), 1)
                .push(&c.out)
                .is_err()
        );
        let mut c = Client::new();
        c.command(
            0,
            &[
                Amf0::string("publish"),
                Amf0::Number(1.0),
                Amf0::Null,
                Amf0::string("x"),
            ],
        );
        assert!(
            ServerSession::new(SessionConfig::default(), 1)
                .push(&c.out)
                .is_err()
        );
    }

    #[test]
    fn one_publish_per_stream_id() {
        let mut s = ServerSession::new(SessionConfig::default(), 9);
        let mut c = Client::with_stream();
        let publish = |c: &mut Client, name: &str| {
            c.command(
                1,
                &[
                    Amf0::string("publish"),
                    Amf0::Number(0.0),
                    Amf0::Null,
                    Amf0::string(name),
                ],
            )
        };
        publish(&mut c, "a");
        let events = s.push(&c.out.split()).unwrap();
        assert!(matches!(
            events.last(),
            Some(Event::Publish { stream_id: 1, .. })
        ));
        s.accept_publish(1, "a");
        let started = c.read(&s.take_output()[1 + 2 * 1536..]);
        assert_eq!(status_codes(&started), vec!["NetStream.Publish.Start"]);
        publish(&mut c, "b");
        let events = s.push(&c.out.split()).unwrap();
        assert!(events.is_empty(), "{events:?}");
        let replies = c.read(&s.take_output());
        assert_eq!(status_codes(&replies), vec!["NetStream.Publish.BadName"]);
        // Nor may it play: then closeStream would stop a play, not the publish.
        c.command(
            1,
            &[
                Amf0::string("play"),
                Amf0::Number(0.0),
                Amf0::Null,
                Amf0::string("a"),
            ],
        );
        let events = s.push(&c.out.split()).unwrap();
        assert!(events.is_empty(), "{events:?}");
        let replies = c.read(&s.take_output());
        assert_eq!(status_codes(&replies), vec!["NetStream.Play.Failed"]);
        c.command(
            1,
            &[Amf0::string("closeStream"), Amf0::Number(0.0), Amf0::Null],
        );
        let events = s.push(&c.out.split()).unwrap();
        assert_eq!(events, vec![Event::Unpublish { stream_id: 1 }]);
    }

    #[test]
    fn large_messages_only_once_publishing() {
        let config = SessionConfig {
            max_message: 1 << 20,
            ..SessionConfig::default()
        };
        let big = |stream_id| Message {
            csid: 6,
            timestamp: 0,
            type_id: 9,
            stream_id,
            payload: Bytes::from(vec![0x27; 100_000]),
        };
        // Before a publish, a 100 KB message is refused outright.
        let mut s = ServerSession::new(config.clone(), 9);
        let mut c = Client::with_stream();
        encode(&big(1), 128, &mut c.out);
        assert!(matches!(
            s.push(&c.out.split()),
            Err(SessionError::Chunk(ChunkError::MessageTooLarge(100_000, _)))
        ));
        // Once publishing, it is a frame like any other.
        let mut s = ServerSession::new(config, 9);
        let mut c = Client::with_stream();
        c.command(
            1,
            &[
                Amf0::string("publish"),
                Amf0::Number(0.0),
                Amf0::Null,
                Amf0::string("cam"),
            ],
        );
        s.push(&c.out.split()).unwrap();
        s.accept_publish(1, "cam");
        encode(&big(1), 128, &mut c.out);
        let events = s.push(&c.out.split()).unwrap();
        assert!(matches!(&events[..], [Event::Media(m)] if m.payload.len() == 100_000));
    }

    #[test]
    fn acknowledges_each_window() {
        let mut s = ServerSession::new(SessionConfig::default(), 9);
        let mut c = Client::new();
        encode(&Message::window_ack_size(1000), 128, &mut c.out);
        c.command(
            0,
            &[
                Amf0::string("connect"),
                Amf0::Number(1.0),
                Amf0::object([("app", Amf0::string("live"))]),
            ],
        );
        s.push(&c.out.split()).unwrap();
        let _ = s.take_output();
        // 3000 bytes of commands the server ignores: acknowledgements go out.
        for i in 0..30 {
            c.command(
                0,
                &[
                    Amf0::string("receiveVideo"),
                    Amf0::Number(0.0),
                    Amf0::Null,
                    Amf0::string(&"x".repeat(80 + i)),
                ],
            );
        }
        s.push(&c.out.split()).unwrap();
        let replies = c.read(&s.take_output());
        assert!(replies.iter().any(|m| m.type_id == 3), "an Acknowledgement");
    }
}
