//! RTMP messages (Adobe RTMP 1.0 §5.4, §6, §7): protocol control, user control events,
//! commands and data in AMF0, audio and video.

use bytes::{BufMut, Bytes, BytesMut};

use crate::amf0::{self, Amf0, AmfError};

/// One message as the chunk stream carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The chunk stream it travels on (2 for protocol control, 3 for commands, our choice
    /// for media).
    pub csid: u32,
    pub timestamp: u32,
    pub type_id: u8,
    pub stream_id: u32,
    pub payload: Bytes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    SetChunkSize,
    Abort,
    Acknowledgement,
    UserControl,
    WindowAckSize,
    SetPeerBandwidth,
    Audio,
    Video,
    DataAmf3,
    CommandAmf3,
    DataAmf0,
    CommandAmf0,
    Aggregate,
}

impl MessageType {
    pub fn from_id(id: u8) -> Option<Self> {
        Some(match id {
            1 => Self::SetChunkSize,
            2 => Self::Abort,
            3 => Self::Acknowledgement,
            4 => Self::UserControl,
            5 => Self::WindowAckSize,
            6 => Self::SetPeerBandwidth,
            8 => Self::Audio,
            9 => Self::Video,
            15 => Self::DataAmf3,
            17 => Self::CommandAmf3,
            18 => Self::DataAmf0,
            20 => Self::CommandAmf0,
            22 => Self::Aggregate,
            _ => return None,
        })
    }

    pub fn id(self) -> u8 {
        match self {
            Self::SetChunkSize => 1,
            Self::Abort => 2,
            Self::Acknowledgement => 3,
            Self::UserControl => 4,
            Self::WindowAckSize => 5,
            Self::SetPeerBandwidth => 6,
            Self::Audio => 8,
            Self::Video => 9,
            Self::DataAmf3 => 15,
            Self::CommandAmf3 => 17,
            Self::DataAmf0 => 18,
            Self::CommandAmf0 => 20,
            Self::Aggregate => 22,
        }
    }
}

/// Chunk streams we send on.
pub const CSID_CONTROL: u32 = 2;
pub const CSID_COMMAND: u32 = 3;
pub const CSID_AUDIO: u32 = 4;
pub const CSID_VIDEO: u32 = 6;
pub const CSID_DATA: u32 = 5;

/// User control events (§7.1.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserControl {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength { stream_id: u32, millis: u32 },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
}

impl UserControl {
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let kind = u16::from_be_bytes(payload.get(0..2)?.try_into().ok()?);
        let a = u32::from_be_bytes(payload.get(2..6)?.try_into().ok()?);
        Some(match kind {
            0 => Self::StreamBegin(a),
            1 => Self::StreamEof(a),
            2 => Self::StreamDry(a),
            3 => Self::SetBufferLength {
                stream_id: a,
                millis: u32::from_be_bytes(payload.get(6..10)?.try_into().ok()?),
            },
            4 => Self::StreamIsRecorded(a),
            6 => Self::PingRequest(a),
            7 => Self::PingResponse(a),
            _ => return None,
        })
    }

    fn encode(self) -> Bytes {
        let mut b = BytesMut::with_capacity(10);
        let (kind, a, extra) = match self {
            Self::StreamBegin(s) => (0u16, s, None),
            Self::StreamEof(s) => (1, s, None),
            Self::StreamDry(s) => (2, s, None),
            Self::SetBufferLength { stream_id, millis } => (3, stream_id, Some(millis)),
            Self::StreamIsRecorded(s) => (4, s, None),
            Self::PingRequest(t) => (6, t, None),
            Self::PingResponse(t) => (7, t, None),
        };
        b.put_u16(kind);
        b.put_u32(a);
        if let Some(e) = extra {
            b.put_u32(e);
        }
        b.freeze()
    }
}

impl Message {
    fn control(type_id: MessageType, payload: Bytes) -> Self {
        Self {
            csid: CSID_CONTROL,
            timestamp: 0,
            type_id: type_id.id(),
            stream_id: 0,
            payload,
        }
    }

