//! The synchronization primitives of the hand-written phase cell: std's and tokio's normally,
//! loom's when the crate is built for its loom tests
//! (`RUSTFLAGS="--cfg portcullis_loom" cargo test -p portcullis-shutdown --lib loom`). The cfg
//! is `portcullis_loom` rather than `loom` because tokio changes shape under `--cfg loom`.
//!
//! The `Notify` stand-in is in `loom/notify.rs`, which portcullis-health's loom models
//! include too (its overload signal has the same shape as the phase cell).

#[cfg(all(test, portcullis_loom))]
pub(crate) use loom::sync::atomic::{AtomicU8, Ordering};
#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(all(test, portcullis_loom))]
pub(crate) use self::notify::{Notify, OwnedNotified};
#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use tokio::sync::{Notify, futures::OwnedNotified};

#[cfg(all(test, portcullis_loom))]
mod notify;
