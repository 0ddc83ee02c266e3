//! The RTMP chunk stream (Adobe RTMP 1.0 §5.3): messages cut into chunks of at most the
//! peer's chunk size, each with a basic header (format and chunk stream id) and a message
//! header of type 0 (11 bytes), 1 (7), 2 (3) or 3 (none), plus an extended timestamp when
//! the 24-bit field holds 0xFFFFFF.
//!
//! The decoder is fed bytes as they arrive and hands out whole messages. It applies Set Chunk
//! Size and Abort itself (they change how the next bytes parse), and enforces limits on the
//! chunk size, the message length, the number of chunk streams and the bytes of unfinished
//! messages, so a hostile peer gets an error, not a server that allocates without bound.

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};

use crate::message::{Message, MessageType};

pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// The largest chunk size the spec allows (31 bits).
pub const MAX_CHUNK_SIZE: u32 = 0x7FFF_FFFF;
/// Chunk streams one connection may use at once (a real client uses a handful).
pub const MAX_CHUNK_STREAMS: usize = 64;
const EXTENDED: u32 = 0xFF_FFFF;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk size {0} is outside 1..=2^31-1")]
    BadChunkSize(u32),
    #[error("message of {0} bytes is larger than the limit of {1}")]
    MessageTooLarge(u32, u32),
    #[error("chunk stream {0} continues a message it never started")]
    NoPreviousHeader(u32),
    #[error("more than {MAX_CHUNK_STREAMS} chunk streams")]
    TooManyStreams,
    #[error("a message's length changed in the middle of it")]
    LengthChanged,
    #[error("more than {0} bytes of unfinished messages")]
    TooMuchPending(usize),
    #[error("malformed protocol control message")]
    BadControl,
}

#[derive(Debug, Default, Clone)]
struct StreamState {
    timestamp: u32,
    delta: u32,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last header's timestamp field was extended (0xFFFFFF).
    extended: bool,
    /// The raw extended timestamp, which type-3 chunks may repeat.
    extended_value: u32,
    seen_header: bool,
}

pub struct ChunkDecoder {
    chunk_size: u32,
    max_message: u32,
    streams: HashMap<u32, StreamState>,
    /// The part of each chunk stream's message received so far, in a buffer of exactly the
    /// message's length (so the payload handed out holds no spare capacity). Apart from the
    /// header state, which is copied per chunk: copying these would cost a message's size per
    /// chunk.
    partials: HashMap<u32, BytesMut>,
    /// Declared lengths of the unfinished messages (their buffers): at most two largest
    /// messages' worth.
    pending: usize,
    buf: BytesMut,
}

