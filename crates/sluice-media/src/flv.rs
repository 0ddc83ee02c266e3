//! FLV (Adobe Flash Video File Format 10.1, and Enhanced RTMP for HEVC/AV1/VP9): the header,
//! tags, and what a player needs to know of an audio or video payload (codec, keyframe,
//! sequence header). RTMP audio and video messages are FLV tag bodies, so the same code
//! serves both.

use bytes::{BufMut, Bytes, BytesMut};

pub const TAG_AUDIO: u8 = 8;
pub const TAG_VIDEO: u8 = 9;
pub const TAG_SCRIPT: u8 = 18;

/// The 9-byte FLV header and the first PreviousTagSize (0).
pub fn header(audio: bool, video: bool) -> [u8; 13] {
    let flags = (u8::from(audio) << 2) | u8::from(video);
    [b'F', b'L', b'V', 1, flags, 0, 0, 0, 9, 0, 0, 0, 0]
}

/// One tag and its PreviousTagSize.
pub fn tag(tag_type: u8, timestamp: u32, data: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(11 + data.len() + 4);
    out.put_slice(&tag_header(tag_type, timestamp, data.len()));
    out.put_slice(data);
    out.put_u32(11 + data.len() as u32);
    out.freeze()
}

/// A tag's 11-byte header, for a tag of `len` data bytes (which follow it, then the
/// PreviousTagSize `11 + len` as a big-endian u32).
pub fn tag_header(tag_type: u8, timestamp: u32, len: usize) -> [u8; 11] {
    let len = (len as u32).to_be_bytes();
    let ts = timestamp.to_be_bytes();
    [
        tag_type, len[1], len[2], len[3], ts[1], ts[2], ts[3], ts[0], 0, 0, 0,
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    H264,
    Hevc,
    Av1,
    Vp9,
    /// A legacy FLV codec id (Sorenson, VP6...) or an unknown FourCC.
    Other(u32),
}

impl VideoCodec {
    pub fn name(self) -> &'static str {
        match self {
            VideoCodec::H264 => "h264",
            VideoCodec::Hevc => "hevc",
            VideoCodec::Av1 => "av1",
            VideoCodec::Vp9 => "vp9",
            VideoCodec::Other(_) => "other",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    Aac,
    Mp3,
    Other(u8),
}

impl AudioCodec {
    pub fn name(self) -> &'static str {
        match self {
            AudioCodec::Aac => "aac",
            AudioCodec::Mp3 => "mp3",
            AudioCodec::Other(_) => "other",
        }
    }
}

/// What a video tag body says of itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoInfo {
    pub codec: VideoCodec,
    pub keyframe: bool,
    /// Decoder configuration (AVCDecoderConfigurationRecord and the like), not a frame.
    pub sequence_header: bool,
    /// Enhanced RTMP's end of sequence, or AVC's.
    pub end_of_sequence: bool,
}

/// Reads the first bytes of a video tag body (legacy FLV, or Enhanced RTMP's extended
/// header with a FourCC). `None` for an empty body.
pub fn video_info(data: &[u8]) -> Option<VideoInfo> {
    let b0 = *data.first()?;
    if b0 & 0x80 != 0 {
        // Enhanced RTMP: IsExHeader | FrameType(3) | PacketType(4), then a FourCC.
        let frame_type = (b0 >> 4) & 0x07;
        let packet_type = b0 & 0x0F;
        let fourcc = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?);
        let codec = match &fourcc.to_be_bytes() {
            b"hvc1" => VideoCodec::Hevc,
            b"av01" => VideoCodec::Av1,
            b"vp09" => VideoCodec::Vp9,
            b"avc1" => VideoCodec::H264,
            _ => VideoCodec::Other(fourcc),
        };
        return Some(VideoInfo {
            codec,
            keyframe: frame_type == 1,
            sequence_header: packet_type == 0,
            end_of_sequence: packet_type == 2,
        });
    }
    let frame_type = b0 >> 4;
    let codec_id = b0 & 0x0F;
    let codec = match codec_id {
        7 => VideoCodec::H264,
        12 => VideoCodec::Hevc,
        other => VideoCodec::Other(u32::from(other)),
    };
    let packet = data.get(1).copied();
    let avc_like = matches!(codec, VideoCodec::H264 | VideoCodec::Hevc);
    Some(VideoInfo {
        codec,
        keyframe: frame_type == 1,
        sequence_header: avc_like && packet == Some(0),
        end_of_sequence: avc_like && packet == Some(2),
    })
}

