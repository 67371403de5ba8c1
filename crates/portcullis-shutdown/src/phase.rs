//! The one state machine of a server's life, and what watches it.
//!
//! ```text
//!             trigger             drain delay over          last connection gone
//!  Running ───────────▶ Delay ─────────────────▶ Drain ───────────────────────▶ Done
//!     │                   │                        │                              ▲
//!     └───── force ───────┴──────── force ─────────┴────▶ Forced ─────────────────┘
//!                                  (or the drain deadline)        everything closed
//! ```
//!
//! - `Running`: serving; readiness on once every listener accepts.
//! - `Delay`: the shutdown began. Readiness is off and the shutdown token cancelled, but the
//!   listeners still accept for the drain delay (load balancers are still sending).
//! - `Drain`: the listeners are closed; in-flight requests finish, idle connections close,
//!   HTTP/1 answers carry `Connection: close`, HTTP/2 connections get GOAWAY.
//! - `Forced`: the deadline passed or a second signal came: every connection closes now.
//! - `Done`: the drain has ended (cleanly or forced).
//!
//! The phase only moves forward; a move to an earlier phase, or a repeat, does nothing.
//!
//! # Cost
//!
//! Connections check the phase on every poll, so checking is one atomic load. A
//! `CancellationToken` would take a mutex shared by every connection on each check. Wake-ups
//! go through one `tokio::sync::Notify` per phase, with each watcher registered once for the
//! next phase (and again only if its task's waker changes), so the lock is taken about twice
//! per connection, not per poll.
//!
//! One `Notify` per phase, not one for all: a watcher skips re-registering while its waker is
//! unchanged, which is only sound if every notification it can receive means a phase it has
//! not seen yet. With a single `Notify`, the notification for a phase the watcher had already
//! read (the phase is stored before it is notified) would use up its registration, and the
//! next phase would wake nobody (the loom model `loom_concurrent_advances_only_move_forward`
//! finds that schedule).
//!
//! A per-core server gives each core a *follower*
//! ([`Lifecycle::follower`](crate::Lifecycle::follower)): its own atomic and its own
//! `Notify`s, advanced synchronously by the leader's move
//! ([`Lifecycle::advance`](crate::Lifecycle::advance)),
//! so that no connection registers with a `Notify` another core's connections share. A
//! follower is the same state machine, not another one: only the leader is ever advanced.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;

use crate::loom::{AtomicU8, Notify, Ordering, OwnedNotified};

/// Where a server is in its life; see the [module docs](self) for the diagram. Also the
/// closed set of values of the `phase` label of
/// [`SHUTDOWN_PHASE`](crate::metrics::SHUTDOWN_PHASE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ShutdownPhase {
    /// Serving normally.
    Running = 0,
    /// Shutdown began: readiness off, still accepting and serving for the drain delay.
    Delay = 1,
    /// Listeners closed; connections and tracked tasks finishing.
    Drain = 2,
    /// The drain was cut short: every connection is being closed.
    Forced = 3,
    /// Everything finished or was forced.
    Done = 4,
}

impl ShutdownPhase {
    /// Every phase, in order.
    pub const ALL: [ShutdownPhase; 5] = [
        ShutdownPhase::Running,
        ShutdownPhase::Delay,
        ShutdownPhase::Drain,
        ShutdownPhase::Forced,
        ShutdownPhase::Done,
    ];

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownPhase::Running => "running",
            ShutdownPhase::Delay => "delay",
            ShutdownPhase::Drain => "drain",
            ShutdownPhase::Forced => "forced",
            ShutdownPhase::Done => "done",
        }
    }

    /// Whether connections must close now: [`Forced`](Self::Forced) or
    /// [`Done`](Self::Done).
    #[must_use]
    pub fn is_forced(self) -> bool {
        self >= ShutdownPhase::Forced
    }

    /// Whether connections drain: [`Drain`](Self::Drain) or later.
    #[must_use]
    pub fn is_draining(self) -> bool {
        self >= ShutdownPhase::Drain
    }

    fn from_u8(value: u8) -> Self {
        match value {
            0 => ShutdownPhase::Running,
            1 => ShutdownPhase::Delay,
            2 => ShutdownPhase::Drain,
            3 => ShutdownPhase::Forced,
            _ => ShutdownPhase::Done,
        }
    }
}

