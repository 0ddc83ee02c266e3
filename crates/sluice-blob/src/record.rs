//! Index records: what the store knows of a blob besides its bytes. Versioned from the start so
//! later releases read what this one wrote.
//!
//! - v1: state, size, time, block size, content type, and (incomplete blobs) the declared total.
//! - v2: v1 followed by the SHA-256 of the blob's bytes, which makes a stored id immutable: a
//!   second write of the key must bring exactly these bytes (see `BlobWriter::commit`).
//! - v3: v2 followed by where the bytes are when that is not the blob's own data file: a
//!   record in a volume (`1`, volume id u64, record offset u64, body offset from the record's
//!   start u32; all LE). Blobs in data files are still written as v1/v2, byte for byte.

use crate::BlobError;

const RECORD_V1: u8 = 1;
const RECORD_V2: u8 = 2;
const RECORD_V3: u8 = 3;
const IN_VOLUME: u8 = 1;
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

/// Where a blob's bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Location {
    /// Its own data file, as every blob stored before volumes.
    #[default]
    DataFile,
    /// A record in a volume: the volume's id, where the record starts in it, and where its
    /// body starts, from the record's start.
    Volume { volume: u64, offset: u64, body: u32 },
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
    /// Where the bytes are (v3 when not a data file).
    pub location: Location,
}

impl BlobMeta {
    pub fn encode(&self) -> Vec<u8> {
        let ct = self.content_type.as_bytes();
        let ct_len = u16::try_from(ct.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(64 + ct.len());
        let in_volume = self.location != Location::DataFile;
        out.push(match (in_volume, self.sha256.is_some()) {
            (true, _) => RECORD_V3,
            (false, true) => RECORD_V2,
            (false, false) => RECORD_V1,
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
        } else if in_volume {
            // v3 always carries a digest (volumes are newer than digests).
            out.extend_from_slice(&[0u8; SHA256_LEN]);
        }
        if let Location::Volume {
            volume,
            offset,
            body,
        } = self.location
        {
            out.push(IN_VOLUME);
            out.extend_from_slice(&volume.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            out.extend_from_slice(&body.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, BlobError> {
        let bad = || BlobError::BadRecord;
        let (&version, rest) = bytes.split_first().ok_or_else(bad)?;
        if !(RECORD_V1..=RECORD_V3).contains(&version) {
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
            RECORD_V1 => None,
            _ => Some(take::<SHA256_LEN>(rest, digest_at)?),
        };
        let location = match version {
            RECORD_V3 => {
                let at = digest_at + SHA256_LEN;
                if rest.get(at) != Some(&IN_VOLUME) {
                    return Err(bad());
                }
                Location::Volume {
                    volume: u64::from_le_bytes(take(rest, at + 1)?),
                    offset: u64::from_le_bytes(take(rest, at + 9)?),
                    body: u32::from_le_bytes(take(rest, at + 17)?),
                }
            }
            _ => Location::DataFile,
        };
        Ok(Self {
            size,
            content_type,
            created_ms,
            block_size,
            state,
            sha256,
            location,
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

    #[test]
    fn data_file_records_are_written_as_before_and_volume_ones_as_v3() {
        let mut m = BlobMeta {
            size: 5,
            content_type: "a/b".into(),
            created_ms: 9,
            block_size: 65536,
            state: BlobState::Complete,
            sha256: Some([7; 32]),
            location: Location::DataFile,
        };
        let v2 = m.encode();
        assert_eq!(v2[0], 2);
        assert_eq!(v2.len(), 2 + 8 + 8 + 4 + 2 + 3 + 32, "v2, byte for byte");
        m.location = Location::Volume {
            volume: 4,
            offset: 1024,
            body: 47,
        };
        let v3 = m.encode();
        assert_eq!(v3[0], 3);
        assert_eq!(&v3[1..v2.len()], &v2[1..], "v3 is v2 and then the place");
        assert_eq!(v3[v2.len()], 1);
        assert_eq!(&v3[v2.len() + 1..v2.len() + 9], &4u64.to_le_bytes());
        assert_eq!(&v3[v2.len() + 9..v2.len() + 17], &1024u64.to_le_bytes());
        assert_eq!(&v3[v2.len() + 17..], &47u32.to_le_bytes());
        assert_eq!(BlobMeta::decode(&v3).unwrap(), m);
        assert!(BlobMeta::decode(&v3[..v3.len() - 1]).is_err(), "cut short");
    }

    proptest! {
        #[test]
        fn roundtrip(size in any::<u64>(), created_ms in any::<u64>(), bs in any::<u32>(), ct in "[ -~]{0,200}", code in 1u8..=3, total in any::<u64>(), sha256 in any::<[u8; 32]>(), place in proptest::option::of((any::<u64>(), any::<u64>(), any::<u32>()))) {
            let state = match code {
                1 => BlobState::Complete,
                2 => BlobState::Partial { total },
                _ => BlobState::Abandoned { total },
            };
            let location = match place {
                None => Location::DataFile,
                Some((volume, offset, body)) => Location::Volume { volume, offset, body },
            };
            let m = BlobMeta { size, content_type: ct, created_ms, block_size: bs, state, sha256: Some(sha256), location };
            prop_assert_eq!(BlobMeta::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn v2_without_its_digest_is_refused(cut in 1usize..32) {
            let m = BlobMeta { size: 5, content_type: "a/b".into(), created_ms: 1, block_size: 4096, state: BlobState::Complete, sha256: Some([7; 32]), location: Location::DataFile };
            let bytes = m.encode();
            prop_assert!(BlobMeta::decode(&bytes[..bytes.len() - cut]).is_err());
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = BlobMeta::decode(&bytes);
        }
    }
}
