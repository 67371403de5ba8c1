//! tokio runtime metrics, read from [`tokio::runtime::RuntimeMetrics`] when `/metrics` is
//! scraped. Each is one of tokio-metrics' `RuntimeMetrics` fields, named after it under
//! Prometheus' conventions so that `promtool check metrics` accepts them: a `tokio_` prefix,
//! counters ending in `_total` (where tokio-metrics says `total_…_count`), no `_count` on
//! gauges, durations in `_seconds`:
//!
//! | name | tokio-metrics field | kind |
//! |---|---|---|
//! | [`TOKIO_WORKERS`] | `workers_count` | gauge |
//! | [`TOKIO_LIVE_TASKS`] | `live_tasks_count` | gauge |
//! | [`TOKIO_GLOBAL_QUEUE_DEPTH`] | `global_queue_depth` | gauge |
//! | [`TOKIO_PARK_COUNT`] | `total_park_count` | counter |
//! | [`TOKIO_BUSY_DURATION`] | `total_busy_duration` | counter, seconds |
//! | [`TOKIO_BUSY_RATIO`] | `busy_ratio()` (since the previous scrape) | gauge |
//!
//! The stable metrics are always there. tokio's unstable ones (steals, polls, schedules,
//! blocking threads) need the crate feature `tokio-unstable` *and* building with
//! `RUSTFLAGS="--cfg tokio_unstable"`, as tokio itself requires; with the feature alone they
//! are left out.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;

use crate::process::{gauge, sample};

/// Worker threads of the runtime (gauge).
pub const TOKIO_WORKERS: &str = "tokio_workers";
/// Tasks alive on the runtime (gauge).
pub const TOKIO_LIVE_TASKS: &str = "tokio_live_tasks";
/// Tasks waiting in the runtime's global (injection) queue (gauge): work that arrived from
/// outside the workers and that no worker has picked up yet.
pub const TOKIO_GLOBAL_QUEUE_DEPTH: &str = "tokio_global_queue_depth";
/// Times the workers parked, summed over the workers (counter).
pub const TOKIO_PARK_COUNT: &str = "tokio_park_total";
/// Time the workers spent busy, summed over the workers, seconds (counter).
pub const TOKIO_BUSY_DURATION: &str = "tokio_busy_duration_seconds_total";
/// The share of the workers' time spent busy since the previous scrape, 0 to 1 (gauge): near
/// 1, the runtime has no slack and every task waits.
pub const TOKIO_BUSY_RATIO: &str = "tokio_busy_ratio";

/// Scrape-time reader of one runtime's metrics; remembers the previous scrape for the busy
/// ratio.
#[derive(Debug)]
pub(crate) struct RuntimeStats {
    handle: Handle,
    /// When the previous scrape read the busy total, and the total it read.
    last: Mutex<(Instant, Duration)>,
}

impl RuntimeStats {
    pub(crate) fn new(handle: Handle) -> Self {
        let busy = total_busy(&handle);
        Self {
            handle,
            last: Mutex::new((Instant::now(), busy)),
        }
    }

    /// Appends the exposition of the runtime's metrics to `out`.
    pub(crate) fn render(&self, out: &mut String) {
        let metrics = self.handle.metrics();
        let workers = metrics.num_workers();
        gauge(
            out,
            TOKIO_WORKERS,
            "Worker threads of the tokio runtime.",
            workers as f64,
        );
        gauge(
            out,
            TOKIO_LIVE_TASKS,
            "Tasks alive on the tokio runtime.",
            metrics.num_alive_tasks() as f64,
        );
        gauge(
            out,
            TOKIO_GLOBAL_QUEUE_DEPTH,
            "Tasks waiting in the tokio runtime's global queue.",
            metrics.global_queue_depth() as f64,
        );
        let parks: u64 = (0..workers).map(|w| metrics.worker_park_count(w)).sum();
        sample(
            out,
            TOKIO_PARK_COUNT,
            "counter",
            "Times the tokio workers parked, summed over the workers.",
            parks as f64,
        );
        let busy = total_busy(&self.handle);
        sample(
            out,
            TOKIO_BUSY_DURATION,
            "counter",
            "Time the tokio workers spent busy, summed over the workers, in seconds.",
            busy.as_secs_f64(),
        );
        let now = Instant::now();
        let ratio = {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            let ratio = busy_ratio(busy - last.1.min(busy), now - last.0, workers);
            *last = (now, busy);
            ratio
        };
        gauge(
            out,
            TOKIO_BUSY_RATIO,
            "Share of the tokio workers' time spent busy since the previous scrape, 0 to 1.",
            ratio,
        );
        #[cfg(all(feature = "tokio-unstable", tokio_unstable))]
        unstable(&metrics, workers, out);
    }
}

