//! MPEG-TS (ISO/IEC 13818-1) for HLS: H.264 and AAC from RTMP/FLV payloads into 188-byte
//! transport packets. H.264 comes as AVCC (length-prefixed NAL units, parameter sets in the
//! sequence header) and leaves as Annex B with an access unit delimiter, SPS and PPS before
//! each keyframe; AAC comes raw and leaves with ADTS headers. Pure: frames in, bytes out.

use bytes::{BufMut, Bytes, BytesMut};

pub const PACKET: usize = 188;
const PID_PAT: u16 = 0;
const PID_PMT: u16 = 0x1000;
pub const PID_VIDEO: u16 = 0x100;
pub const PID_AUDIO: u16 = 0x101;
const STREAM_TYPE_H264: u8 = 0x1B;
const STREAM_TYPE_AAC: u8 = 0x0F;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TsError {
    #[error("the H.264 sequence header is malformed")]
    BadAvcConfig,
    #[error("the AAC sequence header is malformed")]
    BadAacConfig,
    #[error("an H.264 frame arrived before its sequence header")]
    NoAvcConfig,
    #[error("an AAC frame arrived before its sequence header")]
    NoAacConfig,
    #[error("an H.264 frame's NAL units are malformed")]
    BadNalu,
}

/// What an AVCDecoderConfigurationRecord holds that a TS stream needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    pub length_size: usize,
    pub sps: Vec<Bytes>,
    pub pps: Vec<Bytes>,
}

impl AvcConfig {
    /// From an FLV AVC sequence header body (after the 5-byte FLV video header).
    pub fn parse(record: &[u8]) -> Result<Self, TsError> {
        let bad = || TsError::BadAvcConfig;
        if record.len() < 7 || record[0] != 1 {
            return Err(bad());
        }
        let length_size = usize::from(record[4] & 0x03) + 1;
        let mut at = 5;
        let read_sets = |count: usize, at: &mut usize| -> Result<Vec<Bytes>, TsError> {
            let mut sets = Vec::with_capacity(count);
            for _ in 0..count {
                let len = usize::from(u16::from_be_bytes(
                    record
                        .get(*at..*at + 2)
                        .ok_or_else(bad)?
                        .try_into()
                        .map_err(|_| bad())?,
                ));
                sets.push(Bytes::copy_from_slice(
                    record.get(*at + 2..*at + 2 + len).ok_or_else(bad)?,
                ));
                *at += 2 + len;
            }
            Ok(sets)
        };
        let sps_count = usize::from(record[at] & 0x1F);
        at += 1;
        let sps = read_sets(sps_count, &mut at)?;
        let pps_count = usize::from(*record.get(at).ok_or_else(bad)?);
        at += 1;
        let pps = read_sets(pps_count, &mut at)?;
        Ok(Self {
            length_size,
            sps,
            pps,
        })
    }
}

/// What an AudioSpecificConfig holds that ADTS headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AacConfig {
    pub object_type: u8,
    pub frequency_index: u8,
    pub channels: u8,
}

impl AacConfig {
    pub fn parse(asc: &[u8]) -> Result<Self, TsError> {
        if asc.len() < 2 {
            return Err(TsError::BadAacConfig);
        }
        let object_type = asc[0] >> 3;
        let frequency_index = ((asc[0] & 0x07) << 1) | (asc[1] >> 7);
        let channels = (asc[1] >> 3) & 0x0F;
        if object_type == 0 || frequency_index > 12 {
            return Err(TsError::BadAacConfig);
        }
        Ok(Self {
            object_type,
            frequency_index,
            channels,
        })
    }

    /// Samples per second.
    pub fn sample_rate(&self) -> u32 {
        const RATES: [u32; 13] = [
            96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
        ];
        RATES[usize::from(self.frequency_index).min(RATES.len() - 1)]
    }

    /// The 7-byte ADTS header for a raw frame of `len` bytes.
    pub fn adts(&self, len: usize) -> [u8; 7] {
        let full = len + 7;
        let profile = self.object_type.saturating_sub(1) & 0x03;
        [
            0xFF,
            0xF1,
            (profile << 6) | (self.frequency_index << 2) | ((self.channels >> 2) & 0x01),
            ((self.channels & 0x03) << 6) | ((full >> 11) as u8 & 0x03),
            (full >> 3) as u8,
            (((full & 0x07) as u8) << 5) | 0x1F,
            0xFC,
        ]
    }
}

/// Annex B access unit for one AVCC frame: AUD, then (for a keyframe) SPS and PPS, then its NAL
/// units each behind a start code.
pub fn annex_b(config: &AvcConfig, avcc: &[u8], keyframe: bool) -> Result<Vec<u8>, TsError> {
    const START: [u8; 4] = [0, 0, 0, 1];
    let mut out = Vec::with_capacity(avcc.len() + 64);
    out.extend_from_slice(&[0, 0, 0, 1, 0x09, 0xF0]);
    if keyframe {
        for set in config.sps.iter().chain(&config.pps) {
            out.extend_from_slice(&START);
            out.extend_from_slice(set);
        }
    }
    let mut at = 0;
    while at < avcc.len() {
        let len_bytes = avcc
            .get(at..at + config.length_size)
            .ok_or(TsError::BadNalu)?;
        let len = len_bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        let nalu = avcc
            .get(at + config.length_size..at + config.length_size + len)
            .ok_or(TsError::BadNalu)?;
        at += config.length_size + len;
        // Parameter sets and delimiters inside frames are already covered above.
        if matches!(nalu.first().map(|b| b & 0x1F), Some(7..=9)) {
            continue;
        }
        out.extend_from_slice(&START);
        out.extend_from_slice(nalu);
    }
    Ok(out)
}