impl ChunkDecoder {
    /// `max_message`: the longest message accepted (a video keyframe of a high bitrate stream
    /// is a few MB).
    pub fn new(max_message: u32) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_message,
            streams: HashMap::new(),
            partials: HashMap::new(),
            pending: 0,
            buf: BytesMut::new(),
        }
    }

    /// Raises (or lowers) the longest message accepted from here on.
    pub fn set_max_message(&mut self, max_message: u32) {
        self.max_message = max_message;
    }

    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes fed but not yet part of a whole chunk.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// The next whole message, if the bytes so far hold one.
    pub fn next_message(&mut self) -> Result<Option<Message>, ChunkError> {
        loop {
            let Some(done) = self.next_chunk()? else {
                return Ok(None);
            };
            if let Some(message) = done {
                self.apply_control(&message)?;
                return Ok(Some(message));
            }
        }
    }

    /// Set Chunk Size and Abort change the decoder itself.
    fn apply_control(&mut self, message: &Message) -> Result<(), ChunkError> {
        match MessageType::from_id(message.type_id) {
            Some(MessageType::SetChunkSize) => {
                let raw = read_u32(&message.payload).ok_or(ChunkError::BadControl)?;
                // The top bit must be zero; zero itself is no size.
                if raw == 0 || raw > MAX_CHUNK_SIZE {
                    return Err(ChunkError::BadChunkSize(raw));
                }
                self.chunk_size = raw;
            }
            Some(MessageType::Abort) => {
                let csid = read_u32(&message.payload).ok_or(ChunkError::BadControl)?;
                if let Some(partial) = self.partials.get_mut(&csid) {
                    if !partial.is_empty() {
                        let length = self.streams.get(&csid).map_or(0, |s| s.length);
                        self.pending -= length as usize;
                        *partial = BytesMut::new();
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Parses one chunk if whole: `None` = need more bytes; `Some(None)` = a chunk that did
    /// not finish a message; `Some(Some(m))` = it did.
    fn next_chunk(&mut self) -> Result<Option<Option<Message>>, ChunkError> {
        let buf = &self.buf[..];
        let Some(&b0) = buf.first() else {
            return Ok(None);
        };
        let fmt = b0 >> 6;
        let (csid, mut at) = match b0 & 0x3F {
            0 => match buf.get(1) {
                Some(&b1) => (64 + u32::from(b1), 2),
                None => return Ok(None),
            },
            1 => match (buf.get(1), buf.get(2)) {
                (Some(&b1), Some(&b2)) => (64 + u32::from(b1) + 256 * u32::from(b2), 3),
                _ => return Ok(None),
            },
            n => (u32::from(n), 1),
        };
        let header_len = [11, 7, 3, 0][usize::from(fmt)];
        if buf.len() < at + header_len {
            return Ok(None);
        }
        if !self.streams.contains_key(&csid) && self.streams.len() >= MAX_CHUNK_STREAMS {
            return Err(ChunkError::TooManyStreams);
        }
        let previous = self.streams.get(&csid).cloned().unwrap_or_default();
        if fmt != 0 && !previous.seen_header {
            return Err(ChunkError::NoPreviousHeader(csid));
        }
        let mut state = previous;
        let h = &buf[at..at + header_len];
        let received = self.partials.get(&csid).map_or(0, BytesMut::len);
        let starts_message = received == 0;
        let mut ts_field = None;
        if fmt <= 2 {
            ts_field = Some(u24(&h[0..3]));
        }
        if fmt <= 1 {
            let length = u24(&h[3..6]);
            if !starts_message && length != state.length {
                return Err(ChunkError::LengthChanged);
            }
            state.length = length;
            state.type_id = h[6];
        }
        if fmt == 0 {
            state.stream_id = u32::from_le_bytes([h[7], h[8], h[9], h[10]]);
        }
        at += header_len;
        // Extended timestamp: present when the field says so, and (type 3) when the previous
        // header's was extended; some encoders omit it on type 3, so it is taken only if the
        // bytes match the value it would repeat.
        let mut field_value = ts_field;
        if let Some(v) = ts_field {
            state.extended = v == EXTENDED;
            if state.extended {
                let Some(ext) = buf.get(at..at + 4) else {
                    return Ok(None);
                };
                let ext = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]);
                state.extended_value = ext;
                field_value = Some(ext);
                at += 4;
            }
        } else if state.extended {
            match buf.get(at..at + 4) {
                None => return Ok(None),
                Some(ext)
                    if u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]])
                        == state.extended_value =>
                {
                    at += 4
                }
                Some(_) => {}
            }
        }
        if state.length > self.max_message {
            return Err(ChunkError::MessageTooLarge(state.length, self.max_message));
        }
        let remaining = state.length as usize - received;
        let take = remaining.min(self.chunk_size as usize);
        if buf.len() < at + take {
            return Ok(None);
        }
        let length = state.length as usize;
        let spans_chunks = starts_message && take < remaining;
        let pending_limit = (self.max_message as usize).saturating_mul(2);
        if spans_chunks && self.pending + length > pending_limit {
            return Err(ChunkError::TooMuchPending(pending_limit));
        }
        // Timestamps: absolute on type 0, a delta on 1 and 2; a type 3 that starts a message
        // repeats the previous delta.
        if starts_message {
            match (fmt, field_value) {
                (0, Some(ts)) => {
                    state.timestamp = ts;
                    state.delta = 0;
                }
                (1 | 2, Some(delta)) => {
                    state.delta = delta;
                    state.timestamp = state.timestamp.wrapping_add(delta);
                }
                _ => state.timestamp = state.timestamp.wrapping_add(state.delta),
            }
        }
        state.seen_header = true;
        let partial = self.partials.entry(csid).or_default();
        if spans_chunks {
            partial.reserve(length);
            self.pending += length;
        }
        partial.extend_from_slice(&buf[at..at + take]);
        self.buf.advance(at + take);
        let complete = partial.len() == length;
        let message = complete.then(|| {
            if !starts_message {
                self.pending -= length;
            }
            Message {
                csid,
                timestamp: state.timestamp,
                type_id: state.type_id,
                stream_id: state.stream_id,
                payload: partial.split().freeze(),
            }
        });
        self.streams.insert(csid, state);
        Ok(Some(message))
    }
}

fn u24(b: &[u8]) -> u32 {
    (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2])
}

