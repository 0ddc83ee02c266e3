//! The volumes' index logs on disk (format in [`crate::volume_map`]). Only the index writer
//! thread touches them: it appends each committed batch's entries (no sync), and at a
//! checkpoint syncs them and records their lengths in the volumes' rows.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::BlobError;
use crate::volume_map::IdxEntry;

const SUFFIX: &str = "idx";

/// Entries appended between checkpoints, at most: what a restart reads from the volumes
/// again instead of from the logs.
pub(crate) const CHECKPOINT_ENTRIES: u64 = 64 << 10;
/// Bytes committed to volumes between checkpoints, at most: what a restart after a crash reads
/// again (64 Ki entries of 1 MiB files would be 64 GiB).
pub(crate) const CHECKPOINT_BYTES: u64 = 256 << 20;

pub(crate) struct IdxLogs {
    dir: PathBuf,
    open: HashMap<u64, File>,
    /// Logs appended to since the last sync.
    dirty: BTreeSet<u64>,
    pub(crate) since_checkpoint: u64,
    /// Bytes committed to volumes since the last checkpoint.
    pub(crate) bytes_since_checkpoint: u64,
    /// Entries between checkpoints (`VolumeOptions::checkpoint_entries`).
    pub(crate) checkpoint_every: u64,
    /// Bytes between checkpoints (`VolumeOptions::checkpoint_bytes`).
    pub(crate) checkpoint_bytes: u64,
    /// An append failed: the logs on disk may now miss entries or end in a torn one, so no
    /// checkpoint may trust them again before a restart reloads from the last good one.
    pub(crate) broken: bool,
    /// Volumes whose records past their checkpoint the load could not read: their `covered`
    /// stays, so the next open tries again.
    pub(crate) unreplayed: BTreeSet<u64>,
}

pub(crate) fn idx_path(dir: &Path, volume: u64) -> PathBuf {
    dir.join(format!("{volume:016x}.{SUFFIX}"))
}

/// The volume an index log belongs to, from its name.
pub(crate) fn idx_volume_of(path: &Path) -> Option<u64> {
    crate::volumes::id_of(path, SUFFIX)
}

impl IdxLogs {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            open: HashMap::new(),
            dirty: BTreeSet::new(),
            since_checkpoint: 0,
            bytes_since_checkpoint: 0,
            checkpoint_every: CHECKPOINT_ENTRIES,
            checkpoint_bytes: CHECKPOINT_BYTES,
            broken: false,
            unreplayed: BTreeSet::new(),
        }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    fn file(&mut self, volume: u64) -> Result<&mut File, BlobError> {
        if !self.open.contains_key(&volume) {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(idx_path(&self.dir, volume))?;
            self.open.insert(volume, file);
        }
        self.open.get_mut(&volume).ok_or(BlobError::Closed)
    }

    /// Appends entries, each to its volume's log. A failure marks the logs broken (see
    /// `broken`): the map in memory is right, and a restart rebuilds from the last checkpoint.
    pub(crate) fn append(&mut self, entries: &[(u64, IdxEntry)]) {
        if entries.is_empty() || self.broken {
            return;
        }
        let mut by_volume: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
        for (volume, entry) in entries {
            entry.encode_into(by_volume.entry(*volume).or_default());
        }
        for (volume, bytes) in by_volume {
            let written = self.file(volume).and_then(|f| Ok(f.write_all(&bytes)?));
            if let Err(e) = written {
                tracing::error!(volume, error = %e, "cannot append to a volume's index log; a restart reads the volumes since the last checkpoint instead");
                self.broken = true;
                return;
            }
            self.dirty.insert(volume);
        }
        self.since_checkpoint += entries.len() as u64;
    }

    pub(crate) fn due(&self) -> bool {
        !self.broken
            && (self.since_checkpoint >= self.checkpoint_every.max(1)
                || self.bytes_since_checkpoint >= self.checkpoint_bytes.max(1))
    }

    /// Syncs every log appended to since the last sync; returns each one's length.
    pub(crate) fn sync(&mut self) -> Result<Vec<(u64, u64)>, BlobError> {
        if self.broken {
            return Err(BlobError::Index(
                "a volume index log could not be written".into(),
            ));
        }
        let mut lengths = Vec::with_capacity(self.dirty.len());
        // Each log stays dirty until its own sync went through.
        for volume in self.dirty.clone() {
            let file = self.file(volume)?;
            file.sync_data()?;
            lengths.push((volume, file.metadata()?.len()));
            self.dirty.remove(&volume);
        }
        self.since_checkpoint = 0;
        self.bytes_since_checkpoint = 0;
        Ok(lengths)
    }

    /// The first `len` bytes of a volume's log (all of it when shorter; empty when missing).
    pub(crate) fn read(&self, volume: u64, len: u64) -> Result<Vec<u8>, BlobError> {
        use std::io::Read;
        match File::open(idx_path(&self.dir, volume)) {
            Ok(file) => {
                let mut out = Vec::new();
                file.take(len).read_to_end(&mut out)?;
                Ok(out)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Cuts a volume's log to `len` bytes (creating it empty if missing): what follows was
    /// never covered by a checkpoint.
    pub(crate) fn cut(&mut self, volume: u64, len: u64) -> Result<(), BlobError> {
        self.open.remove(&volume);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(idx_path(&self.dir, volume))?;
        file.set_len(len)?;
        self.dirty.insert(volume);
        Ok(())
    }

    /// Lets go of a dropped volume's log (its file is removed with the volume).
    pub(crate) fn forget(&mut self, volume: u64) {
        self.open.remove(&volume);
        self.dirty.remove(&volume);
    }
}
