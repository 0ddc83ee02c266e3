//! Writing one blob: buffered into checksummed blocks, flushed to `tmp/` in large writes, then
//! made durable and indexed by `commit`. A writer dropped before commit removes its temp file.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Buf, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use sluice_proto::BlobKey;
use sluice_state::LockRecover;

use crate::index::{Adoption, supersedes};
use crate::layout::BlockLayout;
use crate::record::{BlobMeta, BlobState, Location, SHA256_LEN};
use crate::{BlobError, BlobStore, blocking, now_ms};

/// Bytes gathered before a write to disk: big enough for few syscalls, small enough that
/// thousands of concurrent uploads stay within memory.
const FLUSH_AT: usize = 1 << 20;

pub struct BlobWriter {
    store: BlobStore,
    key: BlobKey,
    content_type: String,
    limit: u64,
    layout: BlockLayout,
    pending: BytesMut,
    received: u64,
    state: BlobState,
    /// SHA-256 of every byte received, recorded in the index.
    hasher: Sha256,
    /// The digest the bytes must have (a replica's declared checksum).
    expected: Option<[u8; SHA256_LEN]>,
    /// May replace a complete file with the same recorded digest (a damaged copy's repair).
    repair: bool,
    /// The temp file once the first flush created it; small blobs never need one before commit.
    file: Option<File>,
    /// Bytes gathered before a write to disk: at least [`FLUSH_AT`], and above the largest
    /// file a volume takes, so such a file is whole in memory at commit.
    flush_at: usize,
    tmp: Arc<TempFileGuard>,
    /// Keeps the crash sweep off this key's files until the writer is done, and orders
    /// commits of the key.
    in_flight: crate::InFlight,
}

impl BlobWriter {
    pub(crate) fn new(store: BlobStore, key: BlobKey, content_type: String, limit: u64) -> Self {
        let layout = BlockLayout::new(store.options().block_size);
        let in_flight = store.begin_write(key);
        // Named when first needed: most small files never get a temp file.
        let tmp = Arc::new(TempFileGuard(Mutex::new(None)));
        let flush_at = store.volumes().map_or(FLUSH_AT, |v| {
            FLUSH_AT.max(usize::try_from(v.options().max_file).unwrap_or(FLUSH_AT) + 1)
        });
        Self {
            store,
            key,
            content_type,
            limit,
            layout,
            pending: BytesMut::new(),
            received: 0,
            state: BlobState::Complete,
            hasher: Sha256::new(),
            expected: None,
            repair: false,
            file: None,
            flush_at,
            tmp,
            in_flight,
        }
    }

    pub fn key(&self) -> BlobKey {
        self.key
    }

    /// Stores the blob as a prefix of a longer file (progressive uploads) rather than complete.
    pub fn set_state(&mut self, state: BlobState) {
        self.state = state;
    }

    /// The bytes must have this SHA-256 (a replica's declared checksum): `commit` refuses
    /// them otherwise, storing nothing.
    pub fn expect_sha256(&mut self, digest: [u8; SHA256_LEN]) {
        self.expected = Some(digest);
    }

    /// Makes this write a repair: it replaces the complete copy of the key it finds (a
    /// damaged one) if its bytes match that copy's recorded SHA-256 (for a record from before
    /// digests were kept, its length), and is refused otherwise. Without it, a second write of
    /// a complete key changes nothing: the same bytes are a no-op, different ones a conflict.
    /// Call it before writing: the bytes are laid out in the block size of the copy they
    /// replace, which its record names.
    pub fn allow_repair(&mut self) {
        self.repair = true;
        if self.received == 0 {
            if let Ok(Some(current)) = self.store.stat(self.key) {
                self.layout = BlockLayout::new(current.block_size);
            }
        }
    }

    /// SHA-256 of the bytes received so far.
    pub fn sha256(&self) -> [u8; SHA256_LEN] {
        self.hasher.clone().finalize().into()
    }