fn read_u32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Writes `message` as chunks of `chunk_size`: a type-0 header, then type-3 continuations.
/// The bytes depend only on the message and the chunk size, so one encoding is shared by
/// every player that receives the message.
pub fn encode(message: &Message, chunk_size: u32, out: &mut BytesMut) {
    let chunk_size = chunk_size.max(1) as usize;
    let extended = message.timestamp >= EXTENDED;
    let ts_field = if extended {
        EXTENDED
    } else {
        message.timestamp
    };
    let len = message.payload.len() as u32;
    let chunks = message.payload.len().div_ceil(chunk_size).max(1);
    out.reserve(message.payload.len() + 16 + chunks * 8);
    basic_header(out, 0, message.csid);
    out.extend_from_slice(&ts_field.to_be_bytes()[1..]);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.extend_from_slice(&[message.type_id]);
    out.extend_from_slice(&message.stream_id.to_le_bytes());
    if extended {
        out.extend_from_slice(&message.timestamp.to_be_bytes());
    }
    let mut rest = &message.payload[..];
    let mut first = true;
    while first || !rest.is_empty() {
        if !first {
            basic_header(out, 3, message.csid);
            if extended {
                out.extend_from_slice(&message.timestamp.to_be_bytes());
            }
        }
        let n = rest.len().min(chunk_size);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        first = false;
    }
}

/// A message encoded once, for sharing.
pub fn encode_to_bytes(message: &Message, chunk_size: u32) -> Bytes {
    let mut out = BytesMut::new();
    encode(message, chunk_size, &mut out);
    out.freeze()
}

