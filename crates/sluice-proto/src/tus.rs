//! tus 1.0.0 header values (<https://tus.io/protocols/resumable-upload>): `Upload-Metadata`,
//! `Upload-Checksum`, and Sluice's progressive-upload metadata (the minimal transport size).
//! Pure: headers in, typed values out.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub const TUS_VERSION: &str = "1.0.0";
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256";
/// The body type of a PATCH.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Set on every PATCH and HEAD answer once the upload has a file id.
pub const FILE_ID_HEADER: &str = "sluice-file-id";

/// Longest `Upload-Metadata` value accepted; metadata is a few names, not a payload.
pub const MAX_METADATA_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TusError {
    #[error("Upload-Metadata is longer than {MAX_METADATA_LEN} bytes")]
    MetadataTooLong,
    #[error("Upload-Metadata pair {0:?} is malformed (want `key base64value`)")]
    BadPair(String),
    #[error("Upload-Metadata key {0:?} appears twice")]
    RepeatedKey(String),
    #[error("Upload-Metadata value of {0:?} is not UTF-8")]
    NotUtf8(String),
    #[error("Upload-Checksum must be `ALGORITHM BASE64DIGEST` with sha1 or sha256")]
    BadChecksum,
    #[error("q must be a number with 0 < q <= 1")]
    BadQ,
    #[error("mts must be a whole number of bytes no larger than Upload-Length")]
    BadMts,
}

/// Parses `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
/// Keys are ASCII without spaces or commas, each at most once.
pub fn parse_metadata(header: &str) -> Result<BTreeMap<String, String>, TusError> {
    if header.len() > MAX_METADATA_LEN {
        return Err(TusError::MetadataTooLong);
    }
    let mut out = BTreeMap::new();
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default();
        let value = parts.next();
        if parts.next().is_some()
            || key.is_empty()
            || !key.bytes().all(|b| b.is_ascii_graphic() && b != b',')
        {
            return Err(TusError::BadPair(pair.to_owned()));
        }
        let value = match value {
            None => String::new(),
            Some(v) => {
                let raw = STANDARD
                    .decode(v)
                    .map_err(|_| TusError::BadPair(pair.to_owned()))?;
                String::from_utf8(raw).map_err(|_| TusError::NotUtf8(key.to_owned()))?
            }
        };
        if out.insert(key.to_owned(), value).is_some() {
            return Err(TusError::RepeatedKey(key.to_owned()));
        }
    }
    Ok(out)
}

/// The `Upload-Metadata` value for `pairs` (what a client sends).
pub fn encode_metadata<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k} {}", STANDARD.encode(v)))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    Sha1,
    Sha256,
}

/// A parsed `Upload-Checksum`: the digest the PATCH body must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadChecksum {
    pub algorithm: ChecksumAlgorithm,
    pub digest: Vec<u8>,
}

pub fn parse_checksum(header: &str) -> Result<UploadChecksum, TusError> {
    let (name, digest) = header.trim().split_once(' ').ok_or(TusError::BadChecksum)?;
    let (algorithm, len) = match name {
        "sha1" => (ChecksumAlgorithm::Sha1, 20),
        "sha256" => (ChecksumAlgorithm::Sha256, 32),
        _ => return Err(TusError::BadChecksum),
    };
    let digest = STANDARD
        .decode(digest.trim())
        .map_err(|_| TusError::BadChecksum)?;
    if digest.len() != len {
        return Err(TusError::BadChecksum);
    }
    Ok(UploadChecksum { algorithm, digest })
}

/// How much of a file must arrive before it gets its id.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinimalSize {
    /// A share of the whole: `q` of Upload-Length, 0 < q <= 1.
    Share(f64),
    /// An exact number of bytes.
    Bytes(u64),
}

impl MinimalSize {
    /// From the metadata keys `mts` (bytes) or `q`; `None` when neither is given.
    pub fn from_metadata(
        metadata: &BTreeMap<String, String>,
        length: u64,
    ) -> Result<Option<Self>, TusError> {
        if let Some(mts) = metadata.get("mts") {
            let bytes: u64 = mts.trim().parse().map_err(|_| TusError::BadMts)?;
            if bytes > length {
                return Err(TusError::BadMts);
            }
            return Ok(Some(MinimalSize::Bytes(bytes)));
        }
        match metadata.get("q") {
            None => Ok(None),
            Some(q) => Ok(Some(MinimalSize::Share(parse_q(q)?))),
        }
    }

