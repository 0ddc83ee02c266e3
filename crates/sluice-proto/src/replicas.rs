//! Replica batches: many small files pushed to a peer in one request
//! (`POST /v1/internal/replicas`), so a group's second copy costs one request per batch of
//! uploads instead of one per file. Pure: the storage role does the I/O.
//!
//! ```text
//! body     b"SRB1", then records one after another until the body ends
//! record   u8 id length, file id (ASCII)
//!          u8 content type length, content type (ASCII)
//!          [u8; 32] SHA-256 of the file
//!          u32 LE length n, then n bytes: the whole file
//! ```
//!
//! The answer is [`ReplicaResults`]: one status per record, in order, as the one-file
//! `PUT /v1/internal/blobs/{id}` would have answered it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

pub const MAGIC: &[u8; 4] = b"SRB1";
/// The body's media type.
pub const CONTENT_TYPE: &str = "application/x-sluice-replicas";
/// Records in one batch at most.
pub const MAX_RECORDS: usize = 512;

/// One record's header; its bytes are `body` of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHead {
    pub id: String,
    pub content_type: String,
    pub sha256: [u8; 32],
    pub body: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("not a replica batch (no SRB1 magic)")]
    BadMagic,
    #[error("the batch ends inside record {0}")]
    Truncated(usize),
    #[error("record {0} has a file id or content type that is not ASCII")]
    NotAscii(usize),
    #[error("more than {MAX_RECORDS} records in one batch")]
    TooMany,
    #[error("record {index} is {len} bytes, above the limit of {limit}")]
    TooLarge { index: usize, len: u64, limit: u64 },
}

/// Appends one record (header and file bytes) to `out`, which must start with [`MAGIC`]
/// (see [`start`]). `id` and `content_type` are at most 255 bytes (longer ones are cut:
/// file ids and content types this build accepts are far shorter).
pub fn push(out: &mut Vec<u8>, id: &str, content_type: &str, sha256: &[u8; 32], body: &[u8]) {
    for text in [id, content_type] {
        let text = &text.as_bytes()[..text.len().min(255)];
        out.push(text.len() as u8);
        out.extend_from_slice(text);
    }
    out.extend_from_slice(sha256);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// A batch body with no records yet.
pub fn start(capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity + MAGIC.len());
    out.extend_from_slice(MAGIC);
    out
}

/// The records of a batch, each file at most `max_file` bytes.
pub fn parse(bytes: &[u8], max_file: u64) -> Result<Vec<ReplicaHead>, BatchError> {
    let mut rest = bytes.strip_prefix(MAGIC).ok_or(BatchError::BadMagic)?;
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while !rest.is_empty() {
        let index = out.len();
        if index == MAX_RECORDS {
            return Err(BatchError::TooMany);
        }
        let truncated = BatchError::Truncated(index);
        let mut text = || -> Result<String, BatchError> {
            let (&len, tail) = rest.split_first().ok_or(truncated.clone())?;
            let len = usize::from(len);
            let word = tail.get(..len).ok_or(truncated.clone())?;
            if !word.is_ascii() {
                return Err(BatchError::NotAscii(index));
            }
            rest = &tail[len..];
            at += 1 + len;
            Ok(String::from_utf8_lossy(word).into_owned())
        };
        let id = text()?;
        let content_type = text()?;
        let sha256: [u8; 32] = rest
            .get(..32)
            .and_then(|s| s.try_into().ok())
            .ok_or(truncated.clone())?;
        let len_bytes: [u8; 4] = rest
            .get(32..36)
            .and_then(|s| s.try_into().ok())
            .ok_or(truncated.clone())?;
        let len = u32::from_le_bytes(len_bytes);
        if u64::from(len) > max_file {
            return Err(BatchError::TooLarge {
                index,
                len: u64::from(len),
                limit: max_file,
            });
        }
        let len = len as usize;
        if rest.len() - 36 < len {
            return Err(truncated);
        }
        let body = at + 36..at + 36 + len;
        rest = &rest[36 + len..];
        at = body.end;
        out.push(ReplicaHead {
            id,
            content_type,
            sha256,
            body,
        });
    }
    Ok(out)
}

/// What became of each record of a batch, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaResults {
    pub results: Vec<ReplicaResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaResult {
    /// The status the one-file `PUT` would have answered (201 stored, 410 deleted here, 409
    /// other bytes under that id, 507 no room, ...).
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_batch_round_trips_byte_for_byte() {
        let mut body = start(64);
        push(&mut body, "g1/abc", "image/jpeg", &[1; 32], b"hello");
        push(&mut body, "g1/def", "", &[2; 32], b"");
        let mut expected = b"SRB1".to_vec();
        expected.extend_from_slice(b"\x06g1/abc\x0aimage/jpeg");
        expected.extend_from_slice(&[1; 32]);
        expected.extend_from_slice(&5u32.to_le_bytes());
        expected.extend_from_slice(b"hello");
        expected.extend_from_slice(b"\x06g1/def\x00");
        expected.extend_from_slice(&[2; 32]);
        expected.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(body, expected);
        let heads = parse(&body, 100).unwrap();
        assert_eq!(heads.len(), 2);
        assert_eq!(heads[0].id, "g1/abc");
        assert_eq!(heads[0].content_type, "image/jpeg");
        assert_eq!(&body[heads[0].body.clone()], b"hello");
        assert_eq!(heads[1].body.len(), 0);
        assert_eq!(parse(b"SRB1", 100).unwrap(), Vec::new(), "an empty batch");
    }

    #[test]
    fn bad_batches_are_refused_by_what_is_wrong() {
        let mut body = start(64);
        push(&mut body, "g1/abc", "a/b", &[1; 32], b"hello");
        assert_eq!(parse(&body[1..], 100), Err(BatchError::BadMagic));
        for cut in 5..body.len() {
            assert_eq!(
                parse(&body[..cut], 100),
                Err(BatchError::Truncated(0)),
                "cut at {cut}"
            );
        }
        assert!(matches!(
            parse(&body, 4),
            Err(BatchError::TooLarge {
                index: 0,
                len: 5,
                limit: 4
            })
        ));
        let mut odd = start(8);
        push(&mut odd, "g1/\u{e9}", "a/b", &[0; 32], b"");
        assert_eq!(parse(&odd, 100), Err(BatchError::NotAscii(0)));
        let mut many = start(0);
        for _ in 0..=MAX_RECORDS {
            push(&mut many, "g1/a", "a/b", &[0; 32], b"");
        }
        assert_eq!(parse(&many, 100), Err(BatchError::TooMany));
    }

    proptest! {
        #[test]
        fn what_is_pushed_is_parsed(records in proptest::collection::vec(("[a-z0-9/]{0,40}", "[ -~]{0,60}", any::<[u8; 32]>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let mut body = start(0);
            for (id, ct, sha, data) in &records {
                push(&mut body, id, ct, sha, data);
            }
            let heads = parse(&body, 1000).unwrap();
            prop_assert_eq!(heads.len(), records.len());
            for (head, (id, ct, sha, data)) in heads.iter().zip(&records) {
                prop_assert_eq!(&head.id, id);
                prop_assert_eq!(&head.content_type, ct);
                prop_assert_eq!(&head.sha256, sha);
                prop_assert_eq!(&body[head.body.clone()], &data[..]);
            }
        }

        #[test]
        fn garbage_never_panics_and_bodies_stay_inside(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut input = MAGIC.to_vec();
            input.extend_from_slice(&bytes);
            if let Ok(heads) = parse(&input, u64::MAX) {
                for head in heads {
                    prop_assert!(head.body.end <= input.len());
                }
            }
        }
    }
}
