//! The circuit breaker in front of Redis, and the switch that keeps its recovery task single.
//!
//! Checks read one atomic ([`Breaker::is_open`]). The transitions (open, close) are rare and
//! run their report (gauges, the log line) under a mutex, so the gauges always end showing
//! the state the last transition left, whatever the interleaving. loom models are in
//! `tests/loom_breaker.rs` (`--cfg portcullis_loom`).

use crate::loom::{AtomicBool, AtomicU32, Mutex, Ordering};

pub(crate) struct Breaker {
    /// Open: checks are decided locally without calling Redis.
    open: AtomicBool,
    /// Failed or late calls in a row while closed.
    failures: AtomicU32,
    threshold: u32,
    /// Whether the recovery task runs.
    recovering: AtomicBool,
    /// Held while a transition changes `open` and reports it.
    transition: Mutex<()>,
}

impl Breaker {
    /// A breaker opening after `threshold` failures in a row; it starts open (nothing is known
    /// to answer before the first connection).
    pub(crate) fn new(threshold: u32) -> Self {
        Self {
            open: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            threshold: threshold.max(1),
            recovering: AtomicBool::new(false),
            transition: Mutex::new(()),
        }
    }

    /// Whether checks must be decided locally.
    #[inline]
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// A call succeeded.
    pub(crate) fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }

    /// A call failed: opens the breaker once `threshold` failed in a row. `report` runs (with
    /// the count) only for the call that opened it.
    pub(crate) fn failure(&self, report: impl FnOnce(u32)) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            self.trip(|| report(failures));
        }
    }

    /// Opens the breaker now; `report` runs only if it was closed.
    pub(crate) fn trip(&self, report: impl FnOnce()) {
        let _transition = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        if !self.open.swap(true, Ordering::AcqRel) {
            report();
        }
    }

    /// Closes the breaker (Redis answered a probe); `report` runs only if it was open.
    pub(crate) fn close(&self, report: impl FnOnce()) {
        let _transition = self.transition.lock().unwrap_or_else(|e| e.into_inner());
        self.failures.store(0, Ordering::Relaxed);
        if self.open.swap(false, Ordering::AcqRel) {
            report();
        }
    }

    /// Claims the recovery task: `true` for exactly one caller until [`Breaker::recovery_ended`].
    pub(crate) fn start_recovery(&self) -> bool {
        !self.recovering.load(Ordering::Relaxed) && !self.recovering.swap(true, Ordering::AcqRel)
    }

    /// The recovery task ended (or was never spawned): the next open check starts another.
    pub(crate) fn recovery_ended(&self) {
        self.recovering.store(false, Ordering::Release);
    }
}

#[cfg(all(test, portcullis_loom))]
#[path = "tests/loom_breaker.rs"]
mod loom_breaker;
