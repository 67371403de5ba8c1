//! The synchronization primitives of the connection caps and the fleet limits' breaker: loom's
//! under `--cfg portcullis_loom`, std's otherwise.

#[cfg(all(test, portcullis_loom))]
pub(crate) use loom::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};

#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicUsize, Ordering},
};

#[cfg(all(test, portcullis_loom, feature = "redis"))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32};

#[cfg(all(not(all(test, portcullis_loom)), feature = "redis"))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32};
