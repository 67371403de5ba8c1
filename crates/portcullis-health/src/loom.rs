//! The synchronization primitives of the overload signal: std's and tokio's normally, loom's
//! (and portcullis-shutdown's `Notify` stand-in) when the crate is built for its loom tests
//! (`RUSTFLAGS="--cfg portcullis_loom" cargo test -p portcullis-health --lib loom`). The cfg
//! is `portcullis_loom` rather than `loom` because tokio changes shape under `--cfg loom`.

#[cfg(all(test, portcullis_loom))]
pub(crate) use self::notify::{Notify, OwnedNotified};
#[cfg(all(test, portcullis_loom))]
pub(crate) use loom::sync::Mutex;
#[cfg(all(test, portcullis_loom))]
pub(crate) use loom::sync::atomic::{AtomicU32, Ordering};

/// portcullis-shutdown's `Notify` stand-in for loom models, shared by path rather than
/// copied: one source for both crates' models, and no loom anywhere in a normal build's
/// dependency graph (a dependency on it under the cfg would put loom in every user's
/// lock file). The file is not in this crate's package: the loom models run from the
/// repository.
#[cfg(all(test, portcullis_loom))]
#[path = "../../portcullis-shutdown/src/loom/notify.rs"]
mod notify;

#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use std::sync::Mutex;
#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use std::sync::atomic::{AtomicU32, Ordering};
#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use tokio::sync::{Notify, futures::OwnedNotified};
