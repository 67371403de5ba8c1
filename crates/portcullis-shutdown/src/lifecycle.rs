//! [`Lifecycle`]: a running server's phase, and everything that reports it.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use metrics::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};

use crate::Health;
use crate::phase::{PhaseCell, PhaseWatch, ShutdownPhase};

/// A hook called at every phase change.
pub(crate) type PhaseHook = Arc<dyn Fn(ShutdownPhase) + Send + Sync>;
/// A hook called with the drain's progress.
pub(crate) type ProgressHook = Arc<dyn Fn(DrainProgress) + Send + Sync>;
/// Something to reload on SIGHUP.
type Reloader = Arc<dyn Fn() + Send + Sync>;
/// Counts the connections still open.
type OpenCount = Arc<dyn Fn() -> u64 + Send + Sync>;

/// How far a drain has got: the argument of
/// [`Shutdown::on_drain_progress`](crate::Shutdown::on_drain_progress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainProgress {
    /// Connections still open (on every core).
    pub open: u64,
    /// Time since the drain began (the listeners closed).
    pub elapsed: Duration,
    /// Time left until the drain deadline forces the rest closed (zero once it passed).
    pub remaining: Duration,
    /// Whether the drain has ended (the last call).
    pub finished: bool,
}

/// The running life of one server: the phase state machine of [`crate::phase`] (drawn in
/// its docs), and what follows each move: readiness, the shutdown token, the phase gauge, the
/// application's hooks, systemd's `READY`/`STOPPING`/`STATUS`/`WATCHDOG`, reloads on SIGHUP.
///
/// Made by [`Shutdown::start`](crate::Shutdown::start) (configured) or
/// [`Lifecycle::new`] (bare: no triggers, nothing reported). A cheap handle: clones share one
/// lifecycle. The tasks it started (triggers, SIGHUP, watchdog, progress) end when the last
/// handle is dropped.
///
/// A server drives it through one sequence:
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// use portcullis_shutdown::{Shutdown, ShutdownPhase};
///
/// let lifecycle = Shutdown::from_signals()?.start();
/// // ... every listener accepts:
/// lifecycle.serving();                                 // ready, READY=1
/// let delay = lifecycle.run_until_drain().await;       // trigger, readiness off, delay
/// // ... stop accepting; connections watch `lifecycle.watch()` and drain
/// let drain_started = tokio::time::Instant::now();
/// lifecycle.wait_for_tasks(drain_started + lifecycle.drain_timeout()).await;
/// lifecycle.finish(drain_started);                     // Done, drain duration
/// assert_eq!(lifecycle.phase(), ShutdownPhase::Done);
/// # let _ = delay; Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    cell: Arc<PhaseCell>,
    health: Health,
    token: CancellationToken,
    tasks: TaskTracker,
    drain_delay: Duration,
    drain_timeout: Duration,
    report: Report,
    reloaders: Mutex<Vec<Reloader>>,
    /// Whether SIGHUP is caught by this lifecycle (so the server need not catch it).
    hangups_caught: bool,
    open: Mutex<Option<OpenCount>>,
    /// Tasks started for this lifecycle; aborted when the last handle goes.
    background: Mutex<Vec<AbortOnDropHandle<()>>>,
}

/// What reports the phase: gauges, hooks, systemd. Empty for a bare lifecycle and a follower.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) gauges: Option<PhaseGauges>,
    pub(crate) on_phase: Option<PhaseHook>,
    pub(crate) on_progress: Option<(Duration, ProgressHook)>,
    #[cfg(unix)]
    pub(crate) systemd: Option<Arc<crate::systemd::Notifier>>,
    /// Whether systemd was told STOPPING=1 (sent once, on the first phase past Running).
    #[cfg(unix)]
    pub(crate) stopping_sent: std::sync::atomic::AtomicBool,
    /// Set by [`Lifecycle::leave_systemd`]: another process is systemd's main one now.
    #[cfg(unix)]
    pub(crate) left_systemd: std::sync::atomic::AtomicBool,
}

