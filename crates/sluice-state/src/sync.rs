//! Locks that survive a panic elsewhere.
//!
//! A std lock is poisoned when a thread panics while holding it. Skipping the work when
//! that happens (`if let Ok(..) = m.lock()`) silently stops a registry or a counter from ever
//! changing again; failing every later call turns one bug into an outage. The data these
//! locks guard is whole between statements, so the lock is recovered, the poison cleared, and
//! the event logged once.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

fn recovered(what: &str) {
    tracing::error!(
        lock = what,
        "a thread panicked while holding a lock; its data is used as it was left"
    );
}

pub trait LockRecover<T: ?Sized> {
    /// The guard, poisoned or not.
    fn lock_or_recover(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockRecover<T> for Mutex<T> {
    fn lock_or_recover(&self) -> MutexGuard<'_, T> {
        match self.lock() {
            Ok(guard) => guard,
            Err(poisoned) => {
                recovered(std::any::type_name::<T>());
                self.clear_poison();
                poisoned.into_inner()
            }
        }
    }
}

pub trait RwLockRecover<T: ?Sized> {
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T>;
    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> RwLockRecover<T> for RwLock<T> {
    fn read_or_recover(&self) -> RwLockReadGuard<'_, T> {
        match self.read() {
            Ok(guard) => guard,
            Err(poisoned) => {
                recovered(std::any::type_name::<T>());
                self.clear_poison();
                poisoned.into_inner()
            }
        }
    }

    fn write_or_recover(&self) -> RwLockWriteGuard<'_, T> {
        match self.write() {
            Ok(guard) => guard,
            Err(poisoned) => {
                recovered(std::any::type_name::<T>());
                self.clear_poison();
                poisoned.into_inner()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_recovered_with_its_data_and_cleared() {
        let shared = Arc::new(Mutex::new(vec![1]));
        let held = shared.clone();
        let _ = std::thread::spawn(move || {
            let mut v = held.lock().unwrap();
            v.push(2);
            panic!("while holding the lock");
        })
        .join();
        assert!(shared.is_poisoned());
        shared.lock_or_recover().push(3);
        assert_eq!(*shared.lock_or_recover(), [1, 2, 3]);
        assert!(
            !shared.is_poisoned(),
            "the poison is cleared once recovered"
        );

        let rw = Arc::new(RwLock::new(0));
        let held = rw.clone();
        let _ = std::thread::spawn(move || {
            let _w = held.write().unwrap();
            panic!("while writing");
        })
        .join();
        *rw.write_or_recover() += 1;
        assert_eq!(*rw.read_or_recover(), 1);
    }
}
