//! Locking that survives a panic elsewhere. Every critical section in this crate
//! completes its update before the guard drops, so a mutex poisoned by a panic
//! still holds the last consistent state; taking it is safe.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