impl Report {
    /// The notifier, unless this process left systemd to another.
    #[cfg(unix)]
    fn systemd(&self) -> Option<&crate::systemd::Notifier> {
        self.systemd
            .as_deref()
            .filter(|_| !self.left_systemd.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// The phase and drain-duration gauges, resolved when the lifecycle starts.
pub(crate) struct PhaseGauges {
    phase: [Gauge; ShutdownPhase::ALL.len()],
    drain_duration: Gauge,
}

impl PhaseGauges {
    pub(crate) fn resolve() -> Self {
        Self {
            phase: ShutdownPhase::ALL.map(
                |phase| metrics::gauge!(crate::metrics::SHUTDOWN_PHASE, "phase" => phase.as_str()),
            ),
            drain_duration: metrics::gauge!(crate::metrics::DRAIN_DURATION),
        }
    }
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("phase", &self.phase())
            .field("health", &self.inner.health)
            .field("drain_delay", &self.inner.drain_delay)
            .field("drain_timeout", &self.inner.drain_timeout)
            .field("hangups_caught", &self.inner.hangups_caught)
            .finish_non_exhaustive()
    }
}

impl Default for Lifecycle {
    fn default() -> Self {
        Self::new()
    }
}

/// The parts [`Shutdown::start`](crate::Shutdown::start) builds a lifecycle from.
pub(crate) struct Parts {
    pub(crate) health: Health,
    pub(crate) token: CancellationToken,
    pub(crate) tasks: TaskTracker,
    pub(crate) drain_delay: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) report: Report,
    pub(crate) hangups_caught: bool,
}

impl Lifecycle {
    /// A bare lifecycle: in `Running`, moved only by [`advance`](Self::advance), reporting
    /// nothing, with the default drain delay and deadline.
    #[must_use]
    pub fn new() -> Self {
        Self::from_parts(Parts {
            health: Health::new(),
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            drain_delay: crate::DEFAULT_DRAIN_DELAY,
            drain_timeout: crate::DEFAULT_DRAIN_TIMEOUT,
            report: Report::default(),
            hangups_caught: false,
        })
    }

    pub(crate) fn from_parts(parts: Parts) -> Self {
        Self::with_cell(PhaseCell::new(), parts)
    }