const PHASES: usize = ShutdownPhase::ALL.len();

/// The phase atomic with its wake-ups; shared (`Arc`) by every watcher.
#[derive(Debug)]
pub(crate) struct PhaseCell {
    phase: AtomicU8,
    /// `entered[i]` is notified once, when the phase first reaches `i + 1`.
    entered: [Arc<Notify>; PHASES - 1],
    /// Per-core mirrors, advanced with this one.
    followers: Mutex<Vec<Arc<PhaseCell>>>,
}

impl PhaseCell {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            phase: AtomicU8::new(ShutdownPhase::Running as u8),
            entered: std::array::from_fn(|_| Arc::new(Notify::new())),
            followers: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn get(&self) -> ShutdownPhase {
        ShutdownPhase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase` if that is forward, wakes every watcher of each phase entered, and
    /// moves every follower the same way. Returns the phase it was in before.
    pub(crate) fn advance(&self, phase: ShutdownPhase) -> ShutdownPhase {
        // Store before notifying: a watcher that registers after the notification re-reads
        // the phase once registered and sees the store. A repeat (or a step back) notifies
        // nobody, and each phase's `Notify` fires once: a watcher's registration is only used
        // up by a phase it has not seen.
        let previous = self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        for entered in previous + 1..=phase as u8 {
            self.entered[usize::from(entered - 1)].notify_waiters();
        }
        let followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for follower in followers.iter() {
            follower.advance(phase);
        }
        ShutdownPhase::from_u8(previous)
    }

    /// A new cell that this one advances along with itself, starting where this one is.
    pub(crate) fn follower(&self) -> Arc<PhaseCell> {
        let follower = PhaseCell::new();
        let mut followers = self
            .followers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Under the lock, so an advance cannot slip between the copy and the registration.
        follower.advance(self.get());
        followers.push(Arc::clone(&follower));
        follower
    }

    /// A registration for the first phase after `seen` (none after the last).
    fn next_after(&self, seen: ShutdownPhase) -> Option<OwnedNotified> {
        self.entered
            .get(seen as usize)
            .map(|notify| Arc::clone(notify).notified_owned())
    }

    /// Completes once the phase reaches `phase`.
    pub(crate) async fn reached(self: &Arc<Self>, phase: ShutdownPhase) {
        let mut watch = std::pin::pin!(PhaseWatch::new(Arc::clone(self)));
        std::future::poll_fn(|cx| watch.as_mut().poll_reached(phase, cx)).await;
    }
}

pin_project! {
    /// One watcher of a [`Lifecycle`](crate::Lifecycle)'s phase, for code that polls by hand
    /// (a connection driver): [`current`](Self::current) is one atomic load,
    /// [`poll_change`](Self::poll_change) registers for the next phase.
    pub struct PhaseWatch {
        cell: Arc<PhaseCell>,
        seen: ShutdownPhase,
        // Registration for the phase after `seen`; `None` once `seen` is the last phase.
        #[pin]
        next: Option<OwnedNotified>,
        // The waker the registration in `next` holds, if registered.
        registered: Option<Waker>,
    }
}

impl std::fmt::Debug for PhaseWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhaseWatch")
            .field("seen", &self.seen)
            .field("current", &self.current())
            .finish_non_exhaustive()
    }
}

impl PhaseWatch {
    pub(crate) fn new(cell: Arc<PhaseCell>) -> Self {
        let next = cell.next_after(ShutdownPhase::Running);
        Self {
            seen: ShutdownPhase::Running,
            cell,
            next,
            registered: None,
        }
    }

    /// The phase now (one atomic load; registers nothing).
    #[must_use]
    pub fn current(&self) -> ShutdownPhase {
        self.cell.get()
    }

    /// The phase last returned by [`poll_change`](Self::poll_change) (or `Running`).
    #[must_use]
    pub fn seen(&self) -> ShutdownPhase {
        self.seen
    }

    /// Ready once the phase is `phase` or later (at once if it already is); otherwise
    /// registers the task to be woken when it moves. For a loop that polls the same wait
    /// before every step (an accept loop): once registered, a poll is one atomic load.
    #[inline]
    pub fn poll_reached(
        mut self: Pin<&mut Self>,
        phase: ShutdownPhase,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        if self.seen >= phase {
            return Poll::Ready(());
        }
        while let Poll::Ready(seen) = self.as_mut().poll_change(cx) {
            if seen >= phase {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Ready with the new phase when it moved since the last call; otherwise registers the
    /// task to be woken when it moves.
    pub fn poll_change(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<ShutdownPhase> {
        let mut this = self.project();
        loop {
            let phase = this.cell.get();
            if phase != *this.seen {
                *this.seen = phase;
                // Watch for the phase after this one from now on.
                this.next.set(this.cell.next_after(phase));
                *this.registered = None;
                return Poll::Ready(phase);
            }
            let Some(next) = this.next.as_mut().as_pin_mut() else {
                return Poll::Pending; // the last phase: nothing more will change
            };
            // Registered with this waker already: only the next phase's notification can use
            // the registration up, and that phase is stored before it is notified, so the
            // load above would have seen it.
            if this
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            // Register (or update the waker), then look at the phase once more: an advance
            // between the load above and the registration is seen here.
            match next.poll(cx) {
                Poll::Pending => {
                    *this.registered = Some(cx.waker().clone());
                    if this.cell.get() == *this.seen {
                        return Poll::Pending;
                    }
                }
                Poll::Ready(()) => {
                    // Notified: the phase moved; the load at the top of the loop sees it.
                    *this.registered = None;
                }
            }
        }
    }
}

#[cfg(all(test, portcullis_loom))]
mod tests {
    mod loom_phase;
}

#[cfg(all(test, not(portcullis_loom)))]
mod tests {
    use std::time::Duration;

    use super::*;

    const BOUND: Duration = Duration::from_secs(5);

    /// Polls `watch` until it has registered (returned `Pending` once).
    async fn registered(watch: &mut Pin<&mut PhaseWatch>) -> Option<ShutdownPhase> {
        let mut first = true;
        std::future::poll_fn(|cx| match watch.as_mut().poll_change(cx) {
            Poll::Ready(phase) => Poll::Ready(Some(phase)),
            Poll::Pending if first => {
                first = false;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        })
        .await
    }

    #[test]
    fn discriminants_are_positions_in_all() {
        for (i, phase) in ShutdownPhase::ALL.iter().enumerate() {
            assert_eq!(*phase as usize, i, "{phase:?}");
        }
    }

    #[tokio::test]
    async fn a_registered_watcher_is_woken_for_each_phase() {
        let cell = PhaseCell::new();
        let mut watch = std::pin::pin!(PhaseWatch::new(Arc::clone(&cell)));
        assert_eq!(
            registered(&mut watch).await,
            None,
            "registered, nothing changed"
        );
        cell.advance(ShutdownPhase::Drain);
        let seen = std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)).await;
        assert_eq!(
            seen,
            ShutdownPhase::Drain,
            "Delay skipped: both seen as one"
        );
        assert_eq!(registered(&mut watch).await, None);
        // Only forward, and a repeat is no change.
        cell.advance(ShutdownPhase::Running);
        cell.advance(ShutdownPhase::Drain);
        assert_eq!(cell.get(), ShutdownPhase::Drain);
        assert_eq!(registered(&mut watch).await, None);
        cell.advance(ShutdownPhase::Forced);
        let seen = tokio::time::timeout(
            BOUND,
            std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)),
        )
        .await
        .expect("woken for Forced");
        assert_eq!(seen, ShutdownPhase::Forced);
    }

    // Current-thread, so that `yield_now` lets the watcher handle a (spurious) wake-up before
    // the next advance.
    #[tokio::test]
    async fn a_repeated_advance_does_not_unregister_watchers() {
        let cell = PhaseCell::new();
        cell.advance(ShutdownPhase::Drain);
        let (registered_tx, registered_rx) = tokio::sync::oneshot::channel();
        let waiter = {
            let cell = Arc::clone(&cell);
            tokio::spawn(async move {
                let mut watch = std::pin::pin!(PhaseWatch::new(cell));
                // Consume the Drain change, then register.
                let _ = std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)).await;
                assert_eq!(registered(&mut watch).await, None);
                let _ = registered_tx.send(());
                std::future::poll_fn(|cx| watch.as_mut().poll_change(cx)).await
            })
        };
        registered_rx.await.expect("registered");
        cell.advance(ShutdownPhase::Drain);
        tokio::task::yield_now().await;
        cell.advance(ShutdownPhase::Forced);
        let seen = tokio::time::timeout(BOUND, waiter)
            .await
            .expect("the watcher saw Forced")
            .expect("task");
        assert_eq!(seen, ShutdownPhase::Forced);
    }

    #[tokio::test]
    async fn reached_returns_at_once_when_already_there() {
        let cell = PhaseCell::new();
        cell.advance(ShutdownPhase::Forced);
        // Bounded: a watcher that waited for a notification already sent would hang here.
        tokio::time::timeout(BOUND, async {
            cell.reached(ShutdownPhase::Drain).await;
            cell.reached(ShutdownPhase::Forced).await;
        })
        .await
        .expect("reached returns at once for a phase already entered");
    }

    #[tokio::test]
    async fn followers_move_with_their_leader() {
        let leader = PhaseCell::new();
        leader.advance(ShutdownPhase::Delay);
        let follower = leader.follower();
        assert_eq!(
            follower.get(),
            ShutdownPhase::Delay,
            "starts where the leader is"
        );
        let waiter = {
            let follower = Arc::clone(&follower);
            tokio::spawn(async move { follower.reached(ShutdownPhase::Forced).await })
        };
        leader.advance(ShutdownPhase::Forced);
        tokio::time::timeout(BOUND, waiter)
            .await
            .expect("the follower's watcher was woken")
            .expect("task");
        assert_eq!(follower.get(), ShutdownPhase::Forced);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_watchers_across_threads_are_all_woken() {
        let cell = PhaseCell::new();
        let watchers: Vec<_> = (0..64)
            .map(|_| {
                let cell = Arc::clone(&cell);
                tokio::spawn(async move { cell.reached(ShutdownPhase::Drain).await })
            })
            .collect();
        cell.advance(ShutdownPhase::Drain);
        for watcher in watchers {
            tokio::time::timeout(Duration::from_secs(10), watcher)
                .await
                .expect("woken")
                .expect("task");
        }
    }

    #[test]
    fn reached_is_ready_at_once_when_the_phase_has_passed() {
        let cell = PhaseCell::new();
        cell.advance(ShutdownPhase::Forced);
        let mut watch = std::pin::pin!(PhaseWatch::new(Arc::clone(&cell)));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            watch.as_mut().poll_reached(ShutdownPhase::Drain, &mut cx),
            Poll::Ready(())
        );
    }

    #[test]
    fn reached_waits_through_the_phases_before() {
        let cell = PhaseCell::new();
        let mut watch = std::pin::pin!(PhaseWatch::new(Arc::clone(&cell)));
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            watch.as_mut().poll_reached(ShutdownPhase::Drain, &mut cx),
            Poll::Pending
        );
        cell.advance(ShutdownPhase::Delay);
        assert_eq!(
            watch.as_mut().poll_reached(ShutdownPhase::Drain, &mut cx),
            Poll::Pending
        );
        cell.advance(ShutdownPhase::Drain);
        assert_eq!(
            watch.as_mut().poll_reached(ShutdownPhase::Drain, &mut cx),
            Poll::Ready(())
        );
    }

    #[tokio::test]
    async fn a_task_waiting_for_a_phase_is_woken_when_it_comes() {
        let cell = PhaseCell::new();
        let watch = PhaseWatch::new(Arc::clone(&cell));
        let waiting = tokio::spawn(async move {
            let mut watch = std::pin::pin!(watch);
            std::future::poll_fn(|cx| watch.as_mut().poll_reached(ShutdownPhase::Drain, cx)).await;
        });
        // Until the drain, the task stays registered and asleep.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        cell.advance(ShutdownPhase::Drain);
        tokio::time::timeout(BOUND, waiting)
            .await
            .expect("woken by the drain")
            .expect("the task did not panic");
    }
}
