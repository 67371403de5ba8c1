//! [`OverloadManager`]: samples the monitors on its own tick and publishes the actions.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sample;
use super::signal::{Actions, OverloadSignal, SCALE_STEPS};
use super::{Action, Monitor, Overload, Trigger};
use crate::metrics::{
    LABEL_ACTION, LABEL_MONITOR, OVERLOAD_ACTION, OVERLOAD_ACTIVATIONS_TOTAL, OVERLOAD_PRESSURE,
};

/// How long after an immediate sample (asked for by the accepts) the next one may come.
const MIN_KICK_GAP: Duration = Duration::from_millis(10);

/// How long an estimated descriptor count may stand before it is counted again.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// Runs the monitors and publishes the actions (see the [module docs](super)). Cheap to
/// clone; the server runs [`run`](Self::run) for as long as it serves.
#[derive(Clone)]
pub struct OverloadManager {
    inner: Arc<Inner>,
}

type OpenCount = Arc<dyn Fn() -> u64 + Send + Sync>;

struct Inner {
    config: Overload,
    signal: OverloadSignal,
    /// Asks for a sample now (the accepts used up the descriptor headroom).
    kick: Notify,
    /// Descriptors that may still open before the lowest descriptor trigger.
    fd_budget: AtomicI64,
    connections: OnceLock<(OpenCount, u64)>,
    status: Mutex<OverloadStatus>,
}

/// The last sample: every monitor's pressure and the actions in force.
#[derive(Clone, Debug, Default)]
pub struct OverloadStatus {
    pressures: [Option<f64>; Monitor::ALL.len()],
    values: [f64; Action::ALL.len()],
    actions: Actions,
}

impl OverloadStatus {
    /// A monitor's last pressure, 0 to 1; `None` while it is off or could not be read.
    #[must_use]
    pub fn pressure(&self, monitor: Monitor) -> Option<f64> {
        self.pressures[monitor as usize]
    }

    /// An action's last value, 0 to 1.
    #[must_use]
    pub fn value(&self, action: Action) -> f64 {
        self.values[action as usize]
    }

    /// The actions in force.
    #[must_use]
    pub fn actions(&self) -> Actions {
        self.actions
    }

    /// Whether the server turns work away (sheds requests or stopped accepting): what
    /// readiness reports.
    #[must_use]
    pub fn is_refusing(&self) -> bool {
        self.actions.shedding() || self.actions.accepting_paused()
    }

    /// One line per monitor and per action in force, for `/readyz?verbose`.
    #[must_use]
    pub fn verbose(&self) -> String {
        let mut out = String::new();
        for monitor in Monitor::ALL {
            if let Some(p) = self.pressure(monitor) {
                let _ = writeln!(out, "overload {}: {:.2}", monitor.as_str(), p);
            }
        }
        for action in Action::ALL {
            let value = self.value(action);
            if value > 0.0 {
                let _ = writeln!(out, "overload action {}: {:.2}", action.as_str(), value);
            }
        }
        out
    }
}

impl std::fmt::Debug for OverloadManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverloadManager")
            .field("config", &self.inner.config)
            .field("actions", &self.inner.signal.current())
            .finish_non_exhaustive()
    }
}

