//! The volume file format (version 1), pure and I/O-free: small files packed one after another
//! into large append-only volumes, each record self-describing, so a volume can be scanned,
//! verified and its index rebuilt without the index.
//!
//! ```text
//! volume header (32 bytes)
//!   0  b"SLV1"
//!   4  format        u16 LE (1)
//!   6  reserved      u16
//!   8  volume id     u64 LE
//!  16  block size    u32 LE (of every record's body)
//!  20  reserved      [u8; 8]
//!  28  crc32c(0..28) u32 LE
//!
//! record, at any offset after the header (records follow each other, nothing between them)
//!   0  b"SR"
//!   2  kind          u8 (1: put, 2: delete)
//!   3  flags         u8 (reserved, 0)
//!   4  meta length   u32 LE (m: the index record of the file, `record::BlobMeta::encode`)
//!   8  key           [u8; 16]
//!  24  length        u64 LE (n: the file's bytes; 0 for a delete)
//!  32  sequence      u64 LE (store-wide, rising: which version of a key is newest)
//!  40  meta          [u8; m]
//!  40+m  crc32c(0..40+m) u32 LE
//!  44+m  body: n bytes in blocks of `block size`, each followed by its crc32c, as in data
//!        files (`layout`)
//! ```
//!
//! A record is whole only if its header checksum holds and its body is all there; a scan
//! stops at the first record that is not, and everything from there on is a torn tail (an
//! append a crash cut short), to be cut off.

use sluice_proto::BlobKey;
use sluice_proto::fileid::KEY_BYTES;

use crate::layout::{BlockLayout, CRC_LEN};

pub const MAGIC: &[u8; 4] = b"SLV1";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 32;
pub const RECORD_MAGIC: &[u8; 2] = b"SR";
/// A record's fixed part, before its meta.
const FIXED_LEN: usize = 40;
/// Longest meta a record may carry (an index record is well under 1 KiB).
pub const MAX_META: usize = 64 << 10;
/// Longest record header: fixed part, meta and checksum.
pub const MAX_HEADER_LEN: usize = FIXED_LEN + MAX_META + CRC_LEN as usize;

/// What a volume file starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VolumeHeader {
    pub volume_id: u64,
    pub block_size: u32,
}

impl VolumeHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..4].copy_from_slice(MAGIC);
        h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[8..16].copy_from_slice(&self.volume_id.to_le_bytes());
        h[16..20].copy_from_slice(&self.block_size.to_le_bytes());
        let crc = crc32c::crc32c(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// The header, if `h` starts with one this format wrote and its checksum holds.
    pub fn parse(h: &[u8]) -> Option<Self> {
        let h = h.get(..HEADER_LEN as usize)?;
        if &h[..4] != MAGIC
            || u16::from_le_bytes([h[4], h[5]]) != FORMAT_VERSION
            || crc32c::crc32c(&h[..28]) != le32(&h[28..32])
        {
            return None;
        }
        let block_size = le32(&h[16..20]);
        (block_size > 0).then(|| Self {
            volume_id: le64(&h[8..16]),
            block_size,
        })
    }
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A file's bytes (and its index record, as meta).
    Put,
    /// The key is deleted from here on (its earlier records are dead).
    Delete,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Put => 1,
            RecordKind::Delete => 2,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(RecordKind::Put),
            2 => Some(RecordKind::Delete),
            _ => None,
        }
    }
}

/// A record's header: everything but the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    pub key: BlobKey,
    /// The file's length in bytes (0 for a delete).
    pub length: u64,
    pub sequence: u64,
    /// The file's index record (`BlobMeta::encode`), so the index can be rebuilt from here.
    pub meta: Vec<u8>,
}

impl RecordHeader {
    /// Bytes of the header (fixed part, meta and checksum).
    pub fn encoded_len(&self) -> u64 {
        (FIXED_LEN + self.meta.len()) as u64 + CRC_LEN
    }

    /// Bytes of the whole record with a body in blocks of `block_size`.
    pub fn record_len(&self, block_size: u32) -> u64 {
        let body = match self.kind {
            RecordKind::Put => body_len(self.length, block_size),
            RecordKind::Delete => 0,
        };
        self.encoded_len().saturating_add(body)
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(RECORD_MAGIC);
        out.push(self.kind.code());
        out.push(0);
        out.extend_from_slice(&(self.meta.len() as u32).to_le_bytes());
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.length.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.meta);
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }
}

/// Bytes a body of `length` takes in blocks of `block_size`, checksums included.
pub fn body_len(length: u64, block_size: u32) -> u64 {
    // Saturating: a damaged header may claim any length; it then runs past the volume's end.
    length.saturating_add(
        length
            .div_ceil(u64::from(block_size.max(1)))
            .saturating_mul(CRC_LEN),
    )
}

/// Appends a whole record (header, then `data` in checksummed blocks) to `out`. `data` must be
/// `header.length` bytes for a put, empty for a delete.
pub fn encode_record(header: &RecordHeader, data: &[u8], block_size: u32, out: &mut Vec<u8>) {
    debug_assert_eq!(data.len() as u64, header.length);
    header.encode_into(out);
    if header.kind == RecordKind::Put {
        for block in data.chunks(block_size.max(1) as usize) {
            BlockLayout::encode_block(block, out);
        }
    }
}

