//! The overload manager: monitors of the resources a server can run short of, each giving a
//! pressure from 0 to 1, and the actions that pressure triggers (Envoy's model, with the
//! descriptor monitor Envoy lacks).
//!
//! | monitor | pressure | sampled |
//! |---|---|---|
//! | [`Monitor::Descriptors`] | descriptors open / soft `RLIMIT_NOFILE` | every tick near a trigger, every second otherwise (an estimate from the open connections in between), and at once when the accepts use up the headroom ([`OverloadManager::on_accept`]) |
//! | [`Monitor::Memory`] | resident memory / the configured limit, or the cgroup's `memory.max` | every tick |
//! | [`Monitor::EventLoopLag`] | how late the manager's own tick ran / the lag limit | every tick |
//! | [`Monitor::Connections`] | open connections / the connection cap | every tick |
//!
//! | action | what the server does |
//! |---|---|
//! | [`Action::ShrinkTimeouts`] | idle and header timeouts shrink in proportion, never below [`MIN_SHRUNK_TIMEOUT`] |
//! | [`Action::ReclaimIdle`] | no more keep-alive (HTTP/1 `Connection: close`, HTTP/2 GOAWAY after the current streams), and idle connections close longest idle first: each tick the pressure holds, those idle longer than the idle timeout / 4, / 16, / 64, then all |
//! | [`Action::ShedRequests`] | new requests are answered 503 with `Retry-After` before the application sees them |
//! | [`Action::StopAccepting`] | the listeners stop accepting (the kernel's backlog holds new clients) |
//!
//! The admin listener is never touched. The default ([`Overload::default`]) is this ladder:
//!
//! | monitor | shrink timeouts | reclaim idle | shed requests | stop accepting |
//! |---|---|---|---|---|
//! | descriptors (at 0.90) | scaled 0.80 → 0.90 | 0.90 | | 0.95 |
//! | connections (at 0.90) | scaled 0.80 → 0.90 | 0.90 | | |
//! | memory (at 0.90, when a limit is known) | scaled 0.80 → 0.90 | 0.90 | 0.95 | 0.98 |
//! | event-loop lag (limit 1 s) | | | 1.0 | |
//!
//! A threshold trigger fires at its value and releases only [`HYSTERESIS`] below it; an
//! action that fired stays on for at least the hold time ([`DEFAULT_HOLD`]), so a pressure
//! hovering at a threshold does not flap. A scaled trigger grows linearly between its two
//! values. An action takes the largest value of its triggers.
//!
//! Every monitor's pressure and every action's value are gauges, every activation is
//! counted and logged once ([`crate::metrics`]).
//!
//! The manager publishes the actions through an [`OverloadSignal`]: one word that each
//! connection reads with one atomic load per poll, and a watch that wakes it when the word
//! changes. loom models check that a watch never misses a change made on another thread
//! (`RUSTFLAGS="--cfg portcullis_loom" cargo test -p portcullis-health --lib loom`).

mod manager;
mod sample;
mod signal;

use std::time::Duration;

pub use manager::{OverloadManager, OverloadStatus};
pub use signal::{
    Actions, MIN_SHRUNK_TIMEOUT, OverloadSignal, OverloadWatch, RECLAIM_ROUNDS, SCALE_STEPS,
};

/// How often the manager samples by default: every 100 ms.
pub const DEFAULT_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// How long an action that fired stays on at least, by default: a second.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(1);

/// How far below its value a threshold trigger's pressure must fall to release it.
pub const HYSTERESIS: f64 = 0.05;

/// The lag that counts as full pressure by default: a loop that runs timers a second late
/// makes every request on it wait that long.
pub const DEFAULT_LAG_LIMIT: Duration = Duration::from_secs(1);

/// The default level of the descriptor, connection and memory ladders.
pub const DEFAULT_LEVEL: f64 = 0.90;

/// A resource the manager watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Monitor {
    /// Descriptors open over the soft `RLIMIT_NOFILE`.
    Descriptors = 0,
    /// Resident memory over the configured limit or the cgroup's `memory.max`.
    Memory = 1,
    /// Event-loop lag over the lag limit.
    EventLoopLag = 2,
    /// Open connections over the connection cap.
    Connections = 3,
}

impl Monitor {
    /// Every monitor, in label order.
    pub const ALL: [Monitor; 4] = [
        Monitor::Descriptors,
        Monitor::Memory,
        Monitor::EventLoopLag,
        Monitor::Connections,
    ];

    /// The value of the `monitor` label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Monitor::Descriptors => "descriptors",
            Monitor::Memory => "memory",
            Monitor::EventLoopLag => "event_loop_lag",
            Monitor::Connections => "connections",
        }
    }
}

