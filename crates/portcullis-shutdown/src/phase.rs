//! The server-wide phase that every connection watches: running, draining, forced.
//!
//! Connections check it on every poll, so checking must be cheap: one atomic load. A
//! `CancellationToken` would take a mutex shared by every connection on each check. Wake-ups
//! go through one `tokio::sync::Notify` per stage, with each watcher registered once for the
//! next stage (and again only if its task's waker changes), so the lock is taken about twice
//! per connection, not per poll.
//!
//! One `Notify` per stage, not one for all: a watcher skips re-registering while its waker is
//! unchanged, which is only sound if every notification it can receive means a stage it has
//! not seen yet. With a single `Notify`, the notification for a stage the watcher had already
//! read (the stage is stored before it is notified) would use up its registration, and the
//! next stage would wake nobody (the loom model `loom_concurrent_advances_only_move_forward`
//! finds that schedule).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;

use crate::loom::{AtomicU8, Notify, Ordering, OwnedNotified};

/// Where the server is in its life. Only moves forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    Running = 0,
    Draining = 1,
    Forced = 2,
}

impl Stage {
    fn from_u8(value: u8) -> Self {
        match value {
            0 => Stage::Running,
            1 => Stage::Draining,
            _ => Stage::Forced,
        }
    }
}

/// The phase of one server (of one core, in per-core mode).
#[derive(Debug)]
pub(crate) struct Phase {
    stage: AtomicU8,
    /// `entered[i]` is notified once, when the stage first reaches `i + 1`.
    entered: [Arc<Notify>; 2],
}

impl Phase {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            stage: AtomicU8::new(Stage::Running as u8),
            entered: [Arc::new(Notify::new()), Arc::new(Notify::new())],
        })
    }

    pub(crate) fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    /// Moves to `stage` if that is forward, and wakes every watcher of each stage entered.
    pub(crate) fn advance(&self, stage: Stage) {
        // Store before notifying: a watcher that registers after the notification re-reads
        // the stage once registered and sees the store. A repeat (or a step back) notifies
        // nobody, and each stage's `Notify` fires once: a watcher's registration is only used
        // up by a stage it has not seen.
        let previous = self.stage.fetch_max(stage as u8, Ordering::AcqRel);
        for entered in previous + 1..=stage as u8 {
            self.entered[usize::from(entered - 1)].notify_waiters();
        }
    }

    /// A registration for the first stage after `seen` (none after the last).
    fn next_after(&self, seen: Stage) -> Option<OwnedNotified> {
        self.entered
            .get(seen as usize)
            .map(|notify| Arc::clone(notify).notified_owned())
    }

    /// Completes once the phase reaches `stage`.
    pub(crate) async fn reached(self: &Arc<Self>, stage: Stage) {
        let mut watch = std::pin::pin!(PhaseWatch::new(Arc::clone(self)));
        while watch.stage() < stage {
            std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)).await;
        }
    }
}

pin_project! {
    /// One watcher of a [`Phase`].
    pub(crate) struct PhaseWatch {
        phase: Arc<Phase>,
        seen: Stage,
        // Registration for the stage after `seen`; `None` once `seen` is the last stage.
        #[pin]
        next: Option<OwnedNotified>,
        // The waker the registration in `next` holds, if registered.
        registered: Option<Waker>,
    }
}

impl PhaseWatch {
    pub(crate) fn new(phase: Arc<Phase>) -> Self {
        let next = phase.next_after(Stage::Running);
        Self {
            seen: Stage::Running,
            phase,
            next,
            registered: None,
        }
    }

    /// The phase's stage now (one atomic load; registers nothing).
    pub(crate) fn current(&self) -> Stage {
        self.phase.stage()
    }

    /// The stage last returned by `poll_change` (or `Running`).
    pub(crate) fn stage(&self) -> Stage {
        self.seen
    }