/// Why a scan stopped before the end of what it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The bytes end inside a record: an append a crash cut short (or one still under way).
    Truncated,
    /// Bytes that are no record, or a record whose checksums fail: damage, or a torn write.
    Damaged,
}

/// A record found by a scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Where the record starts in the volume.
    pub offset: u64,
    pub header: RecordHeader,
    /// Where its body starts in the volume.
    pub body_offset: u64,
}

/// What a scan of a volume's bytes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub records: Vec<Found>,
    /// Where the last whole record ends: the volume's length once a torn tail is cut.
    pub valid_end: u64,
    /// Why it stopped before the end, if it did.
    pub stop: Option<Stop>,
}

/// The header of the record at the start of `bytes`: `Ok(None)` when `bytes` ends before the
/// header does, `Err` when they are no record of this format.
pub fn parse_record_header(bytes: &[u8]) -> Result<Option<RecordHeader>, Stop> {
    if bytes.len() < FIXED_LEN {
        // A torn header may still show its magic is wrong.
        let seen = bytes.len().min(2);
        return if bytes[..seen] == RECORD_MAGIC[..seen] {
            Ok(None)
        } else {
            Err(Stop::Damaged)
        };
    }
    if &bytes[..2] != RECORD_MAGIC || bytes[3] != 0 {
        return Err(Stop::Damaged);
    }
    let kind = RecordKind::from_code(bytes[2]).ok_or(Stop::Damaged)?;
    let meta_len = le32(&bytes[4..8]) as usize;
    if meta_len > MAX_META {
        return Err(Stop::Damaged);
    }
    let end = FIXED_LEN + meta_len;
    let Some(crc) = bytes.get(end..end + CRC_LEN as usize) else {
        return Ok(None);
    };
    if crc32c::crc32c(&bytes[..end]) != le32(crc) {
        return Err(Stop::Damaged);
    }
    let mut key = [0u8; KEY_BYTES];
    key.copy_from_slice(&bytes[8..24]);
    let length = le64(&bytes[24..32]);
    if kind == RecordKind::Delete && length != 0 {
        return Err(Stop::Damaged);
    }
    Ok(Some(RecordHeader {
        kind,
        key: BlobKey::from_bytes(key),
        length,
        sequence: le64(&bytes[32..40]),
        meta: bytes[FIXED_LEN..end].to_vec(),
    }))
}

/// Scans the records of a volume whose bytes from `start` (a record boundary, usually the end
/// of the header) are `bytes`, checking every header and, with `verify_bodies`, every block.
pub fn scan(bytes: &[u8], start: u64, block_size: u32, verify_bodies: bool) -> Scan {
    let mut records = Vec::new();
    let mut at = 0usize;
    let stop = loop {
        if at == bytes.len() {
            break None;
        }
        let header = match parse_record_header(&bytes[at..]) {
            Ok(Some(h)) => h,
            Ok(None) => break Some(Stop::Truncated),
            Err(stop) => break Some(stop),
        };
        let Ok(total) = usize::try_from(header.record_len(block_size)) else {
            break Some(Stop::Damaged);
        };
        let Some(record) = at.checked_add(total).and_then(|end| bytes.get(at..end)) else {
            break Some(Stop::Truncated);
        };
        let body = &record[header.encoded_len() as usize..];
        if verify_bodies && !body_holds(body, block_size) {
            break Some(Stop::Damaged);
        }
        records.push(Found {
            offset: start + at as u64,
            body_offset: start + (at as u64) + header.encoded_len(),
            header,
        });
        at += total;
    };
    Scan {
        records,
        valid_end: start + at as u64,
        stop,
    }
}

