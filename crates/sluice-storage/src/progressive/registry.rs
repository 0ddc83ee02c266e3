//! The node's upload sessions: by upload id, and by the key of the file each is receiving.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sluice_blob::BlobStore;
use sluice_media::jpeg::ScanTracker;
use sluice_proto::BlobKey;
use sluice_state::LockRecover;

use super::record::{SessionRecord, read_record, write_record};
use super::session::{Progress, Session, track_file};
use super::{ProgressiveConfig, io_error};
use crate::error::ApiError;

/// The node's progressive upload sessions: the one owner of the registry.
pub(crate) struct Uploads {
    dir: PathBuf,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    by_key: Mutex<HashMap<BlobKey, Arc<Session>>>,
}

impl Uploads {
    /// Opens `DATA/uploads`, reloading the sessions a previous run left (blocking).
    pub fn open(store: &BlobStore, config: &ProgressiveConfig) -> std::io::Result<Self> {
        let dir = store.root().join("uploads");
        std::fs::create_dir_all(&dir)?;
        let uploads = Self {
            dir,
            sessions: Mutex::default(),
            by_key: Mutex::default(),
        };
        for entry in std::fs::read_dir(&uploads.dir)? {
            let path = entry?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if BlobKey::parse(id).is_err() {
                continue;
            }
            if let Err(e) = uploads.reload(id, store, config) {
                // Set aside for an operator, out of the way of every later start.
                let aside = uploads.dir.join("damaged");
                let moved = std::fs::create_dir_all(&aside).and_then(|()| {
                    for ext in ["json", "data"] {
                        let from = uploads.dir.join(format!("{id}.{ext}"));
                        if from.exists() {
                            std::fs::rename(&from, aside.join(format!("{id}.{ext}")))?;
                        }
                    }
                    Ok(())
                });
                tracing::error!(upload = id, error = %e, moved_to = %aside.display(), moved = moved.is_ok(), "could not reload an upload session; its files are set aside (a file it committed stays as far as it was committed)");
            }
        }
        // Data files without a record: a creation cut off by a crash.
        for entry in std::fs::read_dir(&uploads.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "data")
                && !path.with_extension("json").exists()
            {
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(uploads)
    }

    fn reload(
        &self,
        id: &str,
        store: &BlobStore,
        config: &ProgressiveConfig,
    ) -> std::io::Result<()> {
        let record_path = self.dir.join(format!("{id}.json"));
        let data_path = self.dir.join(format!("{id}.data"));
        let record = read_record(&record_path)?;
        let file = File::options().read(true).write(true).open(&data_path)?;
        let offset = file.metadata()?.len().min(record.length);
        let tracker = track_file(&file, offset, config.max_scan_tail)?;
        let key = record.key.as_deref().and_then(|k| BlobKey::parse(k).ok());
        let stored = match key {
            Some(k) => store.stat(k).map_err(std::io::Error::other)?,
            None => None,
        };
        if stored
            .as_ref()
            .is_some_and(|m| m.state.is_complete() && m.size == record.length)
        {
            // Finished (its events sent) before its files could be removed: remove them now,
            // and do not finish it twice.
            for path in [&record_path, &data_path] {
                let _ = std::fs::remove_file(path);
            }
            tracing::info!(
                upload = id,
                "a finished upload's leftover session files removed"
            );
            return Ok(());
        }
        let committed = stored.map(|m| m.size);
        let session = Session::new(
            id.to_owned(),
            data_path,
            record_path,
            record,
            Progress {
                file: Some(Arc::new(file)),
                offset,
                tracker,
                committed,
                ending: None,
            },
        );
        tracing::info!(upload = id, offset, "upload session reloaded");
        self.insert(session, key);
        Ok(())
    }

    /// Creates a session durably: its record and an empty data file, both fsynced.
    pub async fn create(
        &self,
        record: SessionRecord,
        config: &ProgressiveConfig,
    ) -> Result<Arc<Session>, ApiError> {
        let mut raw = [0u8; sluice_proto::fileid::KEY_BYTES];
        getrandom::fill(&mut raw).map_err(|_| ApiError::Internal)?;
        let id = BlobKey::from_bytes(raw).to_string();
        let record_path = self.dir.join(format!("{id}.json"));
        let data_path = self.dir.join(format!("{id}.data"));
        let (rp, dp, rec) = (record_path.clone(), data_path.clone(), record.clone());
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<File> {
            let file = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&dp)?;
            write_record(&rp, &rec)?;
            Ok(file)
        })
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(io_error)?;
        let session = Session::new(
            id,
            data_path,
            record_path,
            record,
            Progress {
                file: Some(Arc::new(file)),
                offset: 0,
                tracker: ScanTracker::new(config.max_scan_tail),
                committed: None,
                ending: None,
            },
        );
        self.insert(session.clone(), None);
        Ok(session)
    }

    fn insert(&self, session: Arc<Session>, key: Option<BlobKey>) {
        self.sessions
            .lock_or_recover()
            .insert(session.id.clone(), session.clone());
        if let Some(key) = key {
            self.index_key(key, &session);
        }
    }

    pub(crate) fn index_key(&self, key: BlobKey, session: &Arc<Session>) {
        self.by_key.lock_or_recover().insert(key, session.clone());
    }

    pub fn get(&self, id: &str) -> Option<Arc<Session>> {
        self.sessions.lock_or_recover().get(id).cloned()
    }

    /// The session still receiving the file with this key, if any.
    pub fn live(&self, key: &BlobKey) -> Option<Arc<Session>> {
        self.by_key.lock_or_recover().get(key).cloned()
    }

    pub(crate) fn forget_key(&self, key: &BlobKey) {
        self.by_key.lock_or_recover().remove(key);
    }

    pub(crate) fn forget(&self, id: &str) {
        self.sessions.lock_or_recover().remove(id);
    }

    /// Sessions held (ended ones linger until the watchdog forgets them).
    pub fn count(&self) -> usize {
        self.sessions.lock_or_recover().len()
    }

    /// Every session, for the watchdog sweep.
    pub(crate) fn all(&self) -> Vec<Arc<Session>> {
        self.sessions.lock_or_recover().values().cloned().collect()
    }
}