fn total_busy(handle: &Handle) -> Duration {
    let metrics = handle.metrics();
    (0..metrics.num_workers())
        .map(|w| metrics.worker_total_busy_duration(w))
        .sum()
}

/// Busy time over the wall time of `workers` workers, clamped to 0..=1 (the counters and
/// the clock are read at slightly different moments); 0 over an empty interval.
pub(crate) fn busy_ratio(busy: Duration, elapsed: Duration, workers: usize) -> f64 {
    let available = elapsed.as_secs_f64() * workers as f64;
    if available <= 0.0 {
        return 0.0;
    }
    (busy.as_secs_f64() / available).clamp(0.0, 1.0)
}

/// tokio's unstable metrics, under tokio-metrics' names.
#[cfg(all(feature = "tokio-unstable", tokio_unstable))]
fn unstable(metrics: &tokio::runtime::RuntimeMetrics, workers: usize, out: &mut String) {
    let sum = |per_worker: &dyn Fn(usize) -> u64| (0..workers).map(per_worker).sum::<u64>() as f64;
    let counters: [(&str, &str, f64); 7] = [
        (
            "tokio_steal_total",
            "Tasks stolen between workers.",
            sum(&|w| metrics.worker_steal_count(w)),
        ),
        (
            "tokio_polls_total",
            "Task polls by the workers.",
            sum(&|w| metrics.worker_poll_count(w)),
        ),
        (
            "tokio_local_schedule_total",
            "Tasks scheduled onto a worker's local queue.",
            sum(&|w| metrics.worker_local_schedule_count(w)),
        ),
        (
            "tokio_overflow_total",
            "Times a worker's local queue overflowed into the global one.",
            sum(&|w| metrics.worker_overflow_count(w)),
        ),
        (
            "tokio_noop_total",
            "Times a worker unparked with nothing to do.",
            sum(&|w| metrics.worker_noop_count(w)),
        ),
        (
            "tokio_remote_schedules_total",
            "Tasks scheduled from outside the runtime.",
            metrics.remote_schedule_count() as f64,
        ),
        (
            "tokio_budget_forced_yield_total",
            "Times a task was made to yield by the cooperative budget.",
            metrics.budget_forced_yield_count() as f64,
        ),
    ];
    for (name, help, value) in counters {
        sample(out, name, "counter", help, value);
    }
    gauge(
        out,
        "tokio_blocking_threads",
        "Threads of the blocking pool.",
        metrics.num_blocking_threads() as f64,
    );
    gauge(
        out,
        "tokio_idle_blocking_threads",
        "Idle threads of the blocking pool.",
        metrics.num_idle_blocking_threads() as f64,
    );
    gauge(
        out,
        "tokio_blocking_queue_depth",
        "Tasks waiting for a blocking-pool thread.",
        metrics.blocking_queue_depth() as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::busy_ratio;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn busy_ratio_is_busy_time_over_the_workers_wall_time() {
        let second = Duration::from_secs(1);
        assert_eq!(busy_ratio(second, 2 * second, 1), 0.5);
        assert_eq!(busy_ratio(second, second, 4), 0.25);
        assert_eq!(busy_ratio(second, Duration::ZERO, 4), 0.0);
        assert_eq!(busy_ratio(second, second, 0), 0.0);
    }

    /// Built with `RUSTFLAGS="--cfg tokio_unstable"` and the `tokio-unstable` feature (a CI
    /// step), the unstable series are in the scrape too.
    #[cfg(all(feature = "tokio-unstable", tokio_unstable))]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_unstable_metrics_are_rendered_when_built_for_them() {
        let mut out = String::new();
        super::RuntimeStats::new(tokio::runtime::Handle::current()).render(&mut out);
        for name in [
            "tokio_steal_total",
            "tokio_polls_total",
            "tokio_local_schedule_total",
            "tokio_overflow_total",
            "tokio_noop_total",
            "tokio_remote_schedules_total",
            "tokio_budget_forced_yield_total",
            "tokio_blocking_threads",
            "tokio_idle_blocking_threads",
            "tokio_blocking_queue_depth",
        ] {
            assert!(out.contains(&format!("\n{name} ")), "{name} in\n{out}");
        }
    }

    proptest! {
        #[test]
        fn busy_ratio_stays_within_zero_and_one(busy in any::<u64>(), elapsed in any::<u64>(), workers in 0usize..1024) {
            let ratio = busy_ratio(Duration::from_nanos(busy), Duration::from_nanos(elapsed), workers);
            prop_assert!((0.0..=1.0).contains(&ratio));
        }
    }
}
