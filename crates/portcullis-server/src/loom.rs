//! The synchronization primitives of the hand-written parts of portcullis-server: std's and
//! futures' normally, loom's when the crate is built for its loom tests
//! (`RUSTFLAGS="--cfg portcullis_loom" cargo test -p portcullis-server --lib loom`). The cfg is
//! `portcullis_loom` rather than `loom` because tokio changes shape under `--cfg loom`.

/// loom's `AtomicWaker` with the `register(&Waker)` signature of futures'.
#[cfg(all(test, portcullis_loom))]
pub(crate) struct AtomicWaker(loom::future::AtomicWaker);

#[cfg(all(test, portcullis_loom))]
impl AtomicWaker {
    pub(crate) fn new() -> Self {
        Self(loom::future::AtomicWaker::new())
    }

    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.0.register_by_ref(waker);
    }

    pub(crate) fn wake(&self) {
        self.0.wake();
    }
}

#[cfg(all(test, portcullis_loom))]
impl std::fmt::Debug for AtomicWaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AtomicWaker")
    }
}
#[cfg(all(test, portcullis_loom))]
pub(crate) use loom::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};

#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use futures_util::task::AtomicWaker;
#[cfg(not(all(test, portcullis_loom)))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
