//! A state file kept up to date from code that must not block: each change hands the latest
//! state to the file's own writer thread, which saves it durably, in order; a burst of changes
//! is written once, as its last state. A write that fails (a full disk, a read-only
//! directory) is tried again, from 1 s to every 30 s, until it succeeds or a newer state
//! takes its place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::Serialize;

use crate::sync::LockRecover;
use crate::{StateError, save_blocking};

const FIRST_RETRY: std::time::Duration = std::time::Duration::from_secs(1);
const LONGEST_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

/// What the writer thread and its users share.
struct Shared<T> {
    /// The newest state not written yet, and its number.
    pending: Option<(u64, T)>,
    /// Numbers of the last state handed over, and the last one tried (written, or failed).
    handed: u64,
    tried: u64,
    closed: bool,
}

/// Saves the latest state handed to it on a thread of its own (see the module docs).
pub struct Saver<T> {
    shared: Arc<(Mutex<Shared<T>>, Condvar)>,
    path: PathBuf,
}

impl<T: Serialize + Send + 'static> Saver<T> {
    /// Starts the writer for `path`; `version` is the state's format version, and `outcome`
    /// hears how each write went (to log, or to try again later).
    pub fn start(
        path: &Path,
        version: u32,
        outcome: impl Fn(Result<(), StateError>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new((
            Mutex::new(Shared {
                pending: None,
                handed: 0,
                tried: 0,
                closed: false,
            }),
            Condvar::new(),
        ));
        let (worker, file) = (shared.clone(), path.to_owned());
        let name = format!(
            "save {}",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
        );
        std::thread::Builder::new().name(name).spawn(move || {
            let (lock, wake) = &*worker;
            let mut pause = FIRST_RETRY;
            loop {
                let (number, state) = {
                    let mut s = lock.lock_or_recover();
                    loop {
                        if let Some(next) = s.pending.take() {
                            break next;
                        }
                        if s.closed {
                            return;
                        }
                        s = wake
                            .wait(s)
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                    }
                };
                let result = save_blocking(&file, version, &state);
                let failed = result.is_err();
                outcome(result);
                let mut s = lock.lock_or_recover();
                s.tried = s.tried.max(number);
                wake.notify_all();
                if !failed {
                    pause = FIRST_RETRY;
                    continue;
                }
                // Try this state again later, unless a newer one arrives first.
                if s.pending.is_none() {
                    s.pending = Some((number, state));
                }
                if s.closed {
                    return;
                }
                let _ = wake
                    .wait_timeout(s, pause)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                pause = (pause * 2).min(LONGEST_RETRY);
            }
        })?;
        Ok(Self {
            shared,
            path: path.to_owned(),
        })
    }

    /// Hands over the newest state; returns at once.
    pub fn save(&self, state: T) {
        let (lock, wake) = &*self.shared;
        let mut s = lock.lock_or_recover();
        s.handed += 1;
        s.pending = Some((s.handed, state));
        wake.notify_all();
    }

    /// Waits (blocking) until every state handed over so far has been tried once (written,
    /// or failed and set to be tried again).
    pub fn flush(&self) {
        let (lock, wake) = &*self.shared;
        let mut s = lock.lock_or_recover();
        let target = s.handed;
        while s.tried < target {
            s = wake
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl<T> Drop for Saver<T> {
    /// Waits for what was handed over to be written (a small file: a moment), then lets the
    /// writer end, so whoever opens the file next reads the last state.
    fn drop(&mut self) {
        let (lock, wake) = &*self.shared;
        let mut s = lock.lock_or_recover();
        let target = s.handed;
        // Bounded: a writer stuck on a dead disk must not hold its owner's drop forever.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while s.tried < target {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::error!(path = %self.path.display(), "state file not written within 10 s of shutdown");
                break;
            }
            s = wake
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        s.closed = true;
        wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_state_handed_over_is_the_one_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("members.json");
        let failures = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = failures.clone();
        let saver = Saver::start(&path, 1, move |r| {
            if r.is_err() {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap();
        for n in 0..100u32 {
            saver.save(vec![n]);
        }
        saver.flush();
        assert_eq!(crate::load::<Vec<u32>>(&path, 1).unwrap(), Some(vec![99]));
        assert_eq!(failures.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[test]
    fn a_failed_write_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("peers.json");
        let (tx, rx) = std::sync::mpsc::channel();
        let saver = Saver::start(&path, 1, move |r| {
            let _ = tx.send(r.is_ok());
        })
        .unwrap();
        saver.save(1u8);
        saver.flush();
        assert!(
            !rx.recv().unwrap(),
            "the write into a missing directory failed"
        );
    }
}
