//! Housekeeping of a keyed rate limit: who evicts idle keys, and when.
//!
//! Without eviction a keyed limiter's table fills up to its cap and every new client shares
//! the overflow state; a user who forgets to spawn a task would find that out under load. So
//! the limiter starts its own task.
//!
//! # The choice
//!
//! - **Lazy start (what this module does).** The first check made inside a tokio runtime
//!   spawns the task there ([`tokio::runtime::Handle::try_current`]). The hot path pays one
//!   relaxed load of [`Housekeeping::mode`] (a check outside any runtime also pays a failed
//!   thread-local lookup, until one is made inside a runtime). The task holds a [`Weak`] to
//!   the shared state, never an `Arc`, and a token that [`Housekeeping`]'s `Drop` cancels: it
//!   ends as soon as the last clone of the layer and its services is dropped, and with its
//!   runtime. A guard in the task's future puts the switch back to [`PENDING`] when the
//!   runtime drops the task, so a limiter shared by several runtimes (one per core) moves its
//!   housekeeping to another one when the first shuts down.
//! - **A registry** (one process-wide task sweeping every live limiter) would be process-global
//!   state in a library, need a runtime of its own or a choice of one, and add a lock to
//!   construction; nothing is gained over one cheap task per limiter.
//! - **Amortised eviction** (every Nth check sweeps part of the table) needs no runtime, but
//!   puts an atomic read-modify-write on every check and the sweep's latency (a `DashMap`
//!   `retain`, shard locks included) on the unlucky request, and evicts nothing while no
//!   requests come, which is exactly when the table is full of dead keys.
//!
//! # The switch
//!
//! | [`Housekeeping::mode`] | meaning | next |
//! |---|---|---|
//! | [`PENDING`] | no task yet | a check inside a runtime CASes to [`AUTO`] and spawns |
//! | [`AUTO`] | the automatic task runs | back to [`PENDING`] when its runtime drops it; [`OFF`] on [`managed`] |
//! | [`OFF`] | the application runs [`managed`] itself, the limit is global (no keys), or the runtime has no time driver (logged) | final |

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use governor::clock::Clock;
use tokio_util::sync::CancellationToken;

use crate::layer::DEFAULT_HOUSEKEEPING_INTERVAL;
use crate::state::Shared;

/// No housekeeping task yet.
const PENDING: u8 = 0;
/// The automatic task runs (or has been spawned and not polled yet).
const AUTO: u8 = 1;
/// Never start the automatic task: the application runs housekeeping itself, or there is
/// nothing to evict.
const OFF: u8 = 2;

/// The housekeeping switch of one limiter.
pub(crate) struct Housekeeping {
    mode: AtomicU8,
    /// Cancelled when the shared state is dropped (in `Drop`), so a task waiting for its next
    /// tick ends at once rather than at that tick.
    dropped: CancellationToken,
}

impl Housekeeping {
    pub(crate) fn new(needed: bool) -> Self {
        Self {
            mode: AtomicU8::new(if needed { PENDING } else { OFF }),
            dropped: CancellationToken::new(),
        }
    }
}

impl Drop for Housekeeping {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

impl fmt::Debug for Housekeeping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.mode.load(Ordering::Relaxed) {
            PENDING => "pending",
            AUTO => "automatic",
            _ => "off",
        })
    }
}

/// Starts the automatic task if none runs yet and a runtime is at hand. Called on every check.
#[inline]
pub(crate) fn ensure_started<C>(shared: &Arc<Shared<C>>)
where
    C: Clock + Send + Sync + 'static,
{
    // Relaxed: the flag publishes no data; the compare-exchange in `start` decides who spawns.
    if shared.housekeeping.mode.load(Ordering::Relaxed) == PENDING {
        start(shared);
    }
}

#[cold]
#[inline(never)]
fn start<C>(shared: &Arc<Shared<C>>)
where
    C: Clock + Send + Sync + 'static,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let switch = &shared.housekeeping;
    if switch
        .mode
        .compare_exchange(PENDING, AUTO, Ordering::Relaxed, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    // Made here rather than in the task: a runtime without its time driver panics on it, and
    // a task that panicked would be restarted by the next check, and panic again, forever.
    // Caught once here (the panic hook has printed tokio's message), housekeeping stays off.
    let ticks = std::panic::catch_unwind(|| ticks(DEFAULT_HOUSEKEEPING_INTERVAL));
    let Ok(ticks) = ticks else {
        switch.mode.store(OFF, Ordering::Relaxed);
        tracing::error!(
            limiter = shared.config.name,
            "this tokio runtime has no time driver (enable_time): idle rate-limit keys will \
             not be evicted; spawn RateLimitLayer::housekeeping on a runtime that has one"
        );
        return;
    };
    let weak = Arc::downgrade(shared);
    let reset = BackToPending(weak.clone());
    runtime.spawn(run(weak, ticks, switch.dropped.clone(), None, Some(reset)));
}

fn ticks(every: Duration) -> tokio::time::Interval {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// The future of [`RateLimitLayer::housekeeping`](crate::RateLimitLayer::housekeeping): turns
/// the automatic task off now, then runs passes every `every` until `stop`.
pub(crate) fn managed<C>(
    shared: &Arc<Shared<C>>,
    every: Duration,
    stop: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    C: Clock + Send + Sync + 'static,
{
    // An automatic task already running sees OFF at its next tick and ends.
    shared.housekeeping.mode.store(OFF, Ordering::Relaxed);
    let dropped = shared.housekeeping.dropped.clone();
    let shared = Arc::downgrade(shared);
    // The interval is made at the first poll, on the runtime that polls: the future may be
    // made before any runtime exists.
    async move { run(shared, ticks(every), dropped, Some(stop), None).await }
}

/// Puts the switch back to [`PENDING`] when the automatic task's future is dropped while the
/// limiter lives on (its runtime shut down), so the next check in a runtime starts it again.
/// Passed into the future as an argument, so it is dropped with the future even if the future
/// was never polled (spawned on a runtime already shutting down).
struct BackToPending<C: Clock>(Weak<Shared<C>>);

impl<C: Clock> Drop for BackToPending<C> {
    fn drop(&mut self) {
        if let Some(shared) = self.0.upgrade() {
            // Fails if the application took over (OFF): it stays off.
            let _ = shared.housekeeping.mode.compare_exchange(
                AUTO,
                PENDING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// Runs a pass every `every` until the limiter is dropped (`dropped`), `stop` is cancelled, or,
/// for the automatic task (`reset` is set), the application takes housekeeping over.
async fn run<C>(
    shared: Weak<Shared<C>>,
    mut ticks: tokio::time::Interval,
    dropped: CancellationToken,
    stop: Option<CancellationToken>,
    reset: Option<BackToPending<C>>,
) where
    C: Clock + Send + Sync + 'static,
{
    let _reset = reset;
    let automatic = _reset.is_some();
    let stop = stop.unwrap_or_default();
    ticks.tick().await;
    loop {
        tokio::select! {
            () = dropped.cancelled() => break,
            () = stop.cancelled() => break,
            _ = ticks.tick() => {
                let Some(shared) = shared.upgrade() else { break };
                if automatic && shared.housekeeping.mode.load(Ordering::Relaxed) != AUTO {
                    break;
                }
                shared.housekeeping_pass();
            }
        }
    }
}