    fn with_cell(cell: Arc<PhaseCell>, parts: Parts) -> Self {
        Self {
            inner: Arc::new(Inner {
                cell,
                health: parts.health,
                token: parts.token,
                tasks: parts.tasks,
                drain_delay: parts.drain_delay,
                drain_timeout: parts.drain_timeout,
                report: parts.report,
                reloaders: Mutex::new(Vec::new()),
                hangups_caught: parts.hangups_caught,
                open: Mutex::new(None),
                background: Mutex::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn upgrade(weak: &Weak<Inner>) -> Option<Self> {
        weak.upgrade().map(|inner| Self { inner })
    }

    /// Keeps `task` running until the last handle of this lifecycle is dropped.
    pub(crate) fn keep(&self, task: tokio::task::JoinHandle<()>) {
        self.inner
            .background
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(AbortOnDropHandle::new(task));
    }

    /// The phase now: one atomic load.
    #[must_use]
    pub fn phase(&self) -> ShutdownPhase {
        self.inner.cell.get()
    }

    /// A watcher of the phase for hand-written futures (a connection driver).
    #[must_use]
    pub fn watch(&self) -> PhaseWatch {
        PhaseWatch::new(Arc::clone(&self.inner.cell))
    }

    /// Completes once the phase has reached `phase` (at once if it has).
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe.
    pub async fn reached(&self, phase: ShutdownPhase) {
        self.inner.cell.reached(phase).await;
    }

    /// Moves to `phase` if that is forward (a repeat or a step back does nothing) and reports
    /// the move: the phase gauge, the phase hook, systemd. Returns whether it moved.
    pub fn advance(&self, phase: ShutdownPhase) -> bool {
        let previous = self.inner.cell.advance(phase);
        if previous >= phase {
            return false;
        }
        self.report(phase);
        true
    }

    /// Starts the shutdown, as a trigger does: `Delay`, or straight to `Drain` without a
    /// drain delay (a delay of zero is no phase of its own).
    pub fn shut_down(&self) {
        if self.inner.drain_delay.is_zero() {
            self.advance(ShutdownPhase::Drain);
        } else {
            self.advance(ShutdownPhase::Delay);
        }
    }

    /// Cuts the drain short (or skips it), as the force trigger does.
    pub fn force(&self) {
        self.advance(ShutdownPhase::Forced);
    }

    /// A lifecycle in the same phase that this one moves along with itself, for one core of
    /// a per-core server: its connections watch it without sharing a wake-up list with other
    /// cores. It reports nothing itself; move the leader, never a follower.
    #[must_use]
    pub fn follower(&self) -> Lifecycle {
        Self::with_cell(
            self.inner.cell.follower(),
            Parts {
                health: self.inner.health.clone(),
                token: self.inner.token.clone(),
                tasks: self.inner.tasks.clone(),
                drain_delay: self.inner.drain_delay,
                drain_timeout: self.inner.drain_timeout,
                report: Report::default(),
                hangups_caught: self.inner.hangups_caught,
            },
        )
    }

    /// The readiness and liveness this lifecycle reports.
    #[must_use]
    pub fn health(&self) -> &Health {
        &self.inner.health
    }

    /// Cancelled at the first moment of the shutdown (entering `Delay`).
    #[must_use]
    pub fn token(&self) -> &CancellationToken {
        &self.inner.token
    }

    /// The application's tracked tasks, waited for by the drain.
    #[must_use]
    pub fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    /// The drain delay.
    #[must_use]
    pub fn drain_delay(&self) -> Duration {
        self.inner.drain_delay
    }

    /// The drain deadline.
    #[must_use]
    pub fn drain_timeout(&self) -> Duration {
        self.inner.drain_timeout
    }

    /// Whether this lifecycle catches SIGHUP (it was started with signals): reloaders added
    /// with [`on_reload`](Self::on_reload) run on each one, and SIGHUP never ends the process.
    #[must_use]
    pub fn catches_hangups(&self) -> bool {
        self.inner.hangups_caught
    }

    /// Adds something to reload on every SIGHUP (when [`catches_hangups`](Self::catches_hangups);
    /// a server that holds TLS acceptors adds their reload). Runs on the blocking pool.
    pub fn on_reload(&self, reload: impl Fn() + Send + Sync + 'static) {
        self.inner
            .reloaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::new(reload));
    }

    /// Whether anything was added with [`on_reload`](Self::on_reload).
    #[must_use]
    pub fn has_reloaders(&self) -> bool {
        !self
            .inner
            .reloaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// Runs every reloader (as a SIGHUP does); logs when there is nothing to reload.
    pub async fn reload(&self) {
        let reloaders = self
            .inner
            .reloaders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if reloaders.is_empty() {
            tracing::info!("reload asked for (SIGHUP): nothing to reload");
            return;
        }
        tracing::info!(reloaders = reloaders.len(), "reloading (SIGHUP)");
        let reloaded = tokio::task::spawn_blocking(move || {
            for reload in reloaders {
                // A reloader's own failures are its to log and count; a panic must not stop
                // the others.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| reload())).is_err() {
                    tracing::error!("a reloader panicked");
                }
            }
        })
        .await;
        if let Err(error) = reloaded {
            tracing::error!(%error, "the reload task failed");
        }
    }

    /// Tells the lifecycle how to count the connections still open, for the drain progress
    /// (the hook and systemd's `STATUS=`).
    pub fn count_open(&self, open: impl Fn() -> u64 + Send + Sync + 'static) {
        *self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(open));
    }

    fn open(&self) -> u64 {
        let open = self
            .inner
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        open.map_or(0, |open| open())
    }

    /// Sends `state` (`STATUS=...`, `MAINPID=...`) to systemd when this lifecycle reports to
    /// it and has not [left](Self::leave_systemd) it: for states of the server's own, such
    /// as an upgrade under way.
    pub fn notify_systemd(&self, state: &str) {
        #[cfg(unix)]
        if let Some(notifier) = self.inner.report.systemd()
            && let Err(error) = notifier.send(state)
        {
            tracing::warn!(%error, "cannot notify systemd");
        }
        #[cfg(not(unix))]
        let _ = state;
    }

    /// Sends systemd nothing more from this process (no `STOPPING=1`, no `STATUS=`, no
    /// watchdog ping): after a zero-downtime upgrade the new process is the service's main
    /// process (`MAINPID=`), and with `NotifyAccess=all` this one's drain would otherwise
    /// read as the service stopping.
    pub fn leave_systemd(&self) {
        #[cfg(unix)]
        self.inner
            .report
            .left_systemd
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Every listener accepts: readiness on, `READY=1` and `STATUS=serving` under systemd, and
    /// watchdog pings from now on when `WatchdogSec=` is set. Call within the runtime that
    /// serves, so the pings stop if it does.
    pub fn serving(&self) {
        self.inner.health.set_ready(true);
        #[cfg(unix)]
        if let Some(notifier) = &self.inner.report.systemd
            && let Err(error) = notifier.ready()
        {
            tracing::warn!(%error, "cannot notify systemd");
        }
        self.report(ShutdownPhase::Running);
        #[cfg(unix)]
        if let Some(notifier) = &self.inner.report.systemd
            && let Some(interval) = crate::systemd::watchdog_interval()
        {
            let notifier = Arc::clone(notifier);
            let weak = self.downgrade();
            self.keep(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                loop {
                    ticks.tick().await;
                    let Some(lifecycle) = Lifecycle::upgrade(&weak) else {
                        return;
                    };
                    if lifecycle.inner.report.systemd().is_none() {
                        return;
                    }
                    drop(lifecycle);
                    if let Err(error) = notifier.watchdog() {
                        tracing::warn!(%error, "cannot send the systemd watchdog ping");
                    }
                }
            }));
        }
        if self.inner.report.on_progress.is_some() || self.has_systemd() {
            self.start_progress();
        }
    }

    fn has_systemd(&self) -> bool {
        #[cfg(unix)]
        return self.inner.report.systemd.is_some();
        #[cfg(not(unix))]
        return false;
    }

    /// Waits for the shutdown to begin, turns readiness off and cancels the token at once,
    /// keeps serving for the drain delay (cut short by a force), then moves to `Drain`.
    /// Returns how long that took from the trigger.
    ///
    /// # Cancellation safety
    ///
    /// Cancellation safe; the moves already made stay made.
    pub async fn run_until_drain(&self) -> Duration {
        self.reached(ShutdownPhase::Delay).await;
        let started = Instant::now();
        // Readiness went off and the token was cancelled at the move itself (`report`).
        let delay = self.inner.drain_delay;
        if !delay.is_zero() && !self.phase().is_forced() {
            tracing::info!(?delay, "shutting down: readiness off, still serving");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.reached(ShutdownPhase::Forced) => {}
            }
        }
        self.advance(ShutdownPhase::Drain);
        started.elapsed()
    }

