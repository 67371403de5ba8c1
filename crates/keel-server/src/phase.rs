//! The server-wide phase that every connection watches: running, draining, forced.
//!
//! Connections check it on every poll, so checking must be cheap: one atomic load. A
//! `CancellationToken` would take a mutex shared by every connection on each check. Wake-ups
//! go through a `tokio::sync::Notify`, with each watcher registered once (and again only if
//! its task's waker changes), so the lock is taken about twice per connection, not per poll.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

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
    notify: Arc<Notify>,
}

impl Phase {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            stage: AtomicU8::new(Stage::Running as u8),
            notify: Arc::new(Notify::new()),
        })
    }

    pub(crate) fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    /// Moves to `stage` if that is forward, and wakes every watcher.
    pub(crate) fn advance(&self, stage: Stage) {
        // Store before notifying: a watcher that registers after the notification re-reads
        // the stage once registered and sees the store. Notify only when the stage moved:
        // watchers rely on every notification meaning a new stage (they re-register only
        // then), so a spurious one would silently unregister them.
        if self.stage.fetch_max(stage as u8, Ordering::AcqRel) < stage as u8 {
            self.notify.notify_waiters();
        }
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
        #[pin]
        notified: OwnedNotified,
        // The waker the registration in `notified` holds, if registered.
        registered: Option<Waker>,
    }
}

impl PhaseWatch {
    pub(crate) fn new(phase: Arc<Phase>) -> Self {
        let notified = Arc::clone(&phase.notify).notified_owned();
        Self {
            seen: Stage::Running,
            phase,
            notified,
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
                // The notification (if any) was used up: register afresh next time.
                this.notified
                    .set(Arc::clone(&this.phase.notify).notified_owned());
                *this.registered = None;
                return Poll::Ready(stage);
            }
            if this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            // Register (or update the waker), then look at the stage once more: an advance
            // between the load above and the registration is seen here.
            match this.notified.as_mut().poll(cx) {
                Poll::Pending => {
                    *this.registered = Some(cx.waker().clone());
                    if this.phase.stage() == *this.seen {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(()) => {
                    this.notified
                        .set(Arc::clone(&this.phase.notify).notified_owned());
                    *this.registered = None;
                }
            }
        }
    }
}

#[cfg(test)]
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
