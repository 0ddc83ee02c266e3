//! State files: written whole and durably, read back with their version checked.
//!
//! A write goes to a temp file in the same directory, is fsynced, renamed over the old file,
//! and the directory is fsynced, so after a crash the file is the old version or the new one,
//! never a mix or nothing. JSON state is saved as `{"version": N, "state": ...}`; a file
//! without that envelope (written before it existed) is read as the bare state, and a newer
//! version is refused with a clear error rather than misread.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a state file this version can read: {why}")]
    Unreadable { path: PathBuf, why: String },
    #[error(
        "{path}: written by a newer Sluice (state version {found}; this one reads up to {known})"
    )]
    Newer {
        path: PathBuf,
        found: u32,
        known: u32,
    },
}

impl StateError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        StateError::Io {
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the disk is full (so callers can say so, and retry later).
    pub fn is_no_space(&self) -> bool {
        matches!(self, StateError::Io { source, .. } if source.raw_os_error() == Some(28))
    }
}

impl From<StateError> for std::io::Error {
    /// Keeps the kind (a full disk stays `StorageFull`) and names the file.
    fn from(e: StateError) -> Self {
        let kind = match &e {
            StateError::Io { source, .. } => source.kind(),
            _ => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

/// Writes `bytes` as the whole of `path`, durably (blocking).
pub fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    // One temp name per write: two writers of one file never share a temp file.
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| StateError::io(path, e))
}

#[derive(Serialize)]
struct Envelope<'a, T> {
    version: u32,
    state: &'a T,
}

/// Saves `state` to `path` as version `version`, durably (blocking).
pub fn save_blocking<T: Serialize>(path: &Path, version: u32, state: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(&Envelope { version, state }).map_err(|e| {
        StateError::Unreadable {
            path: path.to_owned(),
            why: e.to_string(),
        }
    })?;
    write_durably(path, &bytes)
}

/// Saves `state` off the async threads: serialized here, written on the blocking pool.
pub async fn save<T: Serialize>(path: &Path, version: u32, state: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(&Envelope { version, state }).map_err(|e| {
        StateError::Unreadable {
            path: path.to_owned(),
            why: e.to_string(),
        }
    })?;
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || write_durably(&owned, &bytes))
        .await
        .map_err(|e| StateError::io(path, std::io::Error::other(e.to_string())))?
}

/// Reads the state saved at `path` (blocking); `None` when there is no file. `known`: the
/// newest version this build writes; older ones, and files from before versions, are read
/// as they are (the caller's type takes them with serde defaults).
pub fn load<T: DeserializeOwned>(path: &Path, known: u32) -> Result<Option<T>, StateError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io(path, e)),
    };
    let unreadable = |why: String| StateError::Unreadable {
        path: path.to_owned(),
        why,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| unreadable(e.to_string()))?;
    let enveloped = value.as_object().is_some_and(|o| {
        o.len() == 2 && o.get("version").is_some_and(|v| v.is_u64()) && o.contains_key("state")
    });
    if enveloped {
        let found = value["version"].as_u64().unwrap_or(u64::MAX);
        let found = u32::try_from(found).unwrap_or(u32::MAX);
        if found > known {
            return Err(StateError::Newer {
                path: path.to_owned(),
                found,
                known,
            });
        }
        value = value["state"].take();
    }
    serde_json::from_value(value)
        .map(Some)
        .map_err(|e| unreadable(e.to_string()))
}

/// The id kept in `path` (`NODE_ID`, `EDGE_ID`): made by `make` on first use and written
/// durably before it is returned (blocking). A file that is there but empty, or holds what
/// `valid` refuses, is an error rather than a reason to make a new identity: a node that
/// silently became another would leave its old self behind in every tracker.
pub fn load_or_create_id(
    path: &Path,
    make: impl FnOnce() -> std::io::Result<String>,
    valid: impl Fn(&str) -> bool,
) -> Result<String, StateError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let id = text.trim();
            if valid(id) {
                return Ok(id.to_owned());
            }
            return Err(StateError::Unreadable {
                path: path.to_owned(),
                why: format!(
                    "{id:?} is not an id this role makes; restore the file, or remove it to \
                     start as a new member (and retire the old one)"
                ),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StateError::io(path, e)),
    }
    let id = make().map_err(|e| StateError::io(path, e))?;
    write_durably(path, format!("{id}\n").as_bytes())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_reads_back_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("peers.json");
        assert_eq!(load::<Vec<u32>>(&path, 1).unwrap(), None);
        save_blocking(&path, 1, &vec![1u32, 2]).unwrap();
        save_blocking(&path, 1, &vec![3u32]).unwrap();
        assert_eq!(load::<Vec<u32>>(&path, 1).unwrap(), Some(vec![3]));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["peers.json"]);
    }

    #[test]
    fn a_file_from_before_versions_is_read_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.json");
        std::fs::write(&path, "[1, 2]").unwrap();
        assert_eq!(load::<Vec<u32>>(&path, 1).unwrap(), Some(vec![1, 2]));
        std::fs::write(&path, r#"{"version": 9, "state": [1]}"#).unwrap();
        let e = load::<Vec<u32>>(&path, 1).unwrap_err();
        assert!(e.to_string().contains("newer"), "{e}");
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            load::<Vec<u32>>(&path, 1),
            Err(StateError::Unreadable { .. })
        ));
    }

    #[test]
    fn an_id_is_made_once_and_kept_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("NODE_ID");
        let valid = |id: &str| id.len() == 3 && id.bytes().all(|b| b.is_ascii_lowercase());
        let id = load_or_create_id(&path, || Ok("abc".into()), valid).unwrap();
        assert_eq!(id, "abc");
        let again = load_or_create_id(&path, || Ok("xyz".into()), valid).unwrap();
        assert_eq!(again, "abc");
        for damaged in ["", "two words", "ab"] {
            std::fs::write(&path, damaged).unwrap();
            let e = load_or_create_id(&path, || Ok("xyz".into()), valid).unwrap_err();
            assert!(e.to_string().contains("NODE_ID"), "{e}");
            assert_eq!(
                std::fs::read_to_string(&path).unwrap(),
                damaged,
                "left alone"
            );
        }
    }

    #[tokio::test]
    async fn saving_from_async_code_writes_on_the_blocking_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recordings.json");
        save(&path, 2, &"x").await.unwrap();
        assert_eq!(load::<String>(&path, 2).unwrap().as_deref(), Some("x"));
    }
}
