//! What the overload manager tells the server: one word of [`Actions`], read with one atomic
//! load, and a watch that wakes a connection's task when the word changes.
//!
//! Changes are rare (a transition, or a step of a scaled action), so the wake-up side can
//! take a lock; the read side, on every poll of every connection, is one load. Each change
//! replaces the `Notify` that the next change fires, under the same lock as the store: a
//! watcher that subscribed (read the word and took the `Notify` together) is woken by the
//! first change after what it read, and by nothing else, so it may skip re-registering while
//! its waker is unchanged (a notification that already fired cannot use its registration up).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::loom::{AtomicU32, Mutex, Notify, Ordering, OwnedNotified};

/// How many steps a scaled action has: its value is published in sixteenths, so a pressure
/// that drifts wakes the connections at most sixteen times on its way up.
pub const SCALE_STEPS: u32 = 16;

/// The floor of a timeout the overload manager shrinks: a legitimate client on a slow link
/// still needs about a second to send a request head.
pub const MIN_SHRUNK_TIMEOUT: Duration = Duration::from_secs(1);

/// How many rounds the reclaim of idle connections takes: round `k` closes connections idle
/// for longer than the idle timeout / 4^k, the last round every idle one.
pub const RECLAIM_ROUNDS: u32 = 4;

const KEEP_ALIVE_OFF: u32 = 1;
const ROUND_SHIFT: u32 = 1;
const ROUND_MASK: u32 = 0b111 << ROUND_SHIFT;
const SHED: u32 = 1 << 4;
const PAUSE: u32 = 1 << 5;
const SHRINK_SHIFT: u32 = 8;
const SHRINK_MASK: u32 = 0x1f << SHRINK_SHIFT;

/// The actions in force, packed in one word. [`Actions::NONE`] is the normal state.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Actions(u32);

impl Actions {
    /// Nothing in force.
    pub const NONE: Actions = Actions(0);

    /// Whether nothing is in force (the fast path of every check).
    #[must_use]
    #[inline]
    pub fn is_none(self) -> bool {
        self.0 == 0
    }

    /// Whether connections stop being kept alive: HTTP/1 responses carry `Connection: close`,
    /// HTTP/2 connections get GOAWAY after their current streams.
    #[must_use]
    #[inline]
    pub fn keep_alive_off(self) -> bool {
        self.0 & KEEP_ALIVE_OFF != 0
    }

    /// How far the reclaim of idle connections got, 0 (none) to [`RECLAIM_ROUNDS`].
    #[must_use]
    pub fn reclaim_round(self) -> u32 {
        (self.0 & ROUND_MASK) >> ROUND_SHIFT
    }

    /// Whether new requests are answered 503 before any work starts.
    #[must_use]
    #[inline]
    pub fn shedding(self) -> bool {
        self.0 & SHED != 0
    }

    /// Whether the listeners stop accepting.
    #[must_use]
    #[inline]
    pub fn accepting_paused(self) -> bool {
        self.0 & PAUSE != 0
    }

    /// How far the timeouts are shrunk, in [`SCALE_STEPS`]ths (0: not at all).
    #[must_use]
    pub fn shrink_steps(self) -> u32 {
        (self.0 & SHRINK_MASK) >> SHRINK_SHIFT
    }

    /// The header timeout in force instead of `configured`: shrunk in proportion, never
    /// below [`MIN_SHRUNK_TIMEOUT`] (nor above `configured`).
    #[must_use]
    pub fn header_timeout(self, configured: Duration) -> Duration {
        shrink(configured, self.shrink_steps())
    }

    /// The idle timeout in force instead of `configured`: shrunk in proportion (floor
    /// [`MIN_SHRUNK_TIMEOUT`]), and shorter still while idle connections are reclaimed
    /// (`configured` / 4^round, zero in the last round).
    #[must_use]
    pub fn idle_timeout(self, configured: Duration) -> Duration {
        let shrunk = shrink(configured, self.shrink_steps());
        match self.reclaim_round() {
            0 => shrunk,
            round if round >= RECLAIM_ROUNDS => Duration::ZERO,
            round => shrunk.min(configured / 4u32.pow(round)),
        }
    }

