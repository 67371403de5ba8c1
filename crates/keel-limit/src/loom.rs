//! The synchronization primitives of the connection caps: loom's under `--cfg keel_loom`,
//! std's otherwise.

#[cfg(all(test, keel_loom))]
pub(crate) use loom::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

#[cfg(not(all(test, keel_loom)))]
pub(crate) use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};