    /// The whole content, if none of it has gone to disk yet (uploads under ~1 MiB): lets a
    /// caller send it elsewhere while `commit` runs.
    pub fn in_memory(&self) -> Option<Bytes> {
        self.file
            .is_none()
            .then(|| Bytes::copy_from_slice(&self.pending))
    }

    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    pub fn received(&self) -> u64 {
        self.received
    }

    /// Adds bytes; writes to disk once enough have gathered.
    pub async fn write(&mut self, mut data: Bytes) -> Result<(), BlobError> {
        let len = data.len() as u64;
        if self.received + len > self.limit {
            return Err(BlobError::TooLarge { limit: self.limit });
        }
        self.received += len;
        self.hasher.update(&data);
        if self.pending.is_empty() && data.len() >= self.flush_at {
            // Avoid copying large chunks twice: encode straight from the caller's buffer.
            let whole = data.len() - data.len() % self.layout.block_size as usize;
            let head = data.split_to(whole);
            self.flush(head, false).await?;
            self.pending.extend_from_slice(&data);
            return Ok(());
        }
        self.pending.extend_from_slice(&data);
        if self.pending.len() >= self.flush_at {
            let bs = self.layout.block_size as usize;
            let whole = self.pending.len() - self.pending.len() % bs;
            let head = self.pending.split_to(whole).freeze();
            self.flush(head, false).await?;
        }
        Ok(())
    }

    /// Writes whole blocks (and, when `last`, the final short one) to the temp file.
    async fn flush(&mut self, data: Bytes, last: bool) -> Result<(), BlobError> {
        let file = self.file.take();
        // The closure holds the guard too, so a writer dropped mid-flush cannot remove the
        // temp file before the flush creates it.
        let tmp = self.tmp.clone();
        let path = self.temp_path();
        let layout = self.layout;
        let file = blocking(move || {
            let _tmp = tmp;
            let mut file = match file {
                Some(f) => f,
                None => create_temp(&path, &layout)?,
            };
            write_blocks(&mut file, &layout, &data, last)?;
            Ok(file)
        })
        .await?;
        self.file = Some(file);
        Ok(())
    }