/// What the server does under pressure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Action {
    /// Shrink idle and header timeouts in proportion to the action's value.
    ShrinkTimeouts = 0,
    /// Stop keeping connections alive and close idle ones, longest idle first.
    ReclaimIdle = 1,
    /// Answer new requests 503 before any work starts.
    ShedRequests = 2,
    /// Stop accepting connections.
    StopAccepting = 3,
}

impl Action {
    /// Every action, in label order.
    pub const ALL: [Action; 4] = [
        Action::ShrinkTimeouts,
        Action::ReclaimIdle,
        Action::ShedRequests,
        Action::StopAccepting,
    ];

    /// The value of the `action` label.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Action::ShrinkTimeouts => "shrink_timeouts",
            Action::ReclaimIdle => "reclaim_idle",
            Action::ShedRequests => "shed_requests",
            Action::StopAccepting => "stop_accepting",
        }
    }
}

/// When a monitor's pressure sets off an action.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Trigger {
    /// On (1) from this pressure, off (0) once it is [`HYSTERESIS`] below.
    Threshold(f64),
    /// 0 up to `from`, 1 from `to`, linear between.
    Scaled {
        /// Where the action starts.
        from: f64,
        /// Where it is in full force.
        to: f64,
    },
}

impl Trigger {
    /// The trigger's value at `pressure`, given whether it was on: 0 to 1.
    #[must_use]
    pub fn value(self, pressure: f64, was_on: bool) -> f64 {
        match self {
            Trigger::Threshold(at) => {
                let on = pressure >= at || (was_on && pressure > at - HYSTERESIS);
                if on { 1.0 } else { 0.0 }
            }
            Trigger::Scaled { from, to } => {
                if pressure <= from {
                    0.0
                } else if pressure >= to || to <= from {
                    1.0
                } else {
                    (pressure - from) / (to - from)
                }
            }
        }
    }
}

/// The overload manager's configuration: which monitor's pressure triggers which action.
/// See the [module docs](self) for the default ladder.
#[derive(Clone, Debug)]
pub struct Overload {
    pub(crate) triggers: Vec<(Action, Monitor, Trigger)>,
    pub(crate) interval: Duration,
    pub(crate) hold: Duration,
    pub(crate) memory_limit: Option<u64>,
    pub(crate) lag_limit: Duration,
}

impl Default for Overload {
    /// The ladder of the [module docs](self).
    fn default() -> Self {
        Self::off()
            .descriptors_at(DEFAULT_LEVEL)
            .connections_at(DEFAULT_LEVEL)
            .memory_at(DEFAULT_LEVEL)
            .trigger(
                Action::ShedRequests,
                Monitor::EventLoopLag,
                Trigger::Threshold(1.0),
            )
    }
}

impl Overload {
    /// No triggers: the manager watches nothing and never acts.
    #[must_use]
    pub fn off() -> Self {
        Self {
            triggers: Vec::new(),
            interval: DEFAULT_SAMPLE_INTERVAL,
            hold: DEFAULT_HOLD,
            memory_limit: None,
            lag_limit: DEFAULT_LAG_LIMIT,
        }
    }

    /// Adds a trigger.
    #[must_use]
    pub fn trigger(mut self, action: Action, monitor: Monitor, trigger: Trigger) -> Self {
        self.triggers.push((action, monitor, trigger));
        self
    }

    /// Removes every trigger of `monitor`.
    #[must_use]
    pub fn without(mut self, monitor: Monitor) -> Self {
        self.triggers.retain(|(_, m, _)| *m != monitor);
        self
    }

    /// The descriptor ladder at `level` (0 to 1; clamped): timeouts shrink from 0.1 below
    /// it, idle connections are reclaimed at it, accepting stops halfway from it to 1.
    #[must_use]
    pub fn descriptors_at(self, level: f64) -> Self {
        let level = level.clamp(0.0, 1.0);
        self.without(Monitor::Descriptors)
            .shrink_and_reclaim(Monitor::Descriptors, level)
            .trigger(
                Action::StopAccepting,
                Monitor::Descriptors,
                Trigger::Threshold(level + (1.0 - level) / 2.0),
            )
    }

    /// The connection ladder at `level`: timeouts shrink from 0.1 below it, idle connections
    /// are reclaimed at it (the cap itself refuses the rest).
    #[must_use]
    pub fn connections_at(self, level: f64) -> Self {
        let level = level.clamp(0.0, 1.0);
        self.without(Monitor::Connections)
            .shrink_and_reclaim(Monitor::Connections, level)
    }

    /// The memory ladder at `level`: timeouts shrink from 0.1 below it, idle connections are
    /// reclaimed at it, requests are shed halfway from it to 1, accepting stops at four
    /// fifths of the way.
    #[must_use]
    pub fn memory_at(self, level: f64) -> Self {
        let level = level.clamp(0.0, 1.0);
        let rest = 1.0 - level;
        self.without(Monitor::Memory)
            .shrink_and_reclaim(Monitor::Memory, level)
            .trigger(
                Action::ShedRequests,
                Monitor::Memory,
                Trigger::Threshold(level + rest / 2.0),
            )
            .trigger(
                Action::StopAccepting,
                Monitor::Memory,
                Trigger::Threshold(level + rest * 0.8),
            )
    }