impl OverloadManager {
    /// A manager for `config`; nothing is sampled until [`run`](Self::run).
    #[must_use]
    pub fn new(config: Overload) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                signal: OverloadSignal::new(),
                kick: Notify::new(),
                fd_budget: AtomicI64::new(i64::MAX),
                connections: OnceLock::new(),
                status: Mutex::new(OverloadStatus::default()),
            }),
        }
    }

    /// The connection monitor's input: `open` counts the connections open now, `cap` is the
    /// most that may be. The first call wins; without one the connection monitor is off.
    pub fn count_connections(&self, open: impl Fn() -> u64 + Send + Sync + 'static, cap: u64) {
        if cap > 0 && cap < u64::MAX {
            let _ = self.inner.connections.set((Arc::new(open), cap));
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Overload {
        &self.inner.config
    }

    /// What the server's connections, requests and accept loops watch.
    #[must_use]
    pub fn signal(&self) -> &OverloadSignal {
        &self.inner.signal
    }

    /// The last sample.
    #[must_use]
    pub fn status(&self) -> OverloadStatus {
        self.inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A connection was accepted: when the accepts since the last count used up the
    /// descriptors left before the lowest descriptor trigger, the manager samples at once.
    /// One atomic operation.
    #[inline]
    pub fn on_accept(&self) {
        if self.inner.fd_budget.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.inner.kick.notify_one();
        }
    }

    /// Samples every interval (and when the accepts ask) until `stop` is cancelled. The
    /// actions in force are withdrawn when it stops.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops the sampling; the actions last published stay.
    pub fn run(&self, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            if !inner.config.is_on() {
                return;
            }
            let mut run = Run::new(&inner);
            let interval = inner.config.interval;
            loop {
                let asked = Instant::now();
                let kicked = tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(interval) => false,
                    () = inner.kick.notified() => true,
                };
                if !kicked {
                    run.lag = asked.elapsed().saturating_sub(interval);
                }
                run.sample(&inner, kicked);
                if kicked {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(MIN_KICK_GAP) => {}
                    }
                }
            }
            inner.signal.set(Actions::NONE);
        }
    }
}

/// The manager's state between samples.
struct Run {
    memory_limit: Option<u64>,
    fd_limit: Option<u64>,
    /// The last full descriptor count, when, and the open connections then.
    counted: Option<(u64, Instant, u64)>,
    lag: Duration,
    /// Per trigger: whether it was on (threshold hysteresis).
    was_on: Vec<bool>,
    /// Per action: its held value and until when it holds.
    held: [(f64, Option<Instant>); Action::ALL.len()],
    round: u32,
    pressure_gauges: [metrics::Gauge; Monitor::ALL.len()],
    action_gauges: [metrics::Gauge; Action::ALL.len()],
    activations: [metrics::Counter; Action::ALL.len()],
}

impl Run {
    fn new(inner: &Inner) -> Self {
        let memory_limit = if inner.config.watches(Monitor::Memory) {
            inner.config.memory_limit.or_else(sample::cgroup_memory_max)
        } else {
            None
        };
        if inner.config.watches(Monitor::Memory) && memory_limit.is_none() {
            tracing::info!(
                "overload: no memory limit configured and no cgroup memory.max; the memory monitor is off"
            );
        }
        Self {
            memory_limit,
            fd_limit: sample::fd_limit(),
            counted: None,
            lag: Duration::ZERO,
            was_on: vec![false; inner.config.triggers.len()],
            held: [(0.0, None); Action::ALL.len()],
            round: 0,
            pressure_gauges: Monitor::ALL
                .map(|m| metrics::gauge!(OVERLOAD_PRESSURE, LABEL_MONITOR => m.as_str())),
            action_gauges: Action::ALL
                .map(|a| metrics::gauge!(OVERLOAD_ACTION, LABEL_ACTION => a.as_str())),
            activations: Action::ALL
                .map(|a| metrics::counter!(OVERLOAD_ACTIVATIONS_TOTAL, LABEL_ACTION => a.as_str())),
        }
    }