    /// Waits for the application's tracked tasks until `deadline` (or a force); returns how
    /// many are still running.
    pub async fn wait_for_tasks(&self, deadline: Instant) -> u64 {
        let tasks = &self.inner.tasks;
        tasks.close();
        tokio::select! {
            () = tasks.wait() => {}
            () = tokio::time::sleep_until(deadline) => {}
            () = self.reached(ShutdownPhase::Forced) => {}
        }
        let left = tasks.len() as u64;
        if left > 0 {
            tracing::warn!(
                left,
                "application tasks still running at the drain deadline"
            );
        }
        left
    }

    /// The drain that began at `drain_started` has ended: records its duration, makes the
    /// last progress report, and moves to `Done`.
    pub fn finish(&self, drain_started: Instant) {
        let elapsed = drain_started.elapsed();
        if let Some(gauges) = &self.inner.report.gauges {
            gauges.drain_duration.set(elapsed.as_secs_f64());
        }
        if let Some((_, hook)) = &self.inner.report.on_progress {
            let progress = DrainProgress {
                open: self.open(),
                elapsed,
                remaining: self.inner.drain_timeout.saturating_sub(elapsed),
                finished: true,
            };
            call_hook(|| hook(progress), "drain progress");
        }
        self.advance(ShutdownPhase::Done);
    }

