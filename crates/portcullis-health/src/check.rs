//! [`Check`], [`HealthChecks`] and the hysteresis of each check's state.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::metrics::{
    CHECK_DURATION, CHECK_FAILED_OPEN, CHECK_TRANSITIONS_TOTAL, CHECK_UP, LABEL_CHECK, LABEL_TO,
};

/// How often a check runs by default: every second, start to start.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// How long one run of a check may take by default: 1 s; past it, the run failed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Failed runs in a row that take a check down by default: 3 (one lost packet is not an
/// outage).
pub const DEFAULT_FAILURES_TO_DOWN: u32 = 3;
/// Successful runs in a row that bring a check back up by default: 2 (no flapping on a
/// dependency that answers one probe in two).
pub const DEFAULT_SUCCESSES_TO_UP: u32 = 2;

type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// One dependency check: a name, a probe and its schedule.
///
/// The probe is an async function answering `Ok(())` when the dependency is usable, or an
/// error message. A check starts *pending* (down until its first success), goes down after
/// [`failures_to_down`](Check::failures_to_down) failed runs in a row and comes back up after
/// [`successes_to_up`](Check::successes_to_up) successful ones.
#[derive(Clone)]
pub struct Check {
    name: Cow<'static, str>,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    failures_to_down: u32,
    successes_to_up: u32,
    critical: bool,
    fail_open_after: Option<Duration>,
}

impl Check {
    /// A critical check named `name` (a short token: it is a metric label) running `probe`,
    /// with the default schedule.
    pub fn new<F, Fut, E>(name: impl Into<Cow<'static, str>>, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display,
    {
        let probe: Probe = Arc::new(move || {
            let run = probe();
            Box::pin(async move { run.await.map_err(|error| error.to_string()) })
        });
        Self {
            name: name.into(),
            probe,
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            failures_to_down: DEFAULT_FAILURES_TO_DOWN,
            successes_to_up: DEFAULT_SUCCESSES_TO_UP,
            critical: true,
            fail_open_after: None,
        }
    }

    /// How often it runs, start to start (default [`DEFAULT_INTERVAL`], at least 10 ms).
    #[must_use]
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }

    /// How long one run may take before it counts as failed (default [`DEFAULT_TIMEOUT`]).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Failed runs in a row that take it down (default [`DEFAULT_FAILURES_TO_DOWN`], at
    /// least 1).
    #[must_use]
    pub fn failures_to_down(mut self, failures: u32) -> Self {
        self.failures_to_down = failures.max(1);
        self
    }

    /// Successful runs in a row that bring it back up (default [`DEFAULT_SUCCESSES_TO_UP`],
    /// at least 1). The first success of a pending check brings it up at once.
    #[must_use]
    pub fn successes_to_up(mut self, successes: u32) -> Self {
        self.successes_to_up = successes.max(1);
        self
    }

    /// Whether readiness depends on it (default `true`). A non-critical check that is down
    /// makes the instance *degraded*: still ready, listed by `/readyz?verbose`.
    #[must_use]
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// The guard against a cascade, for a critical check on a dependency other instances may
    /// share: once the check has been down for `after`, it stops holding readiness back (the
    /// instance is ready again, *degraded*, and the check is listed as failed open). An outage
    /// that long is likely everyone's, and an instance out of rotation helps nobody then: with
    /// every instance out, the load balancer has nothing left to send even the requests that
    /// do not need the dependency. A check that never succeeded (pending) never fails open: a
    /// new instance still waits for its dependency once. Default: never.
    #[must_use]
    pub fn fail_open_after(mut self, after: Duration) -> Self {
        self.fail_open_after = Some(after);
        self
    }

    /// The check's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("interval", &self.interval)
            .field("timeout", &self.timeout)
            .field("failures_to_down", &self.failures_to_down)
            .field("successes_to_up", &self.successes_to_up)
            .field("critical", &self.critical)
            .field("fail_open_after", &self.fail_open_after)
            .finish_non_exhaustive()
    }
}

