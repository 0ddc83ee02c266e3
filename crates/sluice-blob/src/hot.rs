//! A bounded cache of small, recently read, verified files: the photos and voice notes a chat
//! app's users open again and again.
//!
//! A hit skips the index lookup, the `open`, the read and the checksum pass; what is left is
//! the copy to the socket. Data enters only after its checksums were verified on a read from
//! disk, and a delete takes it out (see [`HotCache::insert_if_indexed`] for the race with
//! concurrent deletes). Eviction is second-chance FIFO ("clock"): cheap, and close to LRU for
//! this traffic.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use bytes::Bytes;
use sluice_proto::BlobKey;
use sluice_state::LockRecover;

use crate::record::BlobMeta;

#[derive(Debug, Clone, Copy)]
pub struct HotCacheLimits {
    /// Bytes of file content held at most.
    pub capacity: u64,
    /// Larger files are never cached (their reads are dominated by the transfer anyway).
    pub max_file: u64,
}

impl Default for HotCacheLimits {
    fn default() -> Self {
        Self {
            capacity: 256 << 20,
            max_file: 1 << 20,
        }
    }
}

/// One cached file: its record and its bytes as verified slices.
#[derive(Clone)]
pub struct HotFile {
    pub meta: BlobMeta,
    pub parts: Vec<Bytes>,
}

struct Entry {
    file: HotFile,
    referenced: AtomicBool,
}

#[derive(Default)]
struct Slots {
    entries: HashMap<BlobKey, Entry>,
    order: VecDeque<BlobKey>,
    bytes: u64,
}

pub struct HotCache {
    limits: HotCacheLimits,
    slots: Mutex<Slots>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl HotCache {
    pub fn new(limits: HotCacheLimits) -> Self {
        Self {
            limits,
            slots: Mutex::new(Slots::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub fn admits(&self, size: u64) -> bool {
        size <= self.limits.max_file && size <= self.limits.capacity
    }

    pub fn get(&self, key: &BlobKey) -> Option<HotFile> {
        let found = self.slots.lock_or_recover().entries.get(key).map(|e| {
            e.referenced.store(true, Ordering::Relaxed);
            e.file.clone()
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches a file, then confirms with `still_indexed` that no delete raced past it. A delete
    /// removes the index entry before it calls [`Self::remove`], so either this check sees the
    /// entry gone (and takes the file back out) or the delete's `remove` comes after our insert.
    pub fn insert_if_indexed(
        &self,
        key: BlobKey,
        file: HotFile,
        still_indexed: impl FnOnce() -> bool,
    ) {
        let size = file.meta.size;
        if !self.admits(size) {
            return;
        }
        {
            let mut slots = self.slots.lock_or_recover();
            if slots.entries.contains_key(&key) {
                return;
            }
            while slots.bytes + size > self.limits.capacity {
                if !evict_one(&mut slots) {
                    break;
                }
            }
            slots.entries.insert(
                key,
                Entry {
                    file,
                    referenced: AtomicBool::new(false),
                },
            );
            slots.order.push_back(key);
            slots.bytes += size;
        }
        if !still_indexed() {
            self.remove(&key);
        }
    }

    pub fn remove(&self, key: &BlobKey) {
        let mut slots = self.slots.lock_or_recover();
        if let Some(e) = slots.entries.remove(key) {
            slots.bytes -= e.file.meta.size;
            // Its place in `order` is dropped lazily by `evict_one`.
        }
    }

    pub fn bytes(&self) -> u64 {
        self.slots.lock_or_recover().bytes
    }
}

/// Evicts the first entry not referenced since it was last passed over; false if empty.
fn evict_one(slots: &mut Slots) -> bool {
    while let Some(key) = slots.order.pop_front() {
        let Some(entry) = slots.entries.get(&key) else {
            continue; // removed earlier
        };
        if entry.referenced.swap(false, Ordering::Relaxed) {
            slots.order.push_back(key);
            continue;
        }
        if let Some(e) = slots.entries.remove(&key) {
            slots.bytes -= e.file.meta.size;
        }
        return true;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::BlobState;

    fn file(size: u64) -> HotFile {
        HotFile {
            meta: BlobMeta {
                size,
                content_type: "a/b".into(),
                created_ms: 0,
                block_size: 65536,
                state: BlobState::Complete,
                sha256: None,
                location: crate::record::Location::DataFile,
            },
            parts: vec![Bytes::from(vec![0u8; size as usize])],
        }
    }

    fn key(n: u8) -> BlobKey {
        BlobKey::from_bytes([n; 16])
    }

    #[test]
    fn bounded_and_second_chance() {
        let cache = HotCache::new(HotCacheLimits {
            capacity: 300,
            max_file: 100,
        });
        for n in 0..3 {
            cache.insert_if_indexed(key(n), file(100), || true);
        }
        assert_eq!(cache.bytes(), 300);
        assert!(cache.get(&key(0)).is_some()); // 0 gets a second chance
        cache.insert_if_indexed(key(3), file(100), || true);
        assert_eq!(cache.bytes(), 300);
        assert!(cache.get(&key(0)).is_some());
        assert!(
            cache.get(&key(1)).is_none(),
            "the unreferenced oldest goes first"
        );
        assert!(cache.get(&key(3)).is_some());
        cache.insert_if_indexed(key(9), file(101), || true);
        assert!(cache.get(&key(9)).is_none(), "too large to cache");
    }

    #[test]
    fn a_racing_delete_wins() {
        let cache = HotCache::new(HotCacheLimits::default());
        cache.insert_if_indexed(key(1), file(10), || false);
        assert!(cache.get(&key(1)).is_none());
        assert_eq!(cache.bytes(), 0);
        cache.insert_if_indexed(key(2), file(10), || true);
        cache.remove(&key(2));
        assert!(cache.get(&key(2)).is_none());
    }
}