/// An AVC/HEVC video tag body's composition time offset (presentation minus decode time, ms):
/// the signed 24-bit field after the packet type. 0 when absent.
pub fn composition_time(data: &[u8]) -> i32 {
    data.get(2..5).map_or(0, |c| {
        let v = (i32::from(c[0]) << 16) | (i32::from(c[1]) << 8) | i32::from(c[2]);
        if v & 0x80_0000 != 0 {
            v - 0x100_0000
        } else {
            v
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioInfo {
    pub codec: AudioCodec,
    /// AAC's AudioSpecificConfig, not a frame.
    pub sequence_header: bool,
}

pub fn audio_info(data: &[u8]) -> Option<AudioInfo> {
    let b0 = *data.first()?;
    let codec = match b0 >> 4 {
        10 => AudioCodec::Aac,
        2 => AudioCodec::Mp3,
        other => AudioCodec::Other(other),
    };
    Some(AudioInfo {
        codec,
        sequence_header: codec == AudioCodec::Aac && data.get(1) == Some(&0),
    })
}

/// One tag read back from FLV bytes (for tests, tools and fuzzing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub tag_type: u8,
    pub timestamp: u32,
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlvError {
    #[error("not an FLV file")]
    NotFlv,
    #[error("FLV tag at byte {0} is malformed")]
    BadTag(usize),
}

/// Every whole tag in `data` (an FLV file or a prefix of one); a partial last tag is left.
pub fn read_tags(data: &[u8]) -> Result<Vec<Tag>, FlvError> {
    if data.len() < 13 || &data[..3] != b"FLV" {
        return Err(FlvError::NotFlv);
    }
    let header_len = u32::from_be_bytes([data[5], data[6], data[7], data[8]]) as usize;
    let mut at = header_len.checked_add(4).ok_or(FlvError::NotFlv)?;
    let mut tags = Vec::new();
    while let Some(h) = data.get(at..at + 11) {
        let size = (usize::from(h[1]) << 16) | (usize::from(h[2]) << 8) | usize::from(h[3]);
        let timestamp = (u32::from(h[7]) << 24)
            | (u32::from(h[4]) << 16)
            | (u32::from(h[5]) << 8)
            | u32::from(h[6]);
        let Some(body) = data.get(at + 11..at + 11 + size) else {
            break;
        };
        let Some(prev) = data.get(at + 11 + size..at + 15 + size) else {
            break;
        };
        if u32::from_be_bytes([prev[0], prev[1], prev[2], prev[3]]) as usize != 11 + size {
            return Err(FlvError::BadTag(at));
        }
        tags.push(Tag {
            tag_type: h[0],
            timestamp,
            data: Bytes::copy_from_slice(body),
        });
        at += 15 + size;
    }
    Ok(tags)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tags_round_trip_with_extended_timestamps() {
        let mut file = header(true, true).to_vec();
        file.extend_from_slice(&tag(TAG_VIDEO, 0x0123_4567, &[0x17, 0, 0, 0, 0]));
        file.extend_from_slice(&tag(TAG_AUDIO, 40, &[0xAF, 1, 2]));
        let tags = read_tags(&file).unwrap();
        assert_eq!(tags.len(), 2);
        assert_eq!(tags[0].timestamp, 0x0123_4567);
        assert_eq!(&tags[1].data[..], &[0xAF, 1, 2]);
        assert_eq!(read_tags(&file[..file.len() - 2]).unwrap().len(), 1);
        assert_eq!(read_tags(b"GIF89a......."), Err(FlvError::NotFlv));
    }

    #[test]
    fn what_payloads_say() {
        let avc_header = video_info(&[0x17, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            (
                avc_header.codec,
                avc_header.keyframe,
                avc_header.sequence_header
            ),
            (VideoCodec::H264, true, true)
        );
        let inter = video_info(&[0x27, 1, 0, 0, 0]).unwrap();
        assert!(!inter.keyframe && !inter.sequence_header);
        // Enhanced RTMP: keyframe + SequenceStart + hvc1; a coded frame of av01; vp09.
        let hevc = video_info(&[0x90, b'h', b'v', b'c', b'1']).unwrap();
        assert_eq!(
            (hevc.codec, hevc.keyframe, hevc.sequence_header),
            (VideoCodec::Hevc, true, true)
        );
        let av1 = video_info(&[0xA1, b'a', b'v', b'0', b'1', 9]).unwrap();
        assert_eq!(
            (av1.codec, av1.keyframe, av1.sequence_header),
            (VideoCodec::Av1, false, false)
        );
        assert_eq!(
            video_info(&[0x91, b'v', b'p', b'0', b'9']).unwrap().codec,
            VideoCodec::Vp9
        );
        assert_eq!(video_info(&[0x90, b'h']), None);
        let aac = audio_info(&[0xAF, 0, 0x12, 0x10]).unwrap();
        assert_eq!((aac.codec, aac.sequence_header), (AudioCodec::Aac, true));
        assert!(!audio_info(&[0xAF, 1]).unwrap().sequence_header);
        assert_eq!(composition_time(&[0x27, 1, 0, 0, 80]), 80);
        assert_eq!(composition_time(&[0x27, 1, 0xFF, 0xFF, 0xD8]), -40);
        assert_eq!(composition_time(&[0x27]), 0);
    }

    proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = video_info(&data);
            let _ = audio_info(&data);
            let mut with_header = header(true, true).to_vec();
            with_header.extend_from_slice(&data);
            let _ = read_tags(&data);
            let _ = read_tags(&with_header);
        }
    }
}