/// MPEG-2 CRC-32 (as PAT and PMT sections need).
fn crc32_mpeg2(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Writes transport packets, keeping continuity counters per PID.
#[derive(Debug, Default, Clone)]
pub struct TsWriter {
    counters: [u8; 4],
    pub has_audio: bool,
    pub has_video: bool,
}

fn counter_slot(pid: u16) -> usize {
    match pid {
        PID_PAT => 0,
        PID_PMT => 1,
        PID_VIDEO => 2,
        _ => 3,
    }
}

impl TsWriter {
    pub fn new(has_video: bool, has_audio: bool) -> Self {
        Self {
            counters: [0; 4],
            has_audio,
            has_video,
        }
    }

    fn next_counter(&mut self, pid: u16) -> u8 {
        let slot = &mut self.counters[counter_slot(pid)];
        let c = *slot;
        *slot = (c + 1) & 0x0F;
        c
    }

    fn section_packet(&mut self, pid: u16, section: &[u8], out: &mut BytesMut) {
        let mut p = Vec::with_capacity(PACKET);
        p.extend_from_slice(&[
            0x47,
            0x40 | (pid >> 8) as u8,
            pid as u8,
            0x10 | self.next_counter(pid),
            0,
        ]);
        p.extend_from_slice(section);
        p.extend_from_slice(&crc32_mpeg2(section).to_be_bytes());
        p.resize(PACKET, 0xFF);
        out.extend_from_slice(&p);
    }

    /// PAT and PMT: every segment starts with them.
    pub fn write_tables(&mut self, out: &mut BytesMut) {
        let pat = [
            0x00,
            0xB0,
            0x0D,
            0x00,
            0x01,
            0xC1,
            0x00,
            0x00,
            0x00,
            0x01,
            0xE0 | (PID_PMT >> 8) as u8,
            PID_PMT as u8,
        ];
        self.section_packet(PID_PAT, &pat, out);
        let mut streams = Vec::new();
        if self.has_video {
            streams.extend_from_slice(&[
                STREAM_TYPE_H264,
                0xE0 | (PID_VIDEO >> 8) as u8,
                PID_VIDEO as u8,
                0xF0,
                0x00,
            ]);
        }
        if self.has_audio {
            streams.extend_from_slice(&[
                STREAM_TYPE_AAC,
                0xE0 | (PID_AUDIO >> 8) as u8,
                PID_AUDIO as u8,
                0xF0,
                0x00,
            ]);
        }
        let pcr_pid = if self.has_video { PID_VIDEO } else { PID_AUDIO };
        let section_len = 9 + streams.len() + 4;
        let mut pmt = vec![
            0x02,
            0xB0 | ((section_len >> 8) as u8 & 0x0F),
            section_len as u8,
            0x00,
            0x01,
            0xC1,
            0x00,
            0x00,
            0xE0 | (pcr_pid >> 8) as u8,
            pcr_pid as u8,
            0xF0,
            0x00,
        ];
        pmt.extend_from_slice(&streams);
        self.section_packet(PID_PMT, &pmt, out);
    }

    /// One PES packet (an access unit or an audio frame) as transport packets. Times are in
    /// milliseconds; a PCR goes with keyframes.
    pub fn write_pes(
        &mut self,
        pid: u16,
        dts_ms: u64,
        pts_ms: u64,
        payload: &[u8],
        pcr: bool,
        out: &mut BytesMut,
    ) {
        let stream_id = if pid == PID_VIDEO { 0xE0 } else { 0xC0 };
        let (dts, pts) = (dts_ms * 90, pts_ms * 90);
        let with_dts = pts != dts;
        let header_data = if with_dts { 10 } else { 5 };
        let mut pes = BytesMut::with_capacity(payload.len() + 19);
        pes.put_slice(&[0, 0, 1, stream_id]);
        let pes_len = 3 + header_data + payload.len();
        // Video PES packets may leave their length 0 (unbounded); audio ones fit.
        pes.put_u16(if pid == PID_VIDEO || pes_len > 0xFFFF {
            0
        } else {
            pes_len as u16
        });
        pes.put_u8(0x80);
        pes.put_u8(if with_dts { 0xC0 } else { 0x80 });
        pes.put_u8(header_data as u8);
        put_timestamp(&mut pes, if with_dts { 0x3 } else { 0x2 }, pts);
        if with_dts {
            put_timestamp(&mut pes, 0x1, dts);
        }
        pes.put_slice(payload);
        let mut rest = &pes[..];
        let mut first = true;
        while !rest.is_empty() {
            let mut header = vec![
                0x47,
                ((pid >> 8) as u8 & 0x1F) | if first { 0x40 } else { 0 },
                pid as u8,
            ];
            let mut adaptation = Vec::new();
            if first && pcr {
                let base = dts;
                adaptation.extend_from_slice(&[0x10]);
                adaptation.extend_from_slice(&[
                    (base >> 25) as u8,
                    (base >> 17) as u8,
                    (base >> 9) as u8,
                    (base >> 1) as u8,
                    (((base & 1) << 7) as u8) | 0x7E,
                    0,
                ]);
            }
            let room = PACKET
                - 4
                - if adaptation.is_empty() {
                    0
                } else {
                    1 + adaptation.len()
                };
            let take = rest.len().min(room);
            // The last packet is filled up with adaptation-field stuffing.
            let stuffing = room - take;
            if stuffing > 0 || !adaptation.is_empty() {
                let mut field_len = adaptation.len() + stuffing;
                if adaptation.is_empty() {
                    // An empty adaptation field still takes its length byte (and a flags byte
                    // if it has any room).
                    field_len = stuffing - 1;
                    if field_len > 0 {
                        adaptation.push(0x00);
                        adaptation.resize(field_len, 0xFF);
                    }
                } else {
                    adaptation.resize(field_len, 0xFF);
                }
                header.push(0x30 | self.next_counter(pid));
                header.push(field_len as u8);
                header.extend_from_slice(&adaptation);
            } else {
                header.push(0x10 | self.next_counter(pid));
            }
            out.extend_from_slice(&header);
            out.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            first = false;
        }
    }
}

fn put_timestamp(out: &mut BytesMut, marker: u8, t: u64) {
    let t = t & 0x1_FFFF_FFFF;
    out.put_u8((marker << 4) | (((t >> 30) as u8 & 0x07) << 1) | 1);
    out.put_u16((((t >> 15) & 0x7FFF) as u16) << 1 | 1);
    out.put_u16(((t & 0x7FFF) as u16) << 1 | 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn avc_config_and_annex_b() {
        // version 1, profile, compat, level, length size 4, 1 SPS of 3 bytes, 1 PPS of 2.
        let record = [
            1, 0x42, 0, 0x1E, 0xFF, 0xE1, 0, 3, 0x67, 1, 2, 1, 0, 2, 0x68, 9,
        ];
        let c = AvcConfig::parse(&record).unwrap();
        assert_eq!((c.length_size, c.sps.len(), c.pps.len()), (4, 1, 1));
        let frame = [0, 0, 0, 2, 0x65, 0xAA, 0, 0, 0, 1, 0x06];
        let b = annex_b(&c, &frame, true).unwrap();
        assert_eq!(
            b,
            vec![
                0, 0, 0, 1, 9, 0xF0, 0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x68, 9, 0, 0, 0, 1, 0x65,
                0xAA, 0, 0, 0, 1, 6
            ]
        );
        assert_eq!(annex_b(&c, &[0, 0, 0, 9, 1], false), Err(TsError::BadNalu));
        assert!(AvcConfig::parse(&[1, 2]).is_err());
    }

    #[test]
    fn adts_header() {
        // AAC LC, 44.1 kHz, stereo: 0x12 0x10.
        let c = AacConfig::parse(&[0x12, 0x10]).unwrap();
        assert_eq!((c.object_type, c.frequency_index, c.channels), (2, 4, 2));
        assert_eq!(c.sample_rate(), 44100);
        assert_eq!(c.adts(100), [0xFF, 0xF1, 0x50, 0x80, 0x0D, 0x7F, 0xFC]);
    }

    #[test]
    fn crc_of_a_known_pat() {
        let pat = [
            0x00, 0xB0, 0x0D, 0x00, 0x01, 0xC1, 0x00, 0x00, 0x00, 0x01, 0xF0, 0x00,
        ];
        assert_eq!(crc32_mpeg2(&pat), 0x2AB1_04B2);
    }

    proptest! {
        #[test]
        fn packets_are_188_bytes_with_sync_and_counters(len in 0usize..5000, pcr in any::<bool>(), dts in 0u64..1_000_000, cts in 0u64..500) {
            let mut w = TsWriter::new(true, true);
            let mut out = BytesMut::new();
            w.write_tables(&mut out);
            w.write_pes(PID_VIDEO, dts, dts + cts, &vec![0xAB; len], pcr, &mut out);
            prop_assert_eq!(out.len() % PACKET, 0);
            let mut last = None;
            for p in out.chunks(PACKET).skip(2) {
                prop_assert_eq!(p[0], 0x47);
                let counter = p[3] & 0x0F;
                if let Some(l) = last {
                    prop_assert_eq!(counter, (l + 1) & 0x0F);
                }
                last = Some(counter);
            }
        }

        #[test]
        fn parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = AvcConfig::parse(&data);
            let _ = AacConfig::parse(&data);
            if let Ok(c) = AvcConfig::parse(&[1, 0x42, 0, 0x1E, 0xFF, 0xE0, 0]) {
                let _ = annex_b(&c, &data, true);
            }
        }
    }
}