    /// Makes the blob durable and visible: fsync, rename into place, fsync the directory, then
    /// index it. Runs to completion in its own task even if the caller goes away, so a client
    /// that disconnects at this point leaves a whole blob, never half of one.
    ///
    /// What the index holds is decided before anything is placed, in the key's commit turn,
    /// so no write can touch the data file of a version it does not replace. Returns the
    /// version the index holds afterwards: this one, or the one it keeps (the same complete
    /// file, or a longer prefix). A complete key given different bytes is
    /// [`BlobError::Conflict`] and changes nothing.
    pub async fn commit(mut self) -> Result<BlobMeta, BlobError> {
        let rest = self.pending.split().freeze();
        let sha256 = self.sha256();
        if self.expected.is_some_and(|e| e != sha256) {
            // The temp file goes with the writer.
            return Err(BlobError::ChecksumMismatch);
        }
        let meta = BlobMeta {
            size: self.received,
            content_type: std::mem::take(&mut self.content_type),
            created_ms: now_ms(),
            block_size: self.layout.block_size,
            state: self.state,
            sha256: Some(sha256),
            location: crate::record::Location::DataFile,
        };
        // A complete small file goes into a volume: no data file, no temp file.
        let for_volume = self.store.volumes().is_some_and(|v| {
            self.file.is_none()
                && meta.state.is_complete()
                && v.takes(meta.size, self.layout.block_size)
        });
        let task = tokio::spawn(async move {
            let mut rest = Some(rest);
            if !for_volume {
                self.write_temp(rest.take().unwrap_or_default()).await?;
            }
            let _turn = self.in_flight.commit_turn().await;
            let store = self.store.clone();
            let key = self.key;
            let current = store.index().get_for_write(&key)?;
            match decide(&meta, current.as_ref(), self.repair) {
                Step::Keep(current) => Ok(current),
                Step::Refuse => Err(BlobError::Conflict),
                Step::CompareWithStored(current) => {
                    // The record predates digests: compare with the bytes it names.
                    match store.sha256_of(key).await {
                        Ok(digest) if Some(digest) == meta.sha256 => Ok(current),
                        _ => Err(BlobError::Conflict),
                    }
                }
                Step::RepairInPlace(current) => {
                    match (current.location, store.volumes(), rest.take()) {
                        // A damaged volume record: the good bytes go in as a new record.
                        (Location::Volume { .. }, Some(volumes), Some(data)) => {
                            // A record whose header was damaged too: the peer's copy says
                            // what its own header cannot (type, digest, time).
                            volumes
                                .rewrite(key, &repaired(&current, &meta), data)
                                .await?;
                        }
                        // The bytes went to a temp file (a file larger than volumes take
                        // now): they become the file's data file, and the entry moves there.
                        (Location::Volume { .. }, _, data) => {
                            if let Some(data) = data {
                                self.write_temp(data).await?;
                            }
                            let mut moved = repaired(&current, &meta);
                            moved.location = Location::DataFile;
                            moved.block_size = self.layout.block_size;
                            let placed = store.data_path(&key, &moved);
                            self.place(placed.clone()).await?;
                            if !store.index().relocate(key, current.location, moved).await? {
                                // Deleted or repaired meanwhile.
                                unlink_logged(placed).await;
                            }
                        }
                        (Location::DataFile, _, data) => {
                            if let Some(data) = data {
                                self.write_temp(data).await?;
                            }
                            self.place(store.data_path(&key, &current)).await?;
                        }
                    }
                    store.hot().remove(&key);
                    Ok(current)
                }
                Step::Adopt => {
                    let adoption = match (store.volumes(), rest.take()) {
                        (Some(volumes), Some(data)) => volumes.put(key, meta.clone(), data).await?,
                        _ => {
                            let placed = store.data_path(&key, &meta);
                            self.place(placed.clone()).await?;
                            match store.index().insert(key, meta.clone()).await {
                                Err(e) => {
                                    // Not indexed (a deleted key, or the index failed): the
                                    // placed file must go, or it would linger until a
                                    // crash-recovery sweep.
                                    unlink_logged(placed).await;
                                    return Err(e);
                                }
                                Ok(adoption) => adoption,
                            }
                        }
                    };
                    match adoption {
                        Adoption::New => Ok(meta),
                        Adoption::Replaced(old) => {
                            store.hot().remove(&key);
                            let old_path = store.data_path(&key, &old);
                            let placed = store.data_path(&key, &meta);
                            if old.location == Location::DataFile
                                && (old_path != placed || for_volume)
                            {
                                // Adopted already: a file left behind is the sweep's, not an
                                // error of this write.
                                unlink_logged(old_path).await;
                            }
                            Ok(meta)
                        }
                        // Only another process sharing the index could get here first.
                        Adoption::Kept(current) => Ok(current),
                    }
                }
            }
        });
        task.await
            .map_err(|e| BlobError::Io(std::io::Error::other(e.to_string())))?
    }

    /// Writes the last bytes to the temp file (creating it if no flush did) and syncs it.
    async fn write_temp(&mut self, rest: Bytes) -> Result<(), BlobError> {
        let file = self.file.take();
        let layout = self.layout;
        let tmp = self.tmp.clone();
        let path = self.temp_path();
        blocking(move || {
            let _tmp = tmp;
            let mut file = match file {
                Some(f) => f,
                None => create_temp(&path, &layout)?,
            };
            write_blocks(&mut file, &layout, &rest, true)?;
            file.sync_data().map_err(BlobError::from_io)
        })
        .await
    }

