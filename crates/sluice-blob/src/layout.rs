//! The on-disk layout of one data file (format version 1), pure and I/O-free.
//!
//! ```text
//! header  16 bytes: b"SLB1", format u16 LE, reserved u16, block_size u32 LE, reserved u32
//! blocks  [data: block_size bytes (the last may be shorter)][crc32c(data): u32 LE] ...
//! ```
//! A checksum sits right after its block so one read fetches both, and the place of any
//! logical byte is arithmetic: no table to load before a ranged read.

pub const MAGIC: &[u8; 4] = b"SLB1";
pub const FORMAT_VERSION: u16 = 1;
pub const HEADER_LEN: u64 = 16;
pub const CRC_LEN: u64 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    pub block_size: u32,
}

impl BlockLayout {
    pub fn new(block_size: u32) -> Self {
        Self { block_size }
    }

    pub fn header(&self) -> [u8; HEADER_LEN as usize] {
        let mut h = [0u8; HEADER_LEN as usize];
        h[..4].copy_from_slice(MAGIC);
        h[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[8..12].copy_from_slice(&self.block_size.to_le_bytes());
        h
    }

    /// Reads the block size from a header, if the header is one we wrote.
    pub fn parse_header(h: &[u8]) -> Option<Self> {
        if h.len() < HEADER_LEN as usize || &h[..4] != MAGIC {
            return None;
        }
        let version = u16::from_le_bytes([h[4], h[5]]);
        let block_size = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        (version == FORMAT_VERSION && block_size > 0).then_some(Self { block_size })
    }

    fn stride(&self) -> u64 {
        u64::from(self.block_size) + CRC_LEN
    }

    /// Length on disk of a file holding `len` logical bytes.
    pub fn file_len(&self, len: u64) -> u64 {
        let bs = u64::from(self.block_size);
        HEADER_LEN + len + len.div_ceil(bs) * CRC_LEN
    }

    /// File offset of the start of block `index`.
    pub fn block_offset(&self, index: u64) -> u64 {
        HEADER_LEN + index * self.stride()
    }

    /// Length of the data of block `index` in a file of `len` logical bytes.
    pub fn block_data_len(&self, index: u64, len: u64) -> u64 {
        let bs = u64::from(self.block_size);
        len.saturating_sub(index * bs).min(bs)
    }

    /// Appends `data` (at most one block) and its checksum to `out`.
    pub fn encode_block(data: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(data);
        out.extend_from_slice(&crc32c::crc32c(data).to_le_bytes());
    }

    /// Checks one stored block (data then checksum) and returns its data.
    pub fn verify_block(stored: &[u8]) -> Option<&[u8]> {
        let split = stored.len().checked_sub(CRC_LEN as usize)?;
        let (data, crc) = stored.split_at(split);
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        (crc32c::crc32c(data) == want).then_some(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_roundtrip() {
        let l = BlockLayout::new(65536);
        assert_eq!(BlockLayout::parse_header(&l.header()), Some(l));
        let mut bad = l.header();
        bad[4] = 9;
        assert_eq!(BlockLayout::parse_header(&bad), None);
        assert_eq!(BlockLayout::parse_header(b"SLB"), None);
    }

    #[test]
    fn detects_flipped_bit() {
        let mut out = Vec::new();
        BlockLayout::encode_block(b"hello world", &mut out);
        assert_eq!(BlockLayout::verify_block(&out), Some(&b"hello world"[..]));
        out[3] ^= 0x10;
        assert_eq!(BlockLayout::verify_block(&out), None);
        assert_eq!(BlockLayout::verify_block(&[1, 2]), None);
    }

    proptest! {
        #[test]
        fn offsets_match_encoding(len in 0usize..5000, bs in 1u32..700) {
            let l = BlockLayout::new(bs);
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut file = l.header().to_vec();
            for chunk in data.chunks(bs as usize) {
                BlockLayout::encode_block(chunk, &mut file);
            }
            prop_assert_eq!(file.len() as u64, l.file_len(len as u64));
            let blocks = (len as u64).div_ceil(u64::from(bs));
            for i in 0..blocks {
                let off = l.block_offset(i) as usize;
                let n = l.block_data_len(i, len as u64) as usize;
                let got = BlockLayout::verify_block(&file[off..off + n + 4]);
                prop_assert_eq!(got, Some(&data[i as usize * bs as usize..][..n]));
            }
        }
    }
}
