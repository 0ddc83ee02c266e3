//! The orphan sweep: after a crash, a data file can exist that no index entry names (renamed
//! into place but not yet indexed, or deleted from the index but not yet unlinked). Once per
//! open, a background thread walks `blobs/` and removes such files, sparing any written since
//! this open began (those belong to uploads now in flight).

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
    for level1 in std::fs::read_dir(store.root().join("blobs"))? {
        let level1 = level1?;
        if store.is_closing() {
            break;
        }
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
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(key) = BlobKey::parse(&name) else {
                    continue;
                };
                let modified = entry.metadata()?.modified()?;
                if modified >= started {
                    continue;
                }
                match store.index().get(&key) {
                    Ok(Some(_)) => {}
                    Ok(None) => {
                        std::fs::remove_file(entry.path())?;
                        removed += 1;
                    }
                    Err(e) => return Err(std::io::Error::other(e.to_string())),
                }
            }
        }
    }
    Ok(removed)
}