    pub fn set_chunk_size(size: u32) -> Self {
        Self::control(
            MessageType::SetChunkSize,
            Bytes::copy_from_slice(&size.to_be_bytes()),
        )
    }

    pub fn acknowledgement(received: u32) -> Self {
        Self::control(
            MessageType::Acknowledgement,
            Bytes::copy_from_slice(&received.to_be_bytes()),
        )
    }

    pub fn window_ack_size(size: u32) -> Self {
        Self::control(
            MessageType::WindowAckSize,
            Bytes::copy_from_slice(&size.to_be_bytes()),
        )
    }

    /// Limit type 2 (dynamic).
    pub fn set_peer_bandwidth(size: u32) -> Self {
        let mut b = size.to_be_bytes().to_vec();
        b.push(2);
        Self::control(MessageType::SetPeerBandwidth, Bytes::from(b))
    }

    pub fn user_control(event: UserControl) -> Self {
        Self::control(MessageType::UserControl, event.encode())
    }

    /// An AMF0 command on the command chunk stream.
    pub fn command(stream_id: u32, values: &[Amf0]) -> Self {
        Self {
            csid: CSID_COMMAND,
            timestamp: 0,
            type_id: MessageType::CommandAmf0.id(),
            stream_id,
            payload: Bytes::from(amf0::encode_all(values)),
        }
    }

    /// AMF0 data (`onMetaData`, `|RtmpSampleAccess`).
    pub fn data(stream_id: u32, timestamp: u32, values: &[Amf0]) -> Self {
        Self {
            csid: CSID_DATA,
            timestamp,
            type_id: MessageType::DataAmf0.id(),
            stream_id,
            payload: Bytes::from(amf0::encode_all(values)),
        }
    }

    pub fn kind(&self) -> Option<MessageType> {
        MessageType::from_id(self.type_id)
    }
}

/// A command: name, transaction id, command object and arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub transaction: f64,
    pub object: Amf0,
    pub args: Vec<Amf0>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("bad AMF in a command: {0}")]
    Amf(#[from] AmfError),
    #[error("a command must start with its name and transaction id")]
    Shape,
}

impl Command {
    /// From an AMF0 command payload, or an AMF3 one (whose first byte is a format marker and
    /// whose values, from clients we know, are AMF0).
    pub fn parse(message: &Message) -> Result<Self, CommandError> {
        let payload = match message.kind() {
            Some(MessageType::CommandAmf3) => message.payload.get(1..).unwrap_or_default(),
            _ => &message.payload[..],
        };
        let mut values = amf0::decode_all(payload)?.into_iter();
        let name = match values.next() {
            Some(Amf0::String(s)) => s,
            _ => return Err(CommandError::Shape),
        };
        let transaction = values.next().and_then(|v| v.as_number()).unwrap_or(0.0);
        let object = values.next().unwrap_or(Amf0::Null);
        Ok(Self {
            name,
            transaction,
            object,
            args: values.collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_control_round_trip() {
        for ev in [
            UserControl::StreamBegin(1),
            UserControl::StreamEof(1),
            UserControl::PingRequest(123),
            UserControl::PingResponse(123),
            UserControl::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            },
        ] {
            assert_eq!(UserControl::parse(&ev.encode()), Some(ev));
        }
        assert_eq!(UserControl::parse(&[0, 9, 0, 0, 0, 0]), None);
        assert_eq!(UserControl::parse(&[0]), None);
    }

    #[test]
    fn commands_parse() {
        let m = Message::command(
            0,
            &[
                Amf0::string("publish"),
                Amf0::Number(5.0),
                Amf0::Null,
                Amf0::string("cam"),
                Amf0::string("live"),
            ],
        );
        let c = Command::parse(&m).unwrap();
        assert_eq!((c.name.as_str(), c.transaction), ("publish", 5.0));
        assert_eq!(c.args, vec![Amf0::string("cam"), Amf0::string("live")]);
        let bad = Message {
            payload: Bytes::from_static(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0]),
            ..m
        };
        assert_eq!(Command::parse(&bad), Err(CommandError::Shape));
    }
}
