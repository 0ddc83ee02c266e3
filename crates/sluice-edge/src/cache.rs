//! The edge's disk cache: complete files in a blob store (checksummed, crash-safe, with its
//! hot cache of small files), plus the one piece of state the store lacks: which files were
//! used least recently, and how many bytes are held against the configured size.
//!
//! The cache key is a hash of the file id alone (group and key), so signature parameters never
//! split the cache, and a forged id can never alias another group's file.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use sluice_blob::{BlobError, BlobStore};
use sluice_proto::{BlobKey, FileId};
use sluice_state::LockRecover;

/// The blob key a file id is cached under.
pub fn cache_key(id: &FileId) -> BlobKey {
    let digest = Sha256::digest(format!("sluice-edge/1 {id}").as_bytes());
    let mut key = [0u8; sluice_proto::fileid::KEY_BYTES];
    let n = key.len();
    key.copy_from_slice(&digest[..n]);
    BlobKey::from_bytes(key)
}

/// Least-recently-used order and the byte budget; one owner, behind a mutex held briefly.
pub struct CacheIndex {
    capacity: u64,
    state: Mutex<Lru>,
    pub evictions: AtomicU64,
}

#[derive(Default)]
struct Lru {
    entries: HashMap<BlobKey, (u64, u64)>,
    /// Use tick -> key; the smallest tick is the least recently used.
    order: BTreeMap<u64, BlobKey>,
    next_tick: u64,
    bytes: u64,
}

impl Lru {
    fn tick(&mut self) -> u64 {
        self.next_tick += 1;
        self.next_tick
    }

    fn touch(&mut self, key: BlobKey) {
        let Some(&(size, old)) = self.entries.get(&key) else {
            return;
        };
        self.order.remove(&old);
        let tick = self.tick();
        self.order.insert(tick, key);
        self.entries.insert(key, (size, tick));
    }

    fn insert(&mut self, key: BlobKey, size: u64) {
        if let Some((old_size, old_tick)) = self.entries.remove(&key) {
            self.order.remove(&old_tick);
            self.bytes -= old_size;
        }
        let tick = self.tick();
        self.entries.insert(key, (size, tick));
        self.order.insert(tick, key);
        self.bytes += size;
    }

    fn remove(&mut self, key: &BlobKey) -> bool {
        match self.entries.remove(key) {
            Some((size, tick)) => {
                self.order.remove(&tick);
                self.bytes -= size;
                true
            }
            None => false,
        }
    }

    /// The least recently used keys to drop so that `bytes` fits `capacity`.
    fn victims(&mut self, capacity: u64) -> Vec<BlobKey> {
        let mut out = Vec::new();
        while self.bytes > capacity {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some((size, _)) = self.entries.remove(&key) {
                self.bytes -= size;
            }
            out.push(key);
        }
        out
    }
}

impl CacheIndex {
    /// Rebuilds the index from the files the store holds (blocking: walks the cache
    /// directory). Files come back oldest first, so the LRU order survives a restart roughly.
    pub fn load(store: &BlobStore, capacity: u64) -> std::io::Result<Self> {
        let mut found = Vec::new();
        sluice_blob::walk_data_files(store.root(), &mut |_, key| {
            if let Ok(Some(meta)) = store.stat(key) {
                found.push((meta.created_ms, key, meta.size));
            }
            Ok(true)
        })?;
        found.sort();
        let mut lru = Lru::default();
        for (_, key, size) in found {
            lru.insert(key, size);
        }
        Ok(Self {
            capacity,
            state: Mutex::new(lru),
            evictions: AtomicU64::new(0),
        })
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn bytes(&self) -> u64 {
        self.state.lock_or_recover().bytes
    }

    pub fn files(&self) -> u64 {
        self.state.lock_or_recover().entries.len() as u64
    }

    pub fn touch(&self, key: BlobKey) {
        self.state.lock_or_recover().touch(key);
    }

    /// Whether a file of `size` bytes may be cached at all (larger than the whole cache: no).
    pub fn admits(&self, size: u64) -> bool {
        size <= self.capacity
    }

    /// Records a newly cached file and evicts the least recently used ones beyond the size.
    pub async fn insert(&self, store: &BlobStore, key: BlobKey, size: u64) {
        let victims = {
            let mut s = self.state.lock_or_recover();
            s.insert(key, size);
            let mut victims = s.victims(self.capacity);
            // The file just cached stays, even if it alone fills the cache.
            if let Some(at) = victims.iter().position(|v| *v == key) {
                victims.remove(at);
                s.insert(key, size);
            }
            victims
        };
        for victim in victims {
            match store.evict(victim).await {
                Ok(_) => {
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!(error = %e, "eviction failed"),
            }
        }
    }

    /// Forgets a file found missing or damaged on disk.
    pub async fn drop_file(&self, store: &BlobStore, key: BlobKey) -> Result<(), BlobError> {
        self.state.lock_or_recover().remove(&key);
        store.evict(key).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first() {
        let k = |b: u8| BlobKey::from_bytes([b; 16]);
        let mut lru = Lru::default();
        lru.insert(k(1), 40);
        lru.insert(k(2), 40);
        lru.insert(k(3), 40);
        lru.touch(k(1));
        assert_eq!(lru.victims(80), vec![k(2)]);
        lru.insert(k(4), 40);
        assert_eq!(lru.victims(80), vec![k(3)]);
        assert_eq!(lru.bytes, 80);
        assert!(lru.remove(&k(1)));
        assert!(!lru.remove(&k(1)));
        assert_eq!(lru.bytes, 40);
    }

    #[test]
    fn cache_keys_depend_on_the_whole_id() {
        let a = FileId::parse("g1/aaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let b = FileId::parse("g2/aaaaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        assert_ne!(cache_key(&a), cache_key(&b));
        assert_eq!(cache_key(&a), cache_key(&a.clone()));
    }
}