fn basic_header(out: &mut BytesMut, fmt: u8, csid: u32) {
    match csid {
        2..=63 => out.extend_from_slice(&[(fmt << 6) | csid as u8]),
        64..=319 => out.extend_from_slice(&[fmt << 6, (csid - 64) as u8]),
        _ => {
            let v = csid.clamp(320, 65599) - 64;
            out.extend_from_slice(&[(fmt << 6) | 1, (v & 0xFF) as u8, (v >> 8) as u8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(csid: u32, ts: u32, type_id: u8, len: usize) -> Message {
        Message {
            csid,
            timestamp: ts,
            type_id,
            stream_id: 1,
            payload: Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>()),
        }
    }

    #[test]
    fn all_four_header_types_and_extended_timestamps() {
        // Hand-made: type 0 (ts 1000, 300 bytes of audio) in chunks of 128, then a type 1
        // (delta 40, 10 bytes), a type 2 (delta 20), a type 3 (same delta again).
        let mut b = vec![0x04];
        b.extend_from_slice(&[0x00, 0x03, 0xE8, 0x00, 0x01, 0x2C, 0x08, 1, 0, 0, 0]);
        let payload: Vec<u8> = (0..300).map(|i| i as u8).collect();
        b.extend_from_slice(&payload[..128]);
        b.push(0xC4);
        b.extend_from_slice(&payload[128..256]);
        b.push(0xC4);
        b.extend_from_slice(&payload[256..]);
        b.extend_from_slice(&[0x44, 0x00, 0x00, 0x28, 0x00, 0x00, 0x0A, 0x08]);
        b.extend_from_slice(&[7; 10]);
        b.extend_from_slice(&[0x84, 0x00, 0x00, 0x14]);
        b.extend_from_slice(&[8; 10]);
        b.push(0xC4);
        b.extend_from_slice(&[9; 10]);
        // Extended timestamp on csid 5 (0x12345678), with a continuation that repeats it.
        let big = msg(5, 0x1234_5678, 9, 200);
        let mut enc = BytesMut::new();
        encode(&big, 128, &mut enc);
        b.extend_from_slice(&enc);

        let mut d = ChunkDecoder::new(1 << 20);
        // Fed one byte at a time: the result must not depend on how bytes arrive.
        let mut got = Vec::new();
        for byte in &b {
            d.push(&[*byte]);
            while let Some(m) = d.next_message().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got.len(), 5);
        assert_eq!((got[0].timestamp, got[0].payload.len()), (1000, 300));
        assert_eq!(&got[0].payload[..], &payload[..]);
        assert_eq!((got[1].timestamp, got[1].payload.len()), (1040, 10));
        assert_eq!(
            (got[2].timestamp, &got[2].payload[..]),
            (1060, &[8u8; 10][..])
        );
        assert_eq!(
            (got[3].timestamp, &got[3].payload[..]),
            (1080, &[9u8; 10][..])
        );
        assert_eq!(got[4], big);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn set_chunk_size_and_abort_apply_at_once() {
        let mut out = BytesMut::new();
        encode(&Message::set_chunk_size(4096), 128, &mut out);
        let big = msg(6, 0, 9, 5000);
        encode(&big, 4096, &mut out);
        let mut d = ChunkDecoder::new(1 << 20);
        d.push(&out);
        assert_eq!(d.next_message().unwrap().unwrap().type_id, 1);
        assert_eq!(d.chunk_size(), 4096);
        assert_eq!(d.next_message().unwrap().unwrap(), big);

        for bad in [0u32, 0x8000_0000, u32::MAX] {
            let mut out = BytesMut::new();
            let m = Message {
                payload: Bytes::copy_from_slice(&bad.to_be_bytes()),
                ..Message::set_chunk_size(1)
            };
            encode(&m, 128, &mut out);
            let mut d = ChunkDecoder::new(1 << 20);
            d.push(&out);
            assert_eq!(d.next_message(), Err(ChunkError::BadChunkSize(bad)));
        }
    }

    #[test]
    fn hostile_input_is_refused() {
        // A message that claims more than the limit.
        let mut d = ChunkDecoder::new(1000);
        d.push(&[0x04, 0, 0, 0, 0x10, 0, 0, 0x09, 1, 0, 0, 0]);
        assert_eq!(
            d.next_message(),
            Err(ChunkError::MessageTooLarge(0x100000, 1000))
        );
        // A type 1 header on a chunk stream never seen.
        let mut d = ChunkDecoder::new(1000);
        d.push(&[0x45, 0, 0, 0, 0, 0, 1, 8]);
        assert_eq!(d.next_message(), Err(ChunkError::NoPreviousHeader(5)));
        // Too many chunk streams at once (each with a started, unfinished message).
        let mut d = ChunkDecoder::new(1 << 20);
        for csid in 0..=MAX_CHUNK_STREAMS as u32 {
            let mut out = BytesMut::new();
            encode(&msg(csid + 64, 0, 9, 300), 128, &mut out);
            // Exactly the first chunk (2-byte basic header, 11-byte message header, 128).
            d.push(&out[..141]);
        }
        let mut result = Ok(None);
        for _ in 0..=MAX_CHUNK_STREAMS {
            result = d.next_message();
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(ChunkError::TooManyStreams));
        // Unfinished messages on many chunk streams, each within the limit, together over
        // twice it.
        let mut d = ChunkDecoder::new(1000);
        let mut out = BytesMut::new();
        encode(&Message::set_chunk_size(999), 128, &mut out);
        d.push(&out);
        assert_eq!(d.next_message().unwrap().unwrap().type_id, 1);
        let mut result = Ok(None);
        for csid in 0..3u32 {
            let mut out = BytesMut::new();
            encode(&msg(csid + 64, 0, 9, 1000), 999, &mut out);
            d.push(&out[..13 + 999]);
            result = d.next_message();
        }
        assert_eq!(result, Err(ChunkError::TooMuchPending(2000)));
    }

    #[test]
    fn a_large_message_in_small_chunks_costs_its_size_once() {
        // 4 MiB in 128-byte chunks: 32768 chunks. Copying the message so far per chunk (as a
        // header clone with the payload inside would) is ~64 GiB of copying; this must be
        // instant.
        let big = msg(6, 40, 9, 4 << 20);
        let mut out = BytesMut::new();
        encode(&big, 128, &mut out);
        let mut d = ChunkDecoder::new(8 << 20);
        let started = std::time::Instant::now();
        d.push(&out);
        let got = d.next_message().unwrap().unwrap();
        assert_eq!(got, big);
        assert_eq!(d.pending, 0);
        // Its buffer was the message's size from the start: no spare capacity rides along.
        assert_eq!(got.payload.len(), 4 << 20);
        // Generous for a debug build; the quadratic version takes minutes.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    proptest! {
        #[test]
        fn encode_then_decode_in_any_pieces(
            sizes in proptest::collection::vec(0usize..3000, 1..6),
            ts in proptest::collection::vec(any::<u32>(), 6),
            chunk in 1u32..5000,
            cut in 1usize..700,
        ) {
            let messages: Vec<Message> = sizes.iter().enumerate()
                .map(|(i, &n)| msg(3 + (i as u32 % 3) * 100, ts[i], 9, n))
                .collect();
            let mut out = BytesMut::new();
            encode(&Message::set_chunk_size(chunk), 128, &mut out);
            for m in &messages {
                encode(m, chunk, &mut out);
            }
            let mut d = ChunkDecoder::new(1 << 20);
            let mut got = Vec::new();
            for piece in out.chunks(cut) {
                d.push(piece);
                while let Some(m) = d.next_message().unwrap() {
                    got.push(m);
                }
            }
            prop_assert_eq!(&got[1..], &messages[..]);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = ChunkDecoder::new(1 << 16);
            d.push(&bytes);
            while let Ok(Some(_)) = d.next_message() {}
        }
    }
}