    /// The temp file's name: named (and so removed when the writer goes) before a file
    /// that does not exist yet is created.
    fn temp_path(&self) -> PathBuf {
        self.tmp
            .0
            .lock_or_recover()
            .get_or_insert_with(|| self.store.tmp_path(&self.key))
            .clone()
    }

    /// Renames the finished temp file to `path` (durably) and disarms its cleanup.
    async fn place(&self, path: PathBuf) -> Result<(), BlobError> {
        let tmp = self.tmp.clone();
        blocking(move || {
            place(&tmp.path(), &path)?;
            tmp.disarm();
            Ok(())
        })
        .await
    }
}

/// What a commit does, given the version the index holds.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// Place the new version and index it.
    Adopt,
    /// Put the bytes in place of a damaged copy of the same file; the index stays.
    RepairInPlace(BlobMeta),
    /// Leave everything as it is: the index's version stands (the same file again, or a newer
    /// version than this one).
    Keep(BlobMeta),
    /// The complete file's record has no digest: keep it if its stored bytes are these.
    CompareWithStored(BlobMeta),
    /// A complete file under this key has other bytes: refuse.
    Refuse,
}

/// What a repaired file's record says: what it said, or, when its header was damaged too
/// (no digest known), what the peer's copy says (type, digest, time), at its place.
fn repaired(current: &BlobMeta, from_peer: &BlobMeta) -> BlobMeta {
    match current.sha256 {
        Some(_) => current.clone(),
        None => BlobMeta {
            location: current.location,
            block_size: current.block_size,
            ..from_peer.clone()
        },
    }
}

fn decide(new: &BlobMeta, current: Option<&BlobMeta>, repair: bool) -> Step {
    let Some(old) = current else {
        return Step::Adopt;
    };
    if supersedes(new, old) {
        return Step::Adopt;
    }
    if !old.state.is_complete() {
        // The very version held, from a peer, to replace a damaged copy of it.
        let same_version = new.state == old.state && new.size == old.size;
        if repair && same_version && old.sha256.is_some() && new.sha256 == old.sha256 {
            return Step::RepairInPlace(old.clone());
        }
        // A shorter or equal prefix of a file still arriving: the longer one stands.
        return Step::Keep(old.clone());
    }
    // The key holds a complete file: nothing but its very bytes may be written again.
    let complete = new.state.is_complete();
    let same_digest = old.sha256.map(|d| complete && new.sha256 == Some(d));
    match (repair, same_digest) {
        (true, Some(true)) => Step::RepairInPlace(old.clone()),
        // A record from before digests were kept: a peer's copy of its length is trusted.
        (true, None) if complete && new.size == old.size => Step::RepairInPlace(old.clone()),
        (true, _) => Step::Refuse,
        (false, Some(true)) => Step::Keep(old.clone()),
        (false, None) if complete && new.size == old.size => Step::CompareWithStored(old.clone()),
        // A late prefix of a file now whole changes nothing, and is no error.
        (false, _) if !complete => Step::Keep(old.clone()),
        (false, _) => Step::Refuse,
    }
}

async fn unlink_logged(path: PathBuf) {
    let shown = path.display().to_string();
    let result = blocking(move || match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    })
    .await;
    if let Err(e) = result {
        tracing::warn!(path = %shown, error = %e, "could not remove a superseded data file; the next sweep will");
    }
}

fn create_temp(path: &Path, layout: &BlockLayout) -> Result<File, BlobError> {
    if let Some(dir) = path.parent() {
        ensure_shard_dir(dir)?;
    }
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(BlobError::from_io)?;
    file.write_all(&layout.header())
        .map_err(BlobError::from_io)?;
    Ok(file)
}

fn write_blocks(
    file: &mut File,
    layout: &BlockLayout,
    data: &[u8],
    last: bool,
) -> Result<(), BlobError> {
    let bs = layout.block_size as usize;
    debug_assert!(last || data.len() % bs == 0);
    let blocks = data.len().div_ceil(bs);
    let mut out = Vec::with_capacity(data.len() + blocks * crate::layout::CRC_LEN as usize);
    let mut rest = data;
    while rest.has_remaining() {
        let n = rest.len().min(bs);
        BlockLayout::encode_block(&rest[..n], &mut out);
        rest = &rest[n..];
    }
    file.write_all(&out).map_err(BlobError::from_io)
}

