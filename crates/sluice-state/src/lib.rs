//! Small process state done right, the same in every role:
//!
//! - [`file`]: state files (`NODE_ID`, `members.json`, `peers.json`, upload sessions...)
//!   written whole and durably (temp file, fsync, rename, directory fsync), JSON ones with a
//!   version marker so a newer format is refused rather than misread; [`Saver`] keeps one up
//!   to date from async code, on a thread of its own.
//! - [`sync`]: locks that survive a panic elsewhere: a poisoned lock is recovered (and said
//!   once), never skipped, since what these locks guard (maps, counters, lists) is whole at
//!   every step.

pub mod file;
pub mod saver;
pub mod sync;

pub use file::{StateError, load, load_or_create_id, save, save_blocking, write_durably};
pub use saver::Saver;
pub use sync::{LockRecover, RwLockRecover};