    /// Builds the word; `round` is capped at [`RECLAIM_ROUNDS`], `shrink_steps` at
    /// [`SCALE_STEPS`].
    #[must_use]
    pub fn new(
        keep_alive_off: bool,
        round: u32,
        shedding: bool,
        paused: bool,
        shrink_steps: u32,
    ) -> Self {
        let mut word = u32::from(keep_alive_off);
        word |= round.min(RECLAIM_ROUNDS) << ROUND_SHIFT;
        word |= u32::from(shedding) << 4;
        word |= u32::from(paused) << 5;
        word |= shrink_steps.min(SCALE_STEPS) << SHRINK_SHIFT;
        Actions(word)
    }
}

fn shrink(configured: Duration, steps: u32) -> Duration {
    if steps == 0 {
        return configured;
    }
    let kept = SCALE_STEPS.saturating_sub(steps);
    let shrunk = configured / SCALE_STEPS * kept;
    shrunk.max(MIN_SHRUNK_TIMEOUT).min(configured)
}

impl std::fmt::Debug for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Actions")
            .field("keep_alive_off", &self.keep_alive_off())
            .field("reclaim_round", &self.reclaim_round())
            .field("shedding", &self.shedding())
            .field("accepting_paused", &self.accepting_paused())
            .field("shrink_steps", &self.shrink_steps())
            .finish()
    }
}

/// The published [`Actions`], shared by the manager and everything that watches it.
#[derive(Clone, Debug, Default)]
pub struct OverloadSignal {
    cell: Arc<Cell>,
}

#[derive(Debug, Default)]
struct Cell {
    word: AtomicU32,
    /// Fired by the next change; replaced (under this lock) by each change.
    next: Mutex<Arc<Notify>>,
}

impl OverloadSignal {
    /// A signal with nothing in force.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The actions in force now: one atomic load.
    #[must_use]
    #[inline]
    pub fn current(&self) -> Actions {
        Actions(self.cell.word.load(Ordering::Acquire))
    }

    /// Publishes `actions`, waking every watcher if they differ from the current ones.
    pub fn set(&self, actions: Actions) {
        if self.current() == actions {
            return;
        }
        let fired = {
            let mut next = self
                .cell
                .next
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.cell.word.store(actions.0, Ordering::Release);
            std::mem::replace(&mut *next, Arc::new(Notify::new()))
        };
        fired.notify_waiters();
    }

    /// The current word with the `Notify` its next change fires.
    fn subscribe(&self) -> (Actions, OwnedNotified) {
        let next = self
            .cell
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let word = self.current();
        (word, Arc::clone(&next).notified_owned())
    }

    /// A watcher for code that polls by hand (a connection's driver).
    #[must_use]
    pub fn watch(&self) -> OverloadWatch {
        OverloadWatch {
            signal: self.clone(),
            seen: Actions::NONE,
            next: None,
            registered: None,
        }
    }

    /// Completes when the actions in force change from `seen`.
    pub async fn changed(&self, seen: Actions) -> Actions {
        let mut watch = self.watch();
        watch.seen = seen;
        std::future::poll_fn(|cx| watch.poll_change(cx)).await
    }
}

/// One watcher of an [`OverloadSignal`]: [`current`](Self::current) is one atomic load,
/// [`poll_change`](Self::poll_change) registers for the next change.
pub struct OverloadWatch {
    signal: OverloadSignal,
    seen: Actions,
    /// Registration for the first change after `seen`; `None` until subscribed.
    next: Option<Pin<Box<OwnedNotified>>>,
    /// The waker the registration holds, if registered.
    registered: Option<Waker>,
}

impl std::fmt::Debug for OverloadWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverloadWatch")
            .field("seen", &self.seen)
            .finish_non_exhaustive()
    }
}

impl OverloadWatch {
    /// The actions in force now (one atomic load; registers nothing).
    #[must_use]
    #[inline]
    pub fn current(&self) -> Actions {
        self.signal.current()
    }