    /// Ready with the new stage when it moved since the last call.
    pub(crate) fn poll_change(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stage> {
        let mut this = self.project();
        loop {
            let stage = this.phase.stage();
            if stage != *this.seen {
                *this.seen = stage;
                // Watch for the stage after this one from now on.
                this.next.set(this.phase.next_after(stage));
                *this.registered = None;
                return Poll::Ready(stage);
            }
            let Some(next) = this.next.as_mut().as_pin_mut() else {
                return Poll::Pending; // the last stage: nothing more will change
            };
            // Registered with this waker already: only the next stage's notification can use
            // the registration up, and that stage is stored before it is notified, so the
            // load above would have seen it.
            if this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            // Register (or update the waker), then look at the stage once more: an advance
            // between the load above and the registration is seen here.
            match next.poll(cx) {
                Poll::Pending => {
                    *this.registered = Some(cx.waker().clone());
                    if this.phase.stage() == *this.seen {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(()) => {
                    // Notified: the stage moved; the load at the top of the loop sees it.
                    *this.registered = None;
                }
            }
        }
    }
}

#[cfg(all(test, portcullis_loom))]
mod loom_phase;

#[cfg(all(test, not(portcullis_loom)))]
mod tests {
    use super::*;

    /// Polls `watch` until it has registered (returned `Pending` once).
    async fn registered(watch: &mut std::pin::Pin<&mut PhaseWatch>) -> Option<Stage> {
        let mut first = true;
        std::future::poll_fn(|cx| match watch.as_mut().poll_change(cx) {
            Poll::Ready(stage) => Poll::Ready(Some(stage)),
            Poll::Pending if first => {
                first = false;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    #[tokio::test]
    async fn a_registered_watcher_is_woken_for_each_stage() {
        let phase = Phase::new();
        let mut watch = std::pin::pin!(PhaseWatch::new(Arc::clone(&phase)));
        assert_eq!(
            registered(&mut watch).await,
            None,
            "registered, nothing changed"
        );
        phase.advance(Stage::Draining);
        let seen = std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)).await;
        assert_eq!(seen, Stage::Draining);
        assert_eq!(registered(&mut watch).await, None);
        // Only forward, and a repeat is no change.
        phase.advance(Stage::Running);
        phase.advance(Stage::Draining);
        assert_eq!(phase.stage(), Stage::Draining);
        assert_eq!(registered(&mut watch).await, None);
        phase.advance(Stage::Forced);
        let seen = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)),
        )
        .await
        .expect("woken for Forced");
        assert_eq!(seen, Stage::Forced);
    }

    // Current-thread, so that `yield_now` lets the watcher handle a (spurious) wake-up before
    // the next advance.
    #[tokio::test]
    async fn a_repeated_advance_does_not_unregister_watchers() {
        let phase = Phase::new();
        phase.advance(Stage::Draining);
        let (registered_tx, registered_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let phase = Arc::clone(&phase);
            tokio::spawn(async move {
                let mut watch = std::pin::pin!(PhaseWatch::new(phase));
                // Consume the Draining change, then register.
                let _ = std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)).await;
                assert_eq!(registered(&mut watch).await, None);
                let _ = registered_tx.send(());
                std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)).await
            })
        };
        registered_rx.await.expect("registered");
        // Every core of a per-core server advances to Draining: the repeats must not wake
        // (and so unregister) anyone.
        phase.advance(Stage::Draining);
        tokio::task::yield_now().await;
        phase.advance(Stage::Forced);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("the watcher saw Forced")
            .expect("task");
        assert_eq!(seen, Stage::Forced);
    }

    #[tokio::test]
    async fn reached_returns_at_once_when_already_there() {
        let phase = Phase::new();
        phase.advance(Stage::Forced);
        phase.reached(Stage::Draining).await;
        phase.reached(Stage::Forced).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_watchers_across_threads_are_all_woken() {
        let phase = Phase::new();
        let watchers: Vec<_> = (0..64)
            .map(|_| {
                let phase = Arc::clone(&phase);
                tokio::spawn(async move { phase.reached(Stage::Draining).await })
            })
            .collect();
        phase.advance(Stage::Draining);
        for watcher in watchers {
            tokio::time::timeout(std::time::Duration::from_secs(10), watcher)
                .await
                .expect("woken")
                .expect("task");
        }
    }
}
