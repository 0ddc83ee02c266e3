//! Where each file kept in a volume is: an in-memory map from key to record, and per volume an
//! index log (`.idx`) that lets a restart load that map without reading the volumes.
//!
//! The map is what makes a small file cheap: an upload adds one entry in memory and 36 bytes
//! to a log, where a B-tree of every key rewrote a few pages per file and grew with the store
//! (Haystack and SeaweedFS keep theirs the same way). The volumes stay the truth: each record
//! carries its key, sequence number and index record, so the map can always be rebuilt
//! from them (see `crate::index`, which owns both).
//!
//! ```text
//! DATA/volumes/0000000000000001.idx   entries of 36 bytes, appended in commit order:
//!    0  key                [u8; 16]
//!   16  record offset      u64 LE (in the volume of the same number)
//!   24  body offset        u32 LE (from the record's start; 0: the key is gone from here)
//!   28  file length        u32 LE
//!   32  crc32c(0..32)      u32 LE
//! ```
//!
//! A key's newest entry in a volume's log says whether it lives there. Only the prefix a
//! checkpoint made durable (its length is in the volume's index row) is trusted on open; the
//! records committed after it are read from the volume again.

use std::collections::BTreeMap;
use std::sync::RwLock;

use sluice_proto::BlobKey;
use sluice_proto::fileid::KEY_BYTES;
use sluice_state::RwLockRecover;

use crate::record::Location;

/// Bytes of one index log entry.
pub const IDX_ENTRY_LEN: usize = 36;

/// Where a file's record is in a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub volume: u64,
    /// Where the record starts.
    pub offset: u64,
    /// Where its body starts, from the record's start.
    pub body: u32,
    /// The file's length.
    pub size: u32,
}

impl Slot {
    pub fn location(&self) -> Location {
        Location::Volume {
            volume: self.volume,
            offset: self.offset,
            body: self.body,
        }
    }

    /// Bytes of the whole record in a volume of `block_size`.
    pub fn record_len(&self, block_size: u32) -> u64 {
        u64::from(self.body) + crate::volume::body_len(u64::from(self.size), block_size)
    }

    /// Whether this is the record at `location`.
    pub fn is_at(&self, location: Location) -> bool {
        matches!(location, Location::Volume { volume, offset, .. } if volume == self.volume && offset == self.offset)
    }
}

/// One entry of a volume's index log: the key lives at `offset` (`body` > 0), or no longer
/// lives in this volume (`body` = 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdxEntry {
    pub key: BlobKey,
    pub offset: u64,
    pub body: u32,
    pub size: u32,
}

impl IdxEntry {
    pub fn live(key: BlobKey, slot: &Slot) -> Self {
        Self {
            key,
            offset: slot.offset,
            body: slot.body,
            size: slot.size,
        }
    }

    pub fn gone(key: BlobKey, slot: &Slot) -> Self {
        Self {
            key,
            offset: slot.offset,
            body: 0,
            size: 0,
        }
    }

    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(self.key.as_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.body.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        let crc = crc32c::crc32c(&out[start..]);
        out.extend_from_slice(&crc.to_le_bytes());
    }

    /// The entry at the start of `bytes`, if it is whole and its checksum holds.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..IDX_ENTRY_LEN)?;
        let crc = u32::from_le_bytes(b[32..36].try_into().ok()?);
        if crc32c::crc32c(&b[..32]) != crc {
            return None;
        }
        let key: [u8; KEY_BYTES] = b[..16].try_into().ok()?;
        Some(Self {
            key: BlobKey::from_bytes(key),
            offset: u64::from_le_bytes(b[16..24].try_into().ok()?),
            body: u32::from_le_bytes(b[24..28].try_into().ok()?),
            size: u32::from_le_bytes(b[28..32].try_into().ok()?),
        })
    }

    /// The slot this entry names in `volume`, if it says the key lives there.
    pub fn slot(&self, volume: u64) -> Option<Slot> {
        (self.body > 0).then_some(Slot {
            volume,
            offset: self.offset,
            body: self.body,
            size: self.size,
        })
    }
}

/// Every whole entry at the start of `bytes`, and how many bytes they take: parsing stops at
/// the first entry that is cut short or damaged.
pub fn parse_log(bytes: &[u8]) -> (Vec<IdxEntry>, usize) {
    let mut entries = Vec::with_capacity(bytes.len() / IDX_ENTRY_LEN);
    let mut at = 0;
    while let Some(entry) = bytes.get(at..).and_then(IdxEntry::decode) {
        entries.push(entry);
        at += IDX_ENTRY_LEN;
    }
    (entries, at)
}

/// Shards of the map, by a key's first byte: keys are random, so each holds an even share,
/// a lookup walks a shallower tree (fewer cache misses in a map of millions), and writers
/// and readers of different shards never meet. Shard order is key order.
const SHARDS: usize = 256;

/// The in-memory map of every file kept in a volume.
#[derive(Debug)]
pub struct VolumeMap {
    shards: Vec<RwLock<BTreeMap<BlobKey, Slot>>>,
}

impl Default for VolumeMap {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

fn shard_of(key: &BlobKey) -> usize {
    usize::from(key.as_bytes()[0])
}

impl VolumeMap {
    pub fn get(&self, key: &BlobKey) -> Option<Slot> {
        self.shards[shard_of(key)]
            .read_or_recover()
            .get(key)
            .copied()
    }