/// Where a check stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckState {
    /// Never succeeded yet (counts as down).
    Pending,
    /// Usable.
    Up,
    /// Failed `failures_to_down` runs in a row, and has not come back yet.
    Down,
}

impl CheckState {
    /// `pending`, `up` or `down`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Pending => "pending",
            CheckState::Up => "up",
            CheckState::Down => "down",
        }
    }
}

/// One check as the last run left it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CheckStatus {
    /// Its name.
    pub name: Cow<'static, str>,
    /// Whether readiness depends on it.
    pub critical: bool,
    /// Its state.
    pub state: CheckState,
    /// When it last succeeded.
    pub last_success: Option<SystemTime>,
    /// The error of its last failed run, if the last run failed.
    pub last_error: Option<String>,
    /// Down for longer than its [`fail_open_after`](Check::fail_open_after): it no longer
    /// holds readiness back.
    pub failed_open: bool,
}

/// Every check at once: what `/readyz` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// Every critical check is up.
    pub ready: bool,
    /// Some non-critical check is not up.
    pub degraded: bool,
    /// Each check, in the order added.
    pub checks: Vec<CheckStatus>,
}

impl Status {
    /// The text of `/readyz?verbose`: one line per check.
    #[must_use]
    pub fn verbose(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            out.push_str(&format!(
                "check {}: {}{}",
                check.name,
                check.state.as_str(),
                if !check.critical {
                    " (not critical)"
                } else if check.failed_open {
                    " (failed open: down too long to hold readiness back)"
                } else {
                    ""
                }
            ));
            if let Some(success) = check.last_success {
                let ago = SystemTime::now()
                    .duration_since(success)
                    .unwrap_or_default();
                out.push_str(&format!(", last success {}s ago", ago.as_secs()));
            }
            if let Some(error) = &check.last_error {
                out.push_str(&format!(", last error: {error}"));
            }
            out.push('\n');
        }
        out
    }
}

/// The state of one check and its hysteresis counters.
#[derive(Debug)]
struct Tracked {
    state: CheckState,
    failures: u32,
    successes: u32,
    last_success: Option<SystemTime>,
    last_error: Option<String>,
    /// When it last went from up to down.
    down_since: Option<tokio::time::Instant>,
}

impl Tracked {
    fn new() -> Self {
        Self {
            state: CheckState::Pending,
            failures: 0,
            successes: 0,
            last_success: None,
            last_error: None,
            down_since: None,
        }
    }

    /// Down for longer than `check`'s fail-open allowance.
    fn failed_open(&self, check: &Check) -> bool {
        match (self.state, self.down_since, check.fail_open_after) {
            (CheckState::Down, Some(since), Some(after)) => since.elapsed() >= after,
            _ => false,
        }
    }

    /// Counts one run; the new state when it changed.
    fn record(&mut self, check: &Check, result: Result<(), String>) -> Option<CheckState> {
        let before = self.state;
        match result {
            Ok(()) => {
                self.failures = 0;
                self.successes = self.successes.saturating_add(1);
                self.last_success = Some(SystemTime::now());
                self.last_error = None;
                let up = match self.state {
                    CheckState::Pending => true,
                    CheckState::Down => self.successes >= check.successes_to_up,
                    CheckState::Up => true,
                };
                if up {
                    self.state = CheckState::Up;
                }
            }
            Err(error) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                self.last_error = Some(error);
                if self.state == CheckState::Up && self.failures >= check.failures_to_down {
                    self.state = CheckState::Down;
                    self.down_since = Some(tokio::time::Instant::now());
                }
            }
        }
        (self.state != before).then_some(self.state)
    }
}

struct Entry {
    check: Check,
    tracked: Mutex<Tracked>,
}

/// The checks of one server: registered by the application, run by [`HealthChecks::run`]
/// (portcullis-server runs it), read by [`HealthChecks::status`]. Clones share the checks.
#[derive(Clone, Default)]
pub struct HealthChecks {
    entries: Arc<Mutex<Vec<Arc<Entry>>>>,
}

