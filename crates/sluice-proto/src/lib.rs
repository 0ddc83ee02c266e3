//! Sluice's wire vocabulary: file ids, API bodies, byte ranges and sizes.
//!
//! Everything here is pure (no sockets, clocks, files or randomness of its own) so it can be
//! property-tested and fuzzed; the role crates do the I/O and hand bytes in.

pub mod api;
pub mod cluster;
pub mod fileid;
pub mod net;
pub mod range;
pub mod replicas;
pub mod secret;
pub mod signature;
pub mod size;
pub mod span;
pub mod tus;

pub use api::{ErrorBody, UploadResponse};
pub use fileid::{BlobKey, FileId, FileIdError, GroupName};
pub use range::{ByteRange, RangeError, RangeRequest};
pub use secret::SecretSet;
pub use size::{ByteSize, SizeError};
pub use span::{SpanError, TimeSpan};
