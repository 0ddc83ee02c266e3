//! The orphan sweep: after a crash, a data file can exist that no index entry names (renamed
//! into place but not yet indexed, or deleted from the index but not yet unlinked). Once per
//! open, a background thread walks `blobs/` and removes such files, sparing any written since
//! this open began (those belong to uploads now in flight).

use std::path::Path;
use std::time::SystemTime;

use sluice_proto::BlobKey;

use crate::BlobStore;

pub(crate) fn start(store: BlobStore) {
    let started = SystemTime::now();
    let spawned = std::thread::Builder::new()
        .name("sluice-orphan-sweep".into())
        .spawn(move || match sweep(&store, started) {
            Ok(0) => tracing::debug!("orphan sweep found nothing"),
            Ok(n) => tracing::info!(removed = n, "orphan sweep removed unindexed data files"),
            Err(e) => tracing::warn!(error = %e, "orphan sweep stopped early"),
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the orphan sweep");
    }
}

/// Returns how many files it removed.
pub(crate) fn sweep(store: &BlobStore, started: SystemTime) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut failure = None;
    walk_data_files(store.root(), &mut |path, key| {
        if store.is_closing() {
            return Ok(false);
        }
        if std::fs::metadata(path)?.modified()? >= started {
            return Ok(true);
        }
        match store.index().get(&key) {
            Ok(Some(_)) => {}
            Ok(None) => {
                std::fs::remove_file(path)?;
                removed += 1;
            }
            Err(e) => {
                failure = Some(e.to_string());
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    match failure {
        Some(e) => Err(std::io::Error::other(e)),
        None => Ok(removed),
    }
}

/// Calls `visit` with the path and key of every data file under `root/blobs`, until it
/// returns `Ok(false)`. Names that are not keys are skipped (an operator's stray file is not
/// ours to judge).
pub fn walk_data_files(
    root: &Path,
    visit: &mut dyn FnMut(&Path, BlobKey) -> std::io::Result<bool>,
) -> std::io::Result<()> {
    for level1 in std::fs::read_dir(root.join("blobs"))? {
        let level1 = level1?;
        if !level1.file_type()?.is_dir() {
            continue;
        }
        for level2 in std::fs::read_dir(level1.path())? {
            let level2 = level2?;
            if !level2.file_type()?.is_dir() {
                continue;
            }
            for entry in std::fs::read_dir(level2.path())? {
                let entry = entry?;
                let key = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| BlobKey::parse(n).ok());
                if let Some(key) = key {
                    if !visit(&entry.path(), key)? {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Paths of every data file under `root` (for tests and tools; the server never lists).
pub fn data_file_paths(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths = Vec::new();
    walk_data_files(root, &mut |path, _| {
        paths.push(path.to_owned());
        Ok(true)
    })?;
    Ok(paths)
}
