//! File ids: `GROUP/KEY`, e.g. `g1/k3v7q2...`.
//!
//! The group tells every node and tracker where the file lives without a lookup. The key is 128
//! random bits minted by the storage node that takes the upload (see ARCHITECTURE.md, "File ids"),
//! written in lowercase RFC 4648 base32 without padding: 26 characters, URL-safe, case-stable on
//! any filesystem. Parsing is strict and canonical: one id has exactly one spelling, so it can key
//! caches, ETags and signatures.

use std::fmt;
use std::str::FromStr;

/// Bytes of randomness in a key.
pub const KEY_BYTES: usize = 16;
/// Characters of a key in its text form.
pub const KEY_CHARS: usize = 26;
/// Longest group name.
pub const GROUP_MAX_CHARS: usize = 32;

const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileIdError {
    #[error("file id must look like GROUP/KEY")]
    MissingSlash,
    #[error(
        "group name must be 1-{GROUP_MAX_CHARS} characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
    )]
    BadGroup,
    #[error("file key must be {KEY_CHARS} characters of a-z and 2-7")]
    BadKey,
}

/// A storage group's name: `[a-z0-9][a-z0-9_-]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupName(String);

impl GroupName {
    pub fn new(name: &str) -> Result<Self, FileIdError> {
        let bytes = name.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let rest_ok = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
        if first_ok && rest_ok && bytes.len() <= GROUP_MAX_CHARS {
            Ok(Self(name.to_owned()))
        } else {
            Err(FileIdError::BadGroup)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for GroupName {
    type Err = FileIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The random part of a file id; unique within a group, and what a node's index is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey([u8; KEY_BYTES]);

impl BlobKey {
    pub const fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// Parses the 26-character text form, rejecting any non-canonical spelling.
    pub fn parse(text: &str) -> Result<Self, FileIdError> {
        let chars = text.as_bytes();
        if chars.len() != KEY_CHARS {
            return Err(FileIdError::BadKey);
        }
        // 26 characters carry 130 bits; the 2 spare low bits of the last one must be zero.
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut out = [0u8; KEY_BYTES];
        let mut n = 0;
        for &c in chars {
            let v = decode_char(c).ok_or(FileIdError::BadKey)?;
            acc = (acc << 5) | u32::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                out[n] = (acc >> bits) as u8;
                n += 1;
                acc &= (1 << bits) - 1;
            }
        }
        if acc != 0 {
            return Err(FileIdError::BadKey);
        }
        Ok(Self(out))
    }
}

fn decode_char(c: u8) -> Option<u8> {
    match c {
        b'a'..=b'z' => Some(c - b'a'),
        b'2'..=b'7' => Some(c - b'2' + 26),
        _ => None,
    }
}

impl fmt::Display for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; KEY_CHARS];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut n = 0;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                text[n] = ALPHABET[((acc >> bits) & 31) as usize];
                n += 1;
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            text[n] = ALPHABET[((acc << (5 - bits)) & 31) as usize];
        }
        // The alphabet is ASCII, so this cannot fail; fall back to an error rather than panic.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for BlobKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobKey({self})")
    }
}

/// A validated file id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileId {
    pub group: GroupName,
    pub key: BlobKey,
}

impl FileId {
    pub fn new(group: GroupName, key: BlobKey) -> Self {
        Self { group, key }
    }

    pub fn parse(text: &str) -> Result<Self, FileIdError> {
        let (group, key) = text.split_once('/').ok_or(FileIdError::MissingSlash)?;
        Ok(Self {
            group: GroupName::new(group)?,
            key: BlobKey::parse(key)?,
        })
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.group, self.key)
    }
}

impl FromStr for FileId {
    type Err = FileIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_encoding() {
        let key = BlobKey::from_bytes([0; KEY_BYTES]);
        assert_eq!(key.to_string(), "a".repeat(KEY_CHARS));
        let key = BlobKey::from_bytes([0xff; KEY_BYTES]);
        assert_eq!(key.to_string(), format!("{}4", "7".repeat(25)));
        let id = FileId::parse("g1/77777777777777777777777774").unwrap();
        assert_eq!(id.key, key);
        assert_eq!(id.group.as_str(), "g1");
    }

    #[test]
    fn rejects_malformed() {
        let good = "g1/aaaaaaaaaaaaaaaaaaaaaaaaaa";
        assert!(FileId::parse(good).is_ok());
        for bad in [
            "",
            "g1",
            "g1/",
            "/aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "G1/aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "-g/aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "g1/aaaaaaaaaaaaaaaaaaaaaaaaa",
            "g1/aaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "g1/AAAAAAAAAAAAAAAAAAAAAAAAAA",
            "g1/aaaaaaaaaaaaaaaaaaaaaaaaa1",
            "g1/aaaaaaaaaaaaaaaaaaaaaaaaab", // spare bits set: non-canonical
            "g1/aaaaaaaaaaaaaaaaaaaaaaaaaa/x",
            "../aaaaaaaaaaaaaaaaaaaaaaaaaa",
            "g1/../../../../etc/passwd/xx",
            "g1/aaaaaaaaaaaaaaaaaaaaaaaa%2",
            "g1\\aaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(FileId::parse(bad).is_err(), "{bad:?} parsed");
        }
        let long_group = format!("{}/aaaaaaaaaaaaaaaaaaaaaaaaaa", "g".repeat(33));
        assert_eq!(FileId::parse(&long_group), Err(FileIdError::BadGroup));
    }

    proptest! {
        #[test]
        fn roundtrips(bytes in any::<[u8; KEY_BYTES]>(), group in "[a-z0-9][a-z0-9_-]{0,31}") {
            let id = FileId::new(GroupName::new(&group).unwrap(), BlobKey::from_bytes(bytes));
            let text = id.to_string();
            prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_".contains(&b)));
            prop_assert_eq!(FileId::parse(&text).unwrap(), id);
        }

        #[test]
        fn parse_never_panics_and_is_canonical(text in "\\PC{0,80}") {
            if let Ok(id) = FileId::parse(&text) {
                prop_assert_eq!(id.to_string(), text);
            }
        }

        #[test]
        fn near_ids_are_canonical(text in "[a-z0-9]{1,4}/[a-z2-7]{24,28}") {
            if let Ok(id) = FileId::parse(&text) {
                prop_assert_eq!(id.to_string(), text);
            }
        }
    }
}