    /// The size in bytes for a file of `length` bytes (at least 1 byte of a non-empty file).
    pub fn bytes_of(self, length: u64) -> u64 {
        match self {
            MinimalSize::Bytes(b) => b.min(length),
            MinimalSize::Share(q) => ((length as f64 * q).ceil() as u64).clamp(1, length.max(1)),
        }
        .min(length)
    }
}

/// A q value: a finite number with 0 < q <= 1.
pub fn parse_q(text: &str) -> Result<f64, TusError> {
    match text.trim().parse::<f64>() {
        Ok(q) if q.is_finite() && q > 0.0 && q <= 1.0 => Ok(q),
        _ => Err(TusError::BadQ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn metadata_as_tus_clients_send_it() {
        // tus-js-client and tuspy: `key base64`, comma separated; an empty value has no space.
        let m =
            parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential,q MC4z")
                .unwrap();
        assert_eq!(m["filename"], "world_domination_plan.pdf");
        assert_eq!(m["is_confidential"], "");
        assert_eq!(m["q"], "0.3");
        assert_eq!(parse_metadata("").unwrap().len(), 0);
        assert!(matches!(parse_metadata("a !!!"), Err(TusError::BadPair(_))));
        assert!(matches!(
            parse_metadata("a YQ==,a Yg=="),
            Err(TusError::RepeatedKey(_))
        ));
        assert!(matches!(
            parse_metadata("a YQ== Yg=="),
            Err(TusError::BadPair(_))
        ));
        assert!(matches!(
            parse_metadata("a /w=="),
            Err(TusError::NotUtf8(_))
        ));
        assert_eq!(
            parse_metadata(&"a,".repeat(3000)),
            Err(TusError::MetadataTooLong)
        );
    }

    #[test]
    fn checksums() {
        let c = parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").unwrap();
        assert_eq!(c.algorithm, ChecksumAlgorithm::Sha1);
        assert_eq!(c.digest.len(), 20);
        assert!(parse_checksum("md5 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").is_err());
        assert!(parse_checksum("sha256 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").is_err());
        assert!(parse_checksum("sha1").is_err());
        assert!(parse_checksum("sha1 ***").is_err());
    }

    #[test]
    fn minimal_sizes() {
        let meta = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), v.to_owned())]);
        assert_eq!(MinimalSize::from_metadata(&BTreeMap::new(), 10), Ok(None));
        let q = MinimalSize::from_metadata(&meta("q", "0.3"), 1000)
            .unwrap()
            .unwrap();
        assert_eq!(q.bytes_of(1000), 300);
        assert_eq!(q.bytes_of(1), 1);
        assert_eq!(q.bytes_of(0), 0);
        let b = MinimalSize::from_metadata(&meta("mts", "123"), 1000)
            .unwrap()
            .unwrap();
        assert_eq!(b.bytes_of(1000), 123);
        for bad in ["0", "-0.1", "1.5", "NaN", "inf", "x", ""] {
            assert_eq!(
                MinimalSize::from_metadata(&meta("q", bad), 10),
                Err(TusError::BadQ),
                "{bad}"
            );
        }
        assert_eq!(
            MinimalSize::from_metadata(&meta("mts", "11"), 10),
            Err(TusError::BadMts)
        );
        assert_eq!(
            MinimalSize::from_metadata(&meta("mts", "-1"), 10),
            Err(TusError::BadMts)
        );
    }

    proptest! {
        #[test]
        fn metadata_roundtrips(pairs in proptest::collection::btree_map("[a-z][a-z0-9_-]{0,12}", "\\PC{0,40}", 0..6)) {
            let header = encode_metadata(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            prop_assert_eq!(parse_metadata(&header).unwrap(), pairs);
        }

        #[test]
        fn never_panics(header in "\\PC{0,200}", length in any::<u64>(), q in "\\PC{0,10}") {
            let _ = parse_metadata(&header);
            let _ = parse_checksum(&header);
            if let Ok(Some(m)) = MinimalSize::from_metadata(&BTreeMap::from([("q".to_owned(), q)]), length) {
                prop_assert!(m.bytes_of(length) <= length);
            }
        }
    }
}