    fn shrink_and_reclaim(self, monitor: Monitor, level: f64) -> Self {
        self.trigger(
            Action::ShrinkTimeouts,
            monitor,
            Trigger::Scaled {
                from: (level - 0.1).max(0.0),
                to: level,
            },
        )
        .trigger(Action::ReclaimIdle, monitor, Trigger::Threshold(level))
    }

    /// The memory the process may use, in bytes: full memory pressure. Default: the
    /// cgroup's `memory.max` when there is one; without either, the memory monitor is off.
    #[must_use]
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = (bytes > 0).then_some(bytes);
        self
    }

    /// The event-loop lag that is full pressure. Default [`DEFAULT_LAG_LIMIT`].
    #[must_use]
    pub fn lag_limit(mut self, limit: Duration) -> Self {
        self.lag_limit = limit.max(Duration::from_millis(1));
        self
    }

    /// How often the monitors are sampled. Default [`DEFAULT_SAMPLE_INTERVAL`].
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long an action stays on at least once it fired. Default [`DEFAULT_HOLD`].
    #[must_use]
    pub fn hold(mut self, hold: Duration) -> Self {
        self.hold = hold;
        self
    }

    /// Whether any trigger is configured.
    #[must_use]
    pub fn is_on(&self) -> bool {
        !self.triggers.is_empty()
    }

    /// Whether `monitor` has a trigger.
    #[must_use]
    pub fn watches(&self, monitor: Monitor) -> bool {
        self.triggers.iter().any(|(_, m, _)| *m == monitor)
    }

    /// Every level of `monitor`'s triggers: thresholds, and the ends of scaled ones.
    pub(crate) fn levels(&self, monitor: Monitor) -> impl Iterator<Item = f64> + '_ {
        self.triggers
            .iter()
            .filter(move |(_, m, _)| *m == monitor)
            .flat_map(|(_, _, t)| match *t {
                Trigger::Threshold(at) => [at, at],
                Trigger::Scaled { from, to } => [from, to],
            })
    }

    /// The lowest threshold of a descriptor trigger (or the start of a scaled one), if any.
    pub(crate) fn lowest(&self, monitor: Monitor) -> Option<f64> {
        self.triggers
            .iter()
            .filter(|(_, m, _)| *m == monitor)
            .map(|(_, _, t)| match *t {
                Trigger::Threshold(at) => at,
                Trigger::Scaled { from, .. } => from,
            })
            .reduce(f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_default_ladder_is_the_documented_one() {
        let o = Overload::default();
        assert!(o.is_on());
        assert_eq!(o.lowest(Monitor::Descriptors), Some(0.8));
        let fds: Vec<_> = o
            .triggers
            .iter()
            .filter(|(_, m, _)| *m == Monitor::Descriptors)
            .map(|(a, _, t)| (*a, *t))
            .collect();
        assert_eq!(fds.len(), 3);
        assert!(fds.contains(&(Action::ReclaimIdle, Trigger::Threshold(0.9))));
        assert!(fds.iter().any(|(a, t)| *a == Action::StopAccepting
            && matches!(t, Trigger::Threshold(v) if (v - 0.95).abs() < 1e-9)));
        assert!(o.watches(Monitor::EventLoopLag));
        assert!(!Overload::off().is_on());
    }

    #[test]
    fn thresholds_release_below_the_hysteresis() {
        let t = Trigger::Threshold(0.9);
        assert_eq!(t.value(0.89, false), 0.0);
        assert_eq!(t.value(0.9, false), 1.0);
        assert_eq!(t.value(0.87, true), 1.0, "held within the band");
        assert_eq!(t.value(0.85, true), 0.0);
    }

    proptest! {
        #[test]
        fn trigger_values_stay_between_0_and_1_and_grow_with_pressure(
            from in 0.0f64..1.0, width in 0.0f64..1.0, p in -1.0f64..2.0, q in -1.0f64..2.0,
            was_on: bool,
        ) {
            let scaled = Trigger::Scaled { from, to: from + width };
            for t in [scaled, Trigger::Threshold(from)] {
                let (lo, hi) = (p.min(q), p.max(q));
                let (a, b) = (t.value(lo, was_on), t.value(hi, was_on));
                prop_assert!((0.0..=1.0).contains(&a) && (0.0..=1.0).contains(&b));
                prop_assert!(a <= b, "{t:?}: {lo} -> {a}, {hi} -> {b}");
            }
        }
    }
}
