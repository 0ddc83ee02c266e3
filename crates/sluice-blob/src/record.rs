//! Index records: what the store knows of a blob besides its bytes. Versioned from the start so
//! later releases read what this one wrote.
//!
//! - v1: state, size, time, block size, content type, and (incomplete blobs) the declared total.
//! - v2: v1 followed by the SHA-256 of the blob's bytes, which makes a stored id immutable: a
//!   second write of the key must bring exactly these bytes (see `BlobWriter::commit`).

use crate::BlobError;

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
/// Length of a SHA-256 digest.
pub const SHA256_LEN: usize = 32;

/// Where a blob stands in its life. A progressive upload is stored first as the prefix that
/// has arrived (`Partial`), replaced by longer prefixes and finally by the whole file
/// (`Complete`), or left as it stands when its sender goes away (`Abandoned`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Complete,
    /// A prefix of a file of `total` bytes that is still arriving.
    Partial {
        total: u64,
    },
    /// A prefix of a file of `total` bytes whose sender stopped: it will not grow.
    Abandoned {
        total: u64,
    },
}

impl BlobState {
    fn code(self) -> u8 {
        match self {
            BlobState::Complete => 1,
            BlobState::Partial { .. } => 2,
            BlobState::Abandoned { .. } => 3,
        }
    }

    pub fn is_complete(self) -> bool {
        self == BlobState::Complete
    }

    /// The declared length of the whole file, for a blob still short of it.
    pub fn total(self) -> Option<u64> {
        match self {
            BlobState::Complete => None,
            BlobState::Partial { total } | BlobState::Abandoned { total } => Some(total),
        }
    }
}

/// What the index holds for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobMeta {
    /// Logical length in bytes.
    pub size: u64,
    pub content_type: String,
    /// Milliseconds since the Unix epoch when the blob was committed.
    pub created_ms: u64,
    pub block_size: u32,
    pub state: BlobState,
    /// SHA-256 of the bytes; `None` only for records written before v2.
    pub sha256: Option<[u8; SHA256_LEN]>,
}

impl BlobMeta {
    pub fn encode(&self) -> Vec<u8> {
        let ct = self.content_type.as_bytes();
        let ct_len = u16::try_from(ct.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(64 + ct.len());
        out.push(if self.sha256.is_some() {
            RECORD_V2
        } else {
            RECORD_V1
        });
        out.push(self.state.code());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&ct_len.to_le_bytes());
        out.extend_from_slice(&ct[..usize::from(ct_len)]);
        // Incomplete blobs carry their declared total after the content type; complete ones
        // are byte-for-byte what the first release wrote.
        if let Some(total) = self.state.total() {
            out.extend_from_slice(&total.to_le_bytes());
        }
        if let Some(digest) = &self.sha256 {
            out.extend_from_slice(digest);
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BlobError> {
        let bad = || BlobError::BadRecord;
        let (&version, rest) = bytes.split_first().ok_or_else(bad)?;
        if version != RECORD_V1 && version != RECORD_V2 {
            return Err(bad());
        }
        let (&state_code, rest) = rest.split_first().ok_or_else(bad)?;
        let size = u64::from_le_bytes(take(rest, 0)?);
        let created_ms = u64::from_le_bytes(take(rest, 8)?);
        let block_size = u32::from_le_bytes(take(rest, 16)?);
        let ct_len = usize::from(u16::from_le_bytes(take(rest, 20)?));
        let ct = rest.get(22..22 + ct_len).ok_or_else(bad)?;
        let content_type = String::from_utf8(ct.to_vec()).map_err(|_| bad())?;
        let total = || take(rest, 22 + ct_len).map(u64::from_le_bytes);
        let state = match state_code {
            1 => BlobState::Complete,
            2 => BlobState::Partial { total: total()? },
            3 => BlobState::Abandoned { total: total()? },
            _ => return Err(bad()),
        };
        let digest_at = 22 + ct_len + if state.is_complete() { 0 } else { 8 };
        let sha256 = match version {
            RECORD_V2 => Some(take::<SHA256_LEN>(rest, digest_at)?),
            _ => None,
        };
        Ok(Self {
            size,
            content_type,
            created_ms,
            block_size,
            state,
            sha256,
        })
    }
}

fn take<const N: usize>(bytes: &[u8], at: usize) -> Result<[u8; N], BlobError> {
    bytes
        .get(at..at + N)
        .and_then(|s| s.try_into().ok())
        .ok_or(BlobError::BadRecord)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_v1_record_reads_as_before() {
        // Bytes the first release wrote for a complete 5-byte "a/b" file.
        let mut v1 = vec![1, 1];
        v1.extend_from_slice(&5u64.to_le_bytes());
        v1.extend_from_slice(&9u64.to_le_bytes());
        v1.extend_from_slice(&65536u32.to_le_bytes());
        v1.extend_from_slice(&3u16.to_le_bytes());
        v1.extend_from_slice(b"a/b");
        let m = BlobMeta::decode(&v1).unwrap();
        assert_eq!((m.size, m.created_ms, m.sha256), (5, 9, None));
        assert_eq!(
            m.encode(),
            v1,
            "a record without a digest is still written as v1"
        );
    }

    proptest! {
        #[test]
        fn roundtrip(size in any::<u64>(), created_ms in any::<u64>(), bs in any::<u32>(), ct in "[ -~]{0,200}", code in 1u8..=3, total in any::<u64>(), sha256 in proptest::option::of(any::<[u8; 32]>())) {
            let state = match code {
                1 => BlobState::Complete,
                2 => BlobState::Partial { total },
                _ => BlobState::Abandoned { total },
            };
            let m = BlobMeta { size, content_type: ct, created_ms, block_size: bs, state, sha256 };
            prop_assert_eq!(BlobMeta::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn v2_without_its_digest_is_refused(cut in 1usize..32) {
            let m = BlobMeta { size: 5, content_type: "a/b".into(), created_ms: 1, block_size: 4096, state: BlobState::Complete, sha256: Some([7; 32]) };
            let bytes = m.encode();
            prop_assert!(BlobMeta::decode(&bytes[..bytes.len() - cut]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = BlobMeta::decode(&bytes);
        }
    }
}