    fn sample(&mut self, inner: &Inner, kicked: bool) {
        let config = &inner.config;
        let now = Instant::now();
        let open = inner.connections.get().map(|(open, cap)| (open(), *cap));
        let mut pressures = [None; Monitor::ALL.len()];
        if config.watches(Monitor::Descriptors) {
            pressures[Monitor::Descriptors as usize] =
                self.descriptors(inner, now, kicked, open.map(|(n, _)| n));
        }
        if let Some(limit) = self.memory_limit
            && let Some(rss) = sample::resident_bytes()
        {
            pressures[Monitor::Memory as usize] = Some(ratio(rss, limit));
        }
        if config.watches(Monitor::EventLoopLag) {
            pressures[Monitor::EventLoopLag as usize] =
                Some((self.lag.as_secs_f64() / config.lag_limit.as_secs_f64()).min(1.0));
        }
        if config.watches(Monitor::Connections)
            && let Some((open, cap)) = open
        {
            pressures[Monitor::Connections as usize] = Some(ratio(open, cap));
        }
        for (monitor, pressure) in Monitor::ALL.iter().zip(&pressures) {
            if let Some(p) = pressure {
                self.pressure_gauges[*monitor as usize].set(*p);
            }
        }

        // Each action takes the largest value of its triggers.
        let mut fired = [0.0f64; Action::ALL.len()];
        for (i, (action, monitor, trigger)) in config.triggers.iter().enumerate() {
            let value =
                pressures[*monitor as usize].map_or(0.0, |p| trigger.value(p, self.was_on[i]));
            self.was_on[i] = matches!(trigger, Trigger::Threshold(_)) && value >= 1.0;
            let slot = &mut fired[*action as usize];
            *slot = slot.max(value);
        }
        let previous = inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values;
        let mut values = [0.0f64; Action::ALL.len()];
        for action in Action::ALL {
            let i = action as usize;
            let (held, until) = &mut self.held[i];
            values[i] = if fired[i] > 0.0 {
                *held = fired[i];
                *until = Some(now + config.hold);
                fired[i]
            } else if until.is_some_and(|until| now < until) {
                *held
            } else {
                *until = None;
                0.0
            };
        }
        self.round = if fired[Action::ReclaimIdle as usize] >= 1.0 {
            (self.round + 1).min(super::RECLAIM_ROUNDS)
        } else if values[Action::ReclaimIdle as usize] >= 1.0 {
            self.round
        } else {
            0
        };
        let on = |action: Action| values[action as usize] >= 1.0;
        let actions = Actions::new(
            on(Action::ReclaimIdle),
            self.round,
            on(Action::ShedRequests),
            on(Action::StopAccepting),
            (values[Action::ShrinkTimeouts as usize] * f64::from(SCALE_STEPS)).round() as u32,
        );
        for action in Action::ALL {
            let i = action as usize;
            self.action_gauges[i].set(values[i]);
            let (was, is) = (previous[i] > 0.0, values[i] > 0.0);
            if is && !was {
                self.activations[i].increment(1);
                tracing::warn!(
                    action = action.as_str(),
                    pressures = %Pressures(&pressures),
                    "overload: action on"
                );
            } else if was && !is {
                tracing::info!(
                    action = action.as_str(),
                    pressures = %Pressures(&pressures),
                    "overload: action off"
                );
            }
        }
        *inner.status.lock().unwrap_or_else(PoisonError::into_inner) = OverloadStatus {
            pressures,
            values,
            actions,
        };
        inner.signal.set(actions);
    }

    /// The descriptor pressure: counted when near a trigger, when asked, or once a second;
    /// estimated from the open connections in between.
    fn descriptors(
        &mut self,
        inner: &Inner,
        now: Instant,
        kicked: bool,
        open: Option<u64>,
    ) -> Option<f64> {
        let lowest = inner.config.lowest(Monitor::Descriptors).unwrap_or(1.0);
        let estimate = match (self.counted, open, self.fd_limit) {
            (Some((count, at, open_then)), Some(open_now), Some(limit))
                if !kicked && now.duration_since(at) < RECOUNT_EVERY =>
            {
                let estimate = (count + open_now).saturating_sub(open_then);
                (ratio(estimate, limit) < lowest - 0.1).then_some(estimate)
            }
            _ => None,
        };
        let fds = match estimate {
            Some(estimate) => estimate,
            None => {
                // At EMFILE the limits file cannot be opened either: keep the last limit.
                if let Some(limit) = sample::fd_limit() {
                    self.fd_limit = Some(limit);
                }
                let count = match sample::open_fds() {
                    Ok(count) => count,
                    // The listing itself found no descriptor free: that is the answer.
                    Err(error) if sample::is_exhausted(&error) => self.fd_limit?,
                    Err(error) => {
                        tracing::debug!(%error, "overload: cannot count descriptors");
                        return None;
                    }
                };
                self.counted = Some((count, now, open.unwrap_or(0)));
                count
            }
        };
        let limit = self.fd_limit?;
        // The accepts ask for a count at the next level above this one (a trigger's start
        // or threshold), so that crossing it does not wait for the tick.
        let used = i64::try_from(fds).unwrap_or(i64::MAX);
        let budget = inner
            .config
            .levels(Monitor::Descriptors)
            .map(|level| (level * limit as f64).ceil() as i64)
            .filter(|&at| at > used)
            .min()
            .map_or(i64::MAX, |at| at - used);
        inner.fd_budget.store(budget, Ordering::Relaxed);
        Some(ratio(fds, limit))
    }
}

