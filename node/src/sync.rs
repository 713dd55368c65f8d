//! Lock helpers that ignore poisoning.
//!
//! A poisoned lock is used as is rather than turning one panic into a panic in every task
//! that takes the lock afterwards. Most of the node's locks guard one insert, remove or lookup,
//! which a panic cannot leave half done. The engine's lock (`runtime::Driver`) guards whole
//! engine calls: a panic inside one (a bug: input from the network and values from the API are
//! checked before they get there) can leave that call's work half done, and the node goes on
//! from there.

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