impl HealthChecks {
    /// No checks: always ready.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `check`. Checks added after [`run`](Self::run) started are run too (from their
    /// first interval on).
    pub fn add(&self, check: Check) -> &Self {
        self.lock().push(Arc::new(Entry {
            check,
            tracked: Mutex::new(Tracked::new()),
        }));
        self
    }

    /// Whether there are no checks.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every check's cached state: never runs one, never waits.
    #[must_use]
    pub fn status(&self) -> Status {
        let entries = self.lock().clone();
        let checks: Vec<CheckStatus> = entries
            .iter()
            .map(|entry| {
                let tracked = entry.tracked.lock().unwrap_or_else(PoisonError::into_inner);
                CheckStatus {
                    name: entry.check.name.clone(),
                    critical: entry.check.critical,
                    state: tracked.state,
                    last_success: tracked.last_success,
                    last_error: tracked.last_error.clone(),
                    failed_open: tracked.failed_open(&entry.check),
                }
            })
            .collect();
        Status {
            ready: checks
                .iter()
                .all(|check| !check.critical || check.state == CheckState::Up || check.failed_open),
            degraded: checks.iter().any(|check| {
                (!check.critical || check.failed_open) && check.state != CheckState::Up
            }),
            checks,
        }
    }

    /// Runs every check on its schedule until `stop` is cancelled (each in a task of its
    /// own, so a hanging dependency delays only its own check, and only up to its timeout).
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops every check.
    pub fn run(&self, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        let checks = self.clone();
        async move {
            let mut tasks = tokio::task::JoinSet::new();
            let mut started = 0;
            loop {
                let entries = checks.lock().clone();
                for entry in entries.into_iter().skip(started) {
                    started += 1;
                    tasks.spawn(run_one(entry, stop.clone()));
                }
                // New checks are picked up once a second.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

impl fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .lock()
            .iter()
            .map(|entry| entry.check.name.to_string())
            .collect();
        f.debug_struct("HealthChecks")
            .field("checks", &names)
            .finish()
    }
}

/// Runs one check every interval until `stop`.
async fn run_one(entry: Arc<Entry>, stop: CancellationToken) {
    let check = &entry.check;
    let name = check.name.to_string();
    let up = metrics::gauge!(CHECK_UP, LABEL_CHECK => name.clone());
    let failed_open = metrics::gauge!(CHECK_FAILED_OPEN, LABEL_CHECK => name.clone());
    let duration = metrics::histogram!(CHECK_DURATION, LABEL_CHECK => name.clone());
    let to_up =
        metrics::counter!(CHECK_TRANSITIONS_TOTAL, LABEL_CHECK => name.clone(), LABEL_TO => "up");
    let to_down =
        metrics::counter!(CHECK_TRANSITIONS_TOTAL, LABEL_CHECK => name.clone(), LABEL_TO => "down");
    up.set(0.0);
    failed_open.set(0.0);
    to_up.increment(0);
    to_down.increment(0);
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let started = tokio::time::Instant::now();
        let result = tokio::select! {
            () = stop.cancelled() => return,
            result = tokio::time::timeout(check.timeout, (check.probe)()) => result,
        };
        duration.record(started.elapsed().as_secs_f64());
        let result =
            result.unwrap_or_else(|_| Err(format!("no answer within {:?}", check.timeout)));
        let failed = result.as_ref().err().cloned();
        let (changed, open) = {
            let mut tracked = entry.tracked.lock().unwrap_or_else(PoisonError::into_inner);
            let changed = tracked.record(check, result);
            (changed, tracked.failed_open(check))
        };
        failed_open.set(if open { 1.0 } else { 0.0 });
        match changed {
            Some(CheckState::Up) => {
                up.set(1.0);
                to_up.increment(1);
                tracing::info!(check = %name, critical = check.critical, "health check up");
            }
            Some(state) => {
                up.set(0.0);
                to_down.increment(1);
                tracing::warn!(
                    check = %name,
                    critical = check.critical,
                    error = failed.as_deref().unwrap_or(""),
                    "health check {}",
                    state.as_str()
                );
            }
            None => {}
        }
    }
}

#[cfg(test)]
mod tests;
