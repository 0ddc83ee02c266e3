//! RTMP (Adobe RTMP 1.0, and DESIGN.md §1 on `002_*.txt`), pure and I/O-free: the handshake
//! (simple and digest forms), the chunk stream codec (all four header types, extended
//! timestamps, Set Chunk Size, Abort), AMF0, protocol and user control messages, and the
//! server session state machine. Bytes in, events and bytes out: the live role does the I/O.
//! Every parser here takes bytes from the network, so each is property-tested and fuzzed.

pub mod amf0;
pub mod chunk;
pub mod handshake;
pub mod message;
pub mod session;

pub use amf0::Amf0;
pub use chunk::{ChunkDecoder, ChunkError};
pub use message::{Command, Message, MessageType, UserControl};
pub use session::{Event, ServerSession, SessionConfig, SessionError};