    /// Ready with the actions in force when they changed since the last call (or differ from
    /// [`Actions::NONE`] on the first); otherwise registers the task for the next change.
    #[inline]
    pub fn poll_change(&mut self, cx: &mut Context<'_>) -> Poll<Actions> {
        // Subscribed, registered with this waker, and nothing changed: every poll of a busy
        // connection's task, so inline and without a call.
        if self.next.is_some()
            && self.current() == self.seen
            && self
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        self.subscribe_or_register(cx)
    }

    #[inline(never)]
    fn subscribe_or_register(&mut self, cx: &mut Context<'_>) -> Poll<Actions> {
        loop {
            if self.next.is_none() || self.current() != self.seen {
                let (word, next) = self.signal.subscribe();
                let changed = word != self.seen;
                self.seen = word;
                self.next = Some(Box::pin(next));
                self.registered = None;
                if changed {
                    return Poll::Ready(word);
                }
            }
            if self
                .registered
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            let Some(next) = self.next.as_mut() else {
                continue;
            };
            match next.as_mut().poll(cx) {
                Poll::Pending => {
                    self.registered = Some(cx.waker().clone());
                    if self.current() == self.seen {
                        return Poll::Pending;
                    }
                }
                // A change happened (perhaps undone since): subscribe afresh.
                Poll::Ready(()) => self.next = None,
            }
        }
    }
}

#[cfg(all(test, portcullis_loom))]
mod tests {
    mod loom_signal;
}

#[cfg(all(test, not(portcullis_loom)))]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip() {
        for keep in [false, true] {
            for round in 0..=RECLAIM_ROUNDS {
                for shed in [false, true] {
                    for pause in [false, true] {
                        for steps in 0..=SCALE_STEPS {
                            let a = Actions::new(keep, round, shed, pause, steps);
                            assert_eq!(a.keep_alive_off(), keep);
                            assert_eq!(a.reclaim_round(), round);
                            assert_eq!(a.shedding(), shed);
                            assert_eq!(a.accepting_paused(), pause);
                            assert_eq!(a.shrink_steps(), steps);
                            assert_eq!(
                                a.is_none(),
                                !keep && round == 0 && !shed && !pause && steps == 0
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn timeouts_shrink_in_proportion_with_a_floor_and_reclaim_in_rounds() {
        let idle = Duration::from_secs(64);
        assert_eq!(Actions::NONE.idle_timeout(idle), idle);
        let half = Actions::new(false, 0, false, false, SCALE_STEPS / 2);
        assert_eq!(half.idle_timeout(idle), Duration::from_secs(32));
        let full = Actions::new(false, 0, false, false, SCALE_STEPS);
        assert_eq!(full.idle_timeout(idle), MIN_SHRUNK_TIMEOUT);
        assert_eq!(
            full.header_timeout(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        let round = |k| Actions::new(true, k, false, false, 0).idle_timeout(idle);
        assert_eq!(round(1), Duration::from_secs(16));
        assert_eq!(round(2), Duration::from_secs(4));
        assert_eq!(round(3), Duration::from_secs(1));
        assert_eq!(round(RECLAIM_ROUNDS), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_registered_watcher_sees_every_change_even_one_undone() {
        let signal = OverloadSignal::new();
        let mut watch = signal.watch();
        let mut first = true;
        // Registers (nothing changed yet).
        std::future::poll_fn(|cx| match watch.poll_change(cx) {
            Poll::Pending if first => {
                first = false;
                Poll::Ready(())
            }
            _ => Poll::Ready(()),
        })
        .await;
        let on = Actions::new(true, 1, false, false, 0);
        signal.set(on);
        signal.set(Actions::NONE);
        signal.set(on);
        let seen = std::future::poll_fn(|cx| watch.poll_change(cx)).await;
        assert_eq!(seen, on);
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.changed(on).await }
        });
        tokio::task::yield_now().await;
        signal.set(Actions::NONE);
        assert_eq!(waiting.await.expect("no panic"), Actions::NONE);
    }
}
