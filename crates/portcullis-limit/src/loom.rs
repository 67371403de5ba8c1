//! The synchronization primitives of the connection caps: loom's under `--cfg portcullis_loom`,
//! std's otherwise.

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
