//! [`LagProbe`]: how late the event loop runs a timer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::metrics::{EVENT_LOOP_LAG, EVENT_LOOP_LAG_CURRENT};

/// How often the probe measures by default: every 100 ms.
pub const DEFAULT_LAG_INTERVAL: Duration = Duration::from_millis(100);

/// Event-loop lag from timer drift, on stable tokio: a task asks to wake up after an
/// interval and measures how much later it ran. A loop busy with blocking work, or starved
/// of CPU, runs it late; the lateness is what every other task on that loop waits too.
///
/// Each measurement goes to the histogram [`EVENT_LOOP_LAG`] and the gauge
/// [`EVENT_LOOP_LAG_CURRENT`]. [`LagProbe::is_live`] says whether the probe ran recently:
/// what `/livez` reads (a wedged loop runs nothing, the probe included).
#[derive(Clone)]
pub struct LagProbe {
    inner: Arc<Inner>,
}

struct Inner {
    interval: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last measurement (0: none yet).
    last_ms: AtomicU64,
    /// The last lag, in nanoseconds.
    last_lag_nanos: AtomicU64,
}

impl LagProbe {
    /// A probe measuring every `interval` (at least 1 ms).
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                interval: interval.max(Duration::from_millis(1)),
                epoch: Instant::now(),
                last_ms: AtomicU64::new(0),
                last_lag_nanos: AtomicU64::new(0),
            }),
        }
    }

    /// Measures until `stop` is cancelled.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops the probe.
    pub fn run(
        &self,
        stop: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let histogram = metrics::histogram!(EVENT_LOOP_LAG);
            let gauge = metrics::gauge!(EVENT_LOOP_LAG_CURRENT);
            loop {
                let asked = Instant::now();
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(inner.interval) => {}
                }
                let lag = asked.elapsed().saturating_sub(inner.interval);
                histogram.record(lag.as_secs_f64());
                gauge.set(lag.as_secs_f64());
                let nanos = u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX);
                inner.last_lag_nanos.store(nanos, Ordering::Release);
                let now = u64::try_from(inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                inner.last_ms.store(now.max(1), Ordering::Release);
            }
        }
    }

    /// The last measured lag (zero before the first measurement).
    #[must_use]
    pub fn last_lag(&self) -> Duration {
        Duration::from_nanos(self.inner.last_lag_nanos.load(Ordering::Acquire))
    }

    /// Whether the probe measured within the last `within`: `false` before its first
    /// measurement and when the loop has stopped running it.
    #[must_use]
    pub fn is_live(&self, within: Duration) -> bool {
        let last = self.inner.last_ms.load(Ordering::Acquire);
        if last == 0 {
            // Not measured yet: live until one interval past the allowance since creation.
            return self.inner.epoch.elapsed() < within + self.inner.interval;
        }
        let now = self.inner.epoch.elapsed().as_millis();
        now.saturating_sub(u128::from(last)) <= within.as_millis()
    }
}

impl Default for LagProbe {
    fn default() -> Self {
        Self::new(DEFAULT_LAG_INTERVAL)
    }
}

impl fmt::Debug for LagProbe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LagProbe")
            .field("interval", &self.inner.interval)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that blocks the loop's only thread for 200 ms shows up as about that much lag,
    /// and a stopped probe stops being live.
    #[tokio::test(flavor = "current_thread")]
    async fn blocking_the_loop_is_measured_as_lag() {
        let probe = LagProbe::new(Duration::from_millis(10));
        let stop = CancellationToken::new();
        let running = tokio::spawn(probe.run(stop.clone()));
        // Let it measure once on an idle loop.
        while probe.inner.last_ms.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(probe.is_live(Duration::from_secs(1)));
        let measured = probe.inner.last_ms.load(Ordering::Acquire);
        // Block the thread: the probe's timer fires late.
        std::thread::sleep(Duration::from_millis(200));
        while probe.inner.last_ms.load(Ordering::Acquire) == measured {
            tokio::task::yield_now().await;
        }
        assert!(
            probe.last_lag() >= Duration::from_millis(150),
            "{:?}",
            probe.last_lag()
        );
        stop.cancel();
        running.await.expect("no panic");
        std::thread::sleep(Duration::from_millis(60));
        assert!(!probe.is_live(Duration::from_millis(50)));
    }
}
