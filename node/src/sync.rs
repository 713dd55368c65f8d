//! Lock helpers that ignore poisoning.
//!
//! The data under the node's locks stays consistent even if a holder panicked (each critical
//! section is a single insert, remove or lookup), so a poisoned lock is used as is rather than
//! turning one panicking handler into a panic in every task.

use std::sync::{Mutex, MutexGuard};
#[cfg(any(feature = "contracts", feature = "testing"))]
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks a mutex.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes a read lock.
#[cfg(any(feature = "contracts", feature = "testing"))]
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Takes a write lock.
#[cfg(any(feature = "contracts", feature = "testing"))]
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
