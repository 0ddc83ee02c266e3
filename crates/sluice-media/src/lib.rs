//! Media formats, pure and I/O-free: bytes in, structure out. Fuzzed and property-tested.
//!
//! Today: where the scans of a (progressive) JPEG end, so a file still arriving can be cut at
//! its last whole scan and closed into an image any decoder shows; and FLV tags, and what an
//! RTMP audio or video payload says of itself (codec, keyframe, sequence header).

pub mod flv;
pub mod jpeg;
pub mod mp4;
pub mod ts;
