//! The orphan sweep: after a crash, a data file can exist that no index entry names (renamed
//! into place but not yet indexed, or deleted from the index but not yet unlinked), and temp
//! files of uploads the crash cut off. On an open that follows a crash, a background thread
//! walks `blobs/` and removes such files, sparing those of keys with a writer at work.

use std::path::Path;

use sluice_proto::BlobKey;

use crate::BlobStore;

pub(crate) fn start(store: BlobStore) {
    let spawned = std::thread::Builder::new()
        .name("sluice-orphan-sweep".into())
        .spawn(move || match sweep(&store, &mut |_| {}) {
            Ok(0) => tracing::debug!("orphan sweep found nothing"),
            Ok(n) => tracing::info!(removed = n, "orphan sweep removed unindexed data files"),
            Err(e) => tracing::warn!(error = %e, "orphan sweep stopped early"),
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "could not start the orphan sweep");
    }
}

/// The extension of a blob being written.
pub(crate) const TEMP_SUFFIX: &str = "tmp";
/// The extension of an incomplete blob's data file (`KEY.SIZE.part`).
pub(crate) const PART_SUFFIX: &str = "part";

/// Returns how many files it removed. `before_unlink` is called with each key whose file is
/// about to go, after the decision (tests race writers against it there).
pub(crate) fn sweep(
    store: &BlobStore,
    before_unlink: &mut dyn FnMut(&BlobKey),
) -> std::io::Result<usize> {
    let mut removed = 0;
    let mut failure = None;
    walk_shards(store.root(), &mut |path, name| {
        if store.is_closing() {
            return Ok(false);
        }
        // `KEY` or `KEY.NONCE.tmp`; anything else is not ours to judge.
        let Ok(key) = BlobKey::parse(name.split('.').next().unwrap_or_default()) else {
            return Ok(true);
        };
        // The sweep is a writer of the key while it judges it, and holds the key's commit
        // turn: a writer that was at work first is left alone, and one that starts now places
        // its file only after the unlink (every placing happens in that turn).
        let claim = store.begin_write(key);
        let Some(_turn) = claim.try_commit_turn() else {
            return Ok(true);
        };
        if !claim.alone() {
            return Ok(true);
        }
        let doomed = if is_temp(path) {
            true
        } else {
            match store.index().get(&key) {
                // A data file is kept only if it is the one the index names: a shorter prefix
                // replaced just before a crash goes too.
                // (A key whose file is in a volume has no data file to keep.)
                Ok(Some(meta)) => {
                    meta.location != crate::record::Location::DataFile
                        || store.data_path(&key, &meta) != path
                }
                Ok(None) => true,
                Err(e) => {
                    failure = Some(e.to_string());
                    return Ok(false);
                }
            }
        };
        if doomed {
            before_unlink(&key);
            remove_if_present(path)?;
            removed += 1;
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
    walk_shards(root, &mut |path, name| match BlobKey::parse(name) {
        Ok(key) => visit(path, key),
        Err(_) => Ok(true),
    })
}

/// Calls `visit` with every entry of every shard directory, until it returns `Ok(false)`.
fn walk_shards(
    root: &Path,
    visit: &mut dyn FnMut(&Path, &str) -> std::io::Result<bool>,
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
                if let Some(name) = entry.file_name().to_str() {
                    if !visit(&entry.path(), name)? {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Blobs being written (or left half-written by a crash), for tests and tools.
pub fn temp_file_paths(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut paths = Vec::new();
    walk_shards(root, &mut |path, _| {
        if is_temp(path) {
            paths.push(path.to_owned());
        }
        Ok(true)
    })?;
    Ok(paths)
}

fn is_temp(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == TEMP_SUFFIX)
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

/// A file may vanish under the sweep (a delete's own unlink, a writer finishing): fine.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