    /// Reports `phase` (entered just now).
    fn report(&self, phase: ShutdownPhase) {
        let report = &self.inner.report;
        if phase >= ShutdownPhase::Delay {
            // At the move itself, before anybody waiting for it runs: the load balancer must
            // see not-ready before any listener closes.
            self.inner.health.set_ready(false);
            self.inner.token.cancel();
        }
        if let Some(gauges) = &report.gauges {
            for each in ShutdownPhase::ALL {
                gauges.phase[each as usize].set(if each == phase { 1.0 } else { 0.0 });
            }
        }
        tracing::debug!(phase = phase.as_str(), "shutdown phase");
        #[cfg(unix)]
        if let Some(notifier) = report.systemd() {
            if phase >= ShutdownPhase::Delay
                && !report
                    .stopping_sent
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                && let Err(error) = notifier.stopping()
            {
                tracing::warn!(%error, "cannot notify systemd");
            }
            let status = match phase {
                ShutdownPhase::Running => "serving",
                ShutdownPhase::Delay => "shutting down: readiness off, still serving",
                ShutdownPhase::Drain => "draining connections",
                ShutdownPhase::Forced => "closing the remaining connections",
                ShutdownPhase::Done => "drained",
            };
            if let Err(error) = notifier.status(status) {
                tracing::warn!(%error, "cannot notify systemd");
            }
        }
        if let Some(hook) = &report.on_phase {
            call_hook(|| hook(phase), "shutdown phase");
        }
    }

    /// Reports the drain's progress every interval from the moment it begins until it ends.
    fn start_progress(&self) {
        let every = self
            .inner
            .report
            .on_progress
            .as_ref()
            .map_or(Duration::from_secs(1), |(every, _)| *every)
            .max(Duration::from_millis(1));
        let weak = self.downgrade();
        let cell = Arc::clone(&self.inner.cell);
        self.keep(tokio::spawn(async move {
            // Only the phase cell and a weak reference: the task must not keep the lifecycle
            // alive.
            cell.reached(ShutdownPhase::Drain).await;
            let started = Instant::now();
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(lifecycle) = Lifecycle::upgrade(&weak) else {
                    return;
                };
                if lifecycle.phase() == ShutdownPhase::Done {
                    return; // `finish` made the last report
                }
                lifecycle.progress(started.elapsed());
            }
        }));
    }

    fn progress(&self, elapsed: Duration) {
        let progress = DrainProgress {
            open: self.open(),
            elapsed,
            remaining: self.inner.drain_timeout.saturating_sub(elapsed),
            finished: false,
        };
        #[cfg(unix)]
        if let Some(notifier) = self.inner.report.systemd() {
            let status = format!(
                "draining: {} connection{} open, {} s to the deadline",
                progress.open,
                if progress.open == 1 { "" } else { "s" },
                progress.remaining.as_secs()
            );
            if let Err(error) = notifier.status(&status) {
                tracing::warn!(%error, "cannot notify systemd");
            }
        }
        if let Some((_, hook)) = &self.inner.report.on_progress {
            call_hook(|| hook(progress), "drain progress");
        }
    }
}

/// Calls the application's hook: a panic in it must not stop the shutdown halfway.
fn call_hook(hook: impl FnOnce(), what: &str) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).is_err() {
        tracing::error!(hook = what, "a lifecycle hook panicked");
    }
}