fn ratio(used: u64, limit: u64) -> f64 {
    (used as f64 / limit.max(1) as f64).min(1.0)
}

/// The pressures for a log line: `descriptors=0.93 memory=0.41`.
struct Pressures<'a>(&'a [Option<f64>; Monitor::ALL.len()]);

impl std::fmt::Display for Pressures<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for (monitor, p) in Monitor::ALL.iter().zip(self.0) {
            if let Some(p) = p {
                if !first {
                    f.write_str(" ")?;
                }
                first = false;
                write!(f, "{}={p:.2}", monitor.as_str())?;
            }
        }
        Ok(())
    }
}

#[cfg(all(test, not(portcullis_loom)))]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;

    /// Samples once by hand.
    fn sample(manager: &OverloadManager, run: &mut Run) -> OverloadStatus {
        run.sample(&manager.inner, false);
        manager.status()
    }

    #[tokio::test(start_paused = true)]
    async fn connections_reclaim_in_rounds_hold_then_release() {
        let config = Overload::off().connections_at(0.9);
        let manager = OverloadManager::new(config);
        let open = Arc::new(AtomicU64::new(0));
        let count = Arc::clone(&open);
        manager.count_connections(move || count.load(Ordering::Relaxed), 100);
        let mut run = Run::new(&manager.inner);

        assert!(sample(&manager, &mut run).actions().is_none());
        open.store(85, Ordering::Relaxed);
        let status = sample(&manager, &mut run);
        assert!(!status.actions().keep_alive_off());
        assert_eq!(
            status.actions().shrink_steps(),
            SCALE_STEPS / 2,
            "halfway up the scale"
        );

        open.store(95, Ordering::Relaxed);
        for round in 1..=super::super::RECLAIM_ROUNDS + 1 {
            let actions = sample(&manager, &mut run).actions();
            assert!(actions.keep_alive_off());
            assert_eq!(
                actions.reclaim_round(),
                round.min(super::super::RECLAIM_ROUNDS)
            );
        }
        // In the hysteresis band: still on, no further round.
        open.store(87, Ordering::Relaxed);
        assert!(sample(&manager, &mut run).actions().keep_alive_off());
        // Below it: held for the hold time, then off.
        open.store(10, Ordering::Relaxed);
        assert!(
            sample(&manager, &mut run).actions().keep_alive_off(),
            "held"
        );
        tokio::time::advance(super::super::DEFAULT_HOLD).await;
        let status = sample(&manager, &mut run);
        assert!(status.actions().is_none(), "{status:?}");
        assert!(!status.is_refusing());
    }

    #[tokio::test(start_paused = true)]
    async fn lag_sheds_and_memory_limits_configure() {
        let manager = OverloadManager::new(Overload::default().memory_limit(u64::MAX / 2));
        let mut run = Run::new(&manager.inner);
        assert_eq!(run.memory_limit, Some(u64::MAX / 2));
        run.lag = Duration::from_millis(1500);
        let status = sample(&manager, &mut run);
        assert!(status.actions().shedding());
        assert!(status.is_refusing());
        assert_eq!(status.pressure(Monitor::EventLoopLag), Some(1.0));
        assert!(status.pressure(Monitor::Memory).is_some_and(|p| p < 0.01));
        assert!(status.pressure(Monitor::Descriptors).is_some());
        assert!(
            status
                .verbose()
                .contains("overload action shed_requests: 1.00")
        );
    }

    #[tokio::test]
    async fn an_accept_past_the_headroom_asks_for_a_sample() {
        let manager = OverloadManager::new(Overload::default());
        manager.inner.fd_budget.store(2, Ordering::Relaxed);
        manager.on_accept();
        manager.on_accept();
        // The permit notify_one left is taken at once.
        tokio::time::timeout(Duration::from_secs(5), manager.inner.kick.notified())
            .await
            .expect("kicked");
    }
}
