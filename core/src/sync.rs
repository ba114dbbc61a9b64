//! The one way Shoal locks a std mutex.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning: Shoal's mutexes guard state that every critical section
/// leaves consistent (a map operation, a field set), so a panic elsewhere must not stop a
/// service from reading or updating it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