/// Renames a finished temp file into its place (same directory) and makes the rename durable.
fn place(tmp: &Path, final_path: &Path) -> Result<(), BlobError> {
    std::fs::rename(tmp, final_path)?;
    sync_dir(final_path.parent().unwrap_or(Path::new(".")))
}

/// Creates a blob's shard directory on first use, durably: a crash must not lose the directory
/// of a file already acknowledged.
fn ensure_shard_dir(dir: &Path) -> Result<(), BlobError> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(BlobError::from_io)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
        if let Some(grand) = parent.parent() {
            sync_dir(grand)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)?.sync_all().map_err(BlobError::from_io)
}

/// Removes a temp file unless disarmed: the cleanup for uploads that fail or are abandoned.
/// Shared (`Arc`) between the writer and its blocking steps; the last one out removes the file.
struct TempFileGuard(Mutex<Option<PathBuf>>);

impl TempFileGuard {
    fn path(&self) -> PathBuf {
        self.0.lock_or_recover().clone().unwrap_or_default()
    }

    fn disarm(&self) {
        *self.0.lock_or_recover() = None;
    }
}

impl Drop for TempFileGuard {
    fn drop(&mut self) {
        let path = self.0.lock_or_recover().take();
        if let Some(path) = path {
            // Unlinking one directory entry is quick; doing it here keeps cleanup certain even
            // when the runtime is shutting down.
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(state: BlobState, size: u64, sha256: Option<[u8; SHA256_LEN]>) -> BlobMeta {
        BlobMeta {
            size,
            content_type: "a/b".into(),
            created_ms: 0,
            block_size: 4096,
            state,
            sha256,
            location: crate::record::Location::DataFile,
        }
    }

    #[test]
    fn complete_ids_are_immutable() {
        let a = meta(BlobState::Complete, 5, Some([1; 32]));
        let b = meta(BlobState::Complete, 5, Some([2; 32]));
        let legacy = meta(BlobState::Complete, 5, None);
        assert_eq!(decide(&a, None, false), Step::Adopt);
        assert_eq!(decide(&a, Some(&a), false), Step::Keep(a.clone()));
        assert_eq!(decide(&b, Some(&a), false), Step::Refuse);
        assert_eq!(
            decide(&b, Some(&a), true),
            Step::Refuse,
            "a repair must match"
        );
        assert_eq!(decide(&a, Some(&a), true), Step::RepairInPlace(a.clone()));
        assert_eq!(
            decide(&a, Some(&legacy), false),
            Step::CompareWithStored(legacy.clone())
        );
        assert_eq!(
            decide(&a, Some(&legacy), true),
            Step::RepairInPlace(legacy.clone())
        );
        let longer = meta(BlobState::Complete, 6, Some([1; 32]));
        assert_eq!(decide(&longer, Some(&legacy), false), Step::Refuse);
        assert_eq!(decide(&longer, Some(&legacy), true), Step::Refuse);
        // Incomplete versions never replace a complete one, and grow only.
        let part = meta(BlobState::Partial { total: 9 }, 3, Some([3; 32]));
        assert_eq!(decide(&part, Some(&a), false), Step::Keep(a.clone()));
        assert_eq!(
            decide(&part, Some(&a), true),
            Step::Refuse,
            "a repair that brings less than the file repairs nothing"
        );
        assert_eq!(decide(&a, Some(&part), false), Step::Adopt);
        let shorter = meta(BlobState::Partial { total: 9 }, 2, Some([4; 32]));
        assert_eq!(
            decide(&shorter, Some(&part), false),
            Step::Keep(part.clone())
        );
        // An incomplete version is repaired only by its very bytes, in its very state.
        assert_eq!(decide(&part, Some(&part), false), Step::Keep(part.clone()));
        assert_eq!(
            decide(&part, Some(&part), true),
            Step::RepairInPlace(part.clone())
        );
        let other = meta(BlobState::Partial { total: 9 }, 3, Some([5; 32]));
        assert_eq!(decide(&other, Some(&part), true), Step::Keep(part.clone()));
        let abandoned = meta(BlobState::Abandoned { total: 9 }, 3, Some([3; 32]));
        assert_eq!(
            decide(&part, Some(&abandoned), true),
            Step::Keep(abandoned.clone())
        );
    }
}

#[cfg(test)]
mod store_tests {
    use crate::{BlobError, BlobStore, BlobStoreOptions};
    use bytes::Bytes;

    fn options(block_size: u32) -> BlobStoreOptions {
        BlobStoreOptions {
            block_size,
            // What these tests check is the data-file path (stores from before volumes).
            volumes: None,
            ..BlobStoreOptions::default()
        }
    }

    async fn write(
        store: &BlobStore,
        key: sluice_proto::BlobKey,
        data: &[u8],
        repair: bool,
    ) -> Result<crate::BlobMeta, BlobError> {
        let mut w = store.writer(key, "a/b".into(), u64::MAX);
        if repair {
            w.allow_repair();
        }
        w.write(Bytes::copy_from_slice(data)).await?;
        w.commit().await
    }

    async fn read(store: &BlobStore, key: sluice_proto::BlobKey) -> Result<Vec<u8>, BlobError> {
        let r = store.open_reader(key)?.ok_or(BlobError::Deleted)?;
        let size = r.meta().size;
        Ok(r.read_chunk(0, size, u64::MAX).await?.concat())
    }

    #[tokio::test]
    async fn a_record_without_a_digest_takes_only_its_own_bytes_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path(), options(4096)).unwrap();
        let key = store.new_key().unwrap();
        let data = vec![5u8; 10_000];
        let mut meta = write(&store, key, &data, false).await.unwrap();
        // Rewrite its record as the first release wrote it: no digest.
        meta.sha256 = None;
        {
            let txn = store.index().db().unwrap().begin_write().unwrap();
            {
                let mut blobs = txn.open_table(crate::index::BLOBS).unwrap();
                blobs
                    .insert(key.as_bytes().as_slice(), meta.encode().as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        assert_eq!(store.stat(key).unwrap().unwrap().sha256, None);
        assert_eq!(write(&store, key, &data, false).await.unwrap(), meta);
        let mut other = data.clone();
        other[7] = 6;
        assert!(matches!(
            write(&store, key, &other, false).await,
            Err(BlobError::Conflict)
        ));
        assert!(matches!(
            write(&store, key, &data[..9000], true).await,
            Err(BlobError::Conflict)
        ));
        assert_eq!(read(&store, key).await.unwrap(), data);
    }

    #[tokio::test]
    async fn a_repair_keeps_the_block_size_its_record_names() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let key;
        {
            let store = BlobStore::open(dir.path(), options(64 << 10)).unwrap();
            key = store.new_key().unwrap();
            write(&store, key, &data, false).await.unwrap();
            store.close().await;
        }
        // The node now writes 4 KiB blocks; its old file is damaged and repaired.
        let store = BlobStore::open(dir.path(), options(4096)).unwrap();
        let path = crate::data_file_paths(dir.path()).unwrap().remove(0);
        let mut raw = std::fs::read(&path).unwrap();
        raw[1000] ^= 0xff;
        std::fs::write(&path, raw).unwrap();
        assert!(read(&store, key).await.is_err());
        let repaired = write(&store, key, &data, true).await.unwrap();
        assert_eq!(repaired.block_size, 64 << 10);
        assert_eq!(read(&store, key).await.unwrap(), data);
    }
}