/// Whether every block of a stored body checks out.
fn body_holds(body: &[u8], block_size: u32) -> bool {
    let stride = block_size.max(1) as usize + CRC_LEN as usize;
    body.chunks(stride)
        .all(|stored| BlockLayout::verify_block(stored).is_some())
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn put(key: u8, data: &[u8], sequence: u64) -> RecordHeader {
        RecordHeader {
            kind: RecordKind::Put,
            key: BlobKey::from_bytes([key; KEY_BYTES]),
            length: data.len() as u64,
            sequence,
            meta: vec![7, key],
        }
    }

    #[test]
    fn the_header_has_the_documented_bytes() {
        let h = VolumeHeader {
            volume_id: 3,
            block_size: 65536,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..4], b"SLV1");
        assert_eq!(&bytes[4..6], &[1, 0]);
        assert_eq!(&bytes[8..16], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[16..20], &[0, 0, 1, 0]);
        assert_eq!(VolumeHeader::parse(&bytes), Some(h));
        let mut flipped = bytes;
        flipped[9] ^= 1;
        assert_eq!(
            VolumeHeader::parse(&flipped),
            None,
            "the checksum covers it"
        );
    }

    #[test]
    fn a_record_has_the_documented_bytes() {
        let mut out = Vec::new();
        let header = put(0xab, b"hello", 9);
        encode_record(&header, b"hello", 4, &mut out);
        assert_eq!(&out[..4], &[b'S', b'R', 1, 0]);
        assert_eq!(&out[4..8], &[2, 0, 0, 0], "meta length");
        assert_eq!(&out[8..24], &[0xab; 16]);
        assert_eq!(&out[24..32], &[5, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[32..40], &[9, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[40..42], &[7, 0xab], "meta");
        // Then the header's checksum and the body: "hell" + crc, "o" + crc.
        assert_eq!(&out[46..50], b"hell");
        assert_eq!(&out[54..55], b"o");
        assert_eq!(out.len() as u64, header.record_len(4));
        assert_eq!(out.len(), 46 + 4 + 4 + 1 + 4);
    }

    #[test]
    fn a_scan_finds_puts_and_deletes_and_stops_at_a_torn_tail() {
        let mut volume = Vec::new();
        let a = put(1, b"first file", 1);
        let b = put(2, &[9u8; 300], 2);
        let gone = RecordHeader {
            kind: RecordKind::Delete,
            key: a.key,
            length: 0,
            sequence: 3,
            meta: Vec::new(),
        };
        encode_record(&a, b"first file", 64, &mut volume);
        encode_record(&b, &[9u8; 300], 64, &mut volume);
        encode_record(&gone, b"", 64, &mut volume);
        let whole = volume.len() as u64;
        let scan = scan(&volume, HEADER_LEN, 64, true);
        assert_eq!(scan.stop, None);
        assert_eq!(scan.valid_end, HEADER_LEN + whole);
        let kinds: Vec<_> = scan
            .records
            .iter()
            .map(|f| (f.header.kind, f.header.sequence))
            .collect();
        assert_eq!(
            kinds,
            [
                (RecordKind::Put, 1),
                (RecordKind::Put, 2),
                (RecordKind::Delete, 3)
            ]
        );
        assert_eq!(
            scan.records[1].body_offset,
            scan.records[1].offset + b.encoded_len()
        );

        // A fourth record cut short by a crash.
        let mut torn = volume.clone();
        let mut last = Vec::new();
        encode_record(&put(4, &[1u8; 200], 4), &[1u8; 200], 64, &mut last);
        torn.extend_from_slice(&last[..last.len() - 10]);
        let cut = super::scan(&torn, HEADER_LEN, 64, true);
        assert_eq!(cut.stop, Some(Stop::Truncated));
        assert_eq!(
            cut.valid_end,
            HEADER_LEN + whole,
            "the torn record is cut off"
        );
        assert_eq!(cut.records.len(), 3);
    }

    #[test]
    fn a_flipped_body_byte_stops_a_verifying_scan_there() {
        let mut volume = Vec::new();
        encode_record(&put(1, &[5u8; 100], 1), &[5u8; 100], 32, &mut volume);
        let first = volume.len() as u64;
        encode_record(&put(2, &[6u8; 100], 2), &[6u8; 100], 32, &mut volume);
        let at = volume.len() - 20;
        volume[at] ^= 0x10;
        let scan = scan(&volume, 0, 32, true);
        assert_eq!(scan.stop, Some(Stop::Damaged));
        assert_eq!(scan.valid_end, first);
        // Without verifying bodies the headers still hold.
        assert_eq!(super::scan(&volume, 0, 32, false).records.len(), 2);
    }

    proptest! {
        #[test]
        fn records_scan_back_as_written_and_any_cut_ends_on_a_boundary(
            files in proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..8),
            block in 1u32..100,
            cut in any::<prop::sample::Index>(),
        ) {
            let mut volume = Vec::new();
            let mut ends = vec![0u64];
            for (i, (key, data)) in files.iter().enumerate() {
                encode_record(&put(*key, data, i as u64), data, block, &mut volume);
                ends.push(volume.len() as u64);
            }
            let whole = scan(&volume, 0, block, true);
            prop_assert_eq!(whole.stop, None);
            prop_assert_eq!(whole.records.len(), files.len());
            for (found, (key, data)) in whole.records.iter().zip(&files) {
                prop_assert_eq!(found.header.key, BlobKey::from_bytes([*key; KEY_BYTES]));
                prop_assert_eq!(found.header.length, data.len() as u64);
            }
            let at = cut.index(volume.len() + 1);
            let part = scan(&volume[..at], 0, block, true);
            prop_assert!(ends.contains(&part.valid_end), "{} not a boundary", part.valid_end);
            prop_assert!(part.valid_end <= at as u64);
            prop_assert_eq!(part.stop.is_none(), part.valid_end == at as u64);
        }

        #[test]
        fn garbage_never_panics_and_never_yields_a_record_past_it(bytes in proptest::collection::vec(any::<u8>(), 0..400), block in 1u32..64) {
            let scan = scan(&bytes, 0, block, true);
            prop_assert!(scan.valid_end <= bytes.len() as u64);
        }
    }
}