    /// Applies changes (a slot for a key, or `None` to take the key out), and returns what
    /// they replaced: applied in turn, that undoes them.
    pub fn swap(
        &self,
        changes: impl IntoIterator<Item = (BlobKey, Option<Slot>)>,
    ) -> Vec<(BlobKey, Option<Slot>)> {
        let mut undo: Vec<(BlobKey, Option<Slot>)> = changes
            .into_iter()
            .map(|(key, slot)| {
                let mut shard = self.shards[shard_of(&key)].write_or_recover();
                let old = match slot {
                    Some(slot) => shard.insert(key, slot),
                    None => shard.remove(&key),
                };
                (key, old)
            })
            .collect();
        // Undone last change first, should one key have changed twice.
        undo.reverse();
        undo
    }

    /// Up to `limit` keys after `after`, in order.
    pub fn keys_after(&self, after: Option<&BlobKey>, limit: usize) -> Vec<BlobKey> {
        let mut out = Vec::with_capacity(limit.min(4096));
        let first = after.map_or(0, shard_of);
        for shard in &self.shards[first..] {
            let shard = shard.read_or_recover();
            let range = match after {
                Some(k) => shard.range((std::ops::Bound::Excluded(*k), std::ops::Bound::Unbounded)),
                None => shard.range(..),
            };
            out.extend(range.take(limit - out.len()).map(|(k, _)| *k));
            if out.len() >= limit {
                break;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.read_or_recover().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every key and slot: for a load that rebuilds the map.
    pub fn replace(&self, slots: BTreeMap<BlobKey, Slot>) {
        let mut shards: Vec<BTreeMap<BlobKey, Slot>> = vec![BTreeMap::new(); SHARDS];
        for (key, slot) in slots {
            shards[shard_of(&key)].insert(key, slot);
        }
        for (shard, slots) in self.shards.iter().zip(shards) {
            *shard.write_or_recover() = slots;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> BlobKey {
        BlobKey::from_bytes([b; KEY_BYTES])
    }

    #[test]
    fn an_entry_has_the_documented_bytes() {
        let mut out = Vec::new();
        IdxEntry {
            key: key(7),
            offset: 0x0102,
            body: 90,
            size: 5000,
        }
        .encode_into(&mut out);
        assert_eq!(out.len(), IDX_ENTRY_LEN);
        assert_eq!(&out[..16], &[7u8; 16]);
        assert_eq!(&out[16..24], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[24..28], &90u32.to_le_bytes());
        assert_eq!(&out[28..32], &5000u32.to_le_bytes());
        assert_eq!(
            u32::from_le_bytes(out[32..36].try_into().unwrap()),
            crc32c::crc32c(&out[..32])
        );
    }

    #[test]
    fn a_log_is_read_up_to_its_first_bad_entry() {
        let slot = Slot {
            volume: 1,
            offset: 32,
            body: 80,
            size: 10,
        };
        let mut log = Vec::new();
        IdxEntry::live(key(1), &slot).encode_into(&mut log);
        IdxEntry::gone(key(1), &slot).encode_into(&mut log);
        IdxEntry::live(key(2), &slot).encode_into(&mut log);
        let (entries, len) = parse_log(&log);
        assert_eq!((entries.len(), len), (3, log.len()));
        assert_eq!(entries[0].slot(1), Some(slot));
        assert_eq!(entries[1].slot(1), None, "gone");
        // A torn last entry, then a flipped byte in the middle one.
        let (entries, len) = parse_log(&log[..log.len() - 3]);
        assert_eq!((entries.len(), len), (2, 2 * IDX_ENTRY_LEN));
        log[IDX_ENTRY_LEN + 5] ^= 1;
        assert_eq!(parse_log(&log).0.len(), 1);
    }

    #[test]
    fn keys_after_runs_across_shards_in_key_order() {
        let map = VolumeMap::default();
        let mut keys: Vec<BlobKey> = (0..600u32)
            .map(|i| {
                let mut k = [0u8; KEY_BYTES];
                k[..4].copy_from_slice(&(i.wrapping_mul(2_654_435_761)).to_be_bytes());
                BlobKey::from_bytes(k)
            })
            .collect();
        let slot = Slot {
            volume: 1,
            offset: 32,
            body: 50,
            size: 1,
        };
        map.swap(keys.iter().map(|k| (*k, Some(slot))));
        keys.sort();
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = map.keys_after(after.as_ref(), 7);
            if page.is_empty() {
                break;
            }
            after = page.last().copied();
            seen.extend(page);
        }
        assert_eq!(seen, keys);
        assert_eq!(map.len(), 600);
    }

    #[test]
    fn the_map_answers_in_key_order() {
        let map = VolumeMap::default();
        let slot = |o| Slot {
            volume: 1,
            offset: o,
            body: 50,
            size: 1,
        };
        map.swap([
            (key(3), Some(slot(3))),
            (key(1), Some(slot(1))),
            (key(2), Some(slot(2))),
        ]);
        let undo = map.swap([(key(2), None)]);
        assert_eq!(undo, vec![(key(2), Some(slot(2)))]);
        assert_eq!(map.keys_after(None, 10), vec![key(1), key(3)]);
        assert_eq!(map.keys_after(Some(&key(1)), 10), vec![key(3)]);
        assert_eq!(map.get(&key(3)), Some(slot(3)));
        assert_eq!(map.len(), 2);
    }

    proptest! {
        #[test]
        fn entries_round_trip(k in any::<[u8; 16]>(), offset: u64, body: u32, size: u32) {
            let e = IdxEntry { key: BlobKey::from_bytes(k), offset, body, size };
            let mut out = Vec::new();
            e.encode_into(&mut out);
            prop_assert_eq!(IdxEntry::decode(&out), Some(e));
        }

        #[test]
        fn any_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (entries, len) = parse_log(&bytes);
            prop_assert_eq!(entries.len() * IDX_ENTRY_LEN, len);
        }
    }
}
