//! [`Shutdown`]: everything a server's graceful shutdown needs, in one value.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::Arc;

use crate::lifecycle::{Lifecycle, Parts, PhaseGauges, PhaseHook, ProgressHook, Report};
use crate::{DrainProgress, Health, ShutdownPhase, Signals};

/// Default drain delay: none. Without a load balancer that polls readiness there is nobody to
/// wait for; behind Kubernetes set a few seconds (see `docs/shutdown.md`).
pub const DEFAULT_DRAIN_DELAY: Duration = Duration::ZERO;
/// Default drain deadline: 30 s, Kubernetes' default termination grace period.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A boxed trigger future.
pub type Trigger = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The configuration and the handles of one graceful shutdown: what triggers it (signals
/// and/or a [`ShutdownHandle`]), the drain delay and deadline, and what application code
/// watches ([`Health`], the shutdown token, the task tracker). Give it to the server
/// (`portcullis_server::Builder::graceful`); keep the handles it hands out.
///
/// ```no_run
/// use std::time::Duration;
/// use portcullis_shutdown::Shutdown;
///
/// # async fn run() -> std::io::Result<()> {
/// let shutdown = Shutdown::from_signals()?          // SIGTERM/SIGINT; a second one forces
///     .drain_delay(Duration::from_secs(5))
///     .drain_timeout(Duration::from_secs(30));
/// let token = shutdown.token();                     // cancelled when the shutdown begins
/// let tasks = shutdown.tasks();                     // the drain waits for these
/// tasks.spawn(async move { token.cancelled().await; /* flush, then return */ });
/// // portcullis_server::Server::builder().graceful(shutdown) ...
/// # Ok(()) }
/// ```
pub struct Shutdown {
    signals: Option<Signals>,
    handle: ShutdownHandle,
    triggers: Vec<Trigger>,
    forces: Vec<Trigger>,
    drain_delay: Duration,
    drain_timeout: Duration,
    health: Health,
    token: CancellationToken,
    tasks: TaskTracker,
    on_phase: Option<PhaseHook>,
    on_progress: Option<(Duration, ProgressHook)>,
    systemd: bool,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("signals", &self.signals)
            .field("drain_delay", &self.drain_delay)
            .field("drain_timeout", &self.drain_timeout)
            .field("health", &self.health)
            .field("shutting_down", &self.token.is_cancelled())
            .field("triggers", &self.triggers.len())
            .field("forces", &self.forces.len())
            .field("on_phase", &self.on_phase.is_some())
            .field(
                "on_progress",
                &self.on_progress.as_ref().map(|(every, _)| every),
            )
            .field("systemd", &self.systemd)
            .finish_non_exhaustive()
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown triggered only through its [`handle`](Self::handle).
    #[must_use]
    pub fn new() -> Self {
        Self {
            signals: None,
            handle: ShutdownHandle {
                shutdown: CancellationToken::new(),
                force: CancellationToken::new(),
            },
            triggers: Vec::new(),
            forces: Vec::new(),
            drain_delay: DEFAULT_DRAIN_DELAY,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            health: Health::new(),
            token: CancellationToken::new(),
            tasks: TaskTracker::new(),
            on_phase: None,
            on_progress: None,
            systemd: false,
        }
    }

    /// A shutdown triggered by SIGTERM or SIGINT (the next signal forces it), or through its
    /// handle. The signal handlers are installed now: call it before the server is reachable.
    /// SIGHUP is caught too (on Unix): it reloads what the server can reload (its TLS
    /// certificates) and never ends the process.
    ///
    /// # Errors
    ///
    /// When a signal handler cannot be installed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with its I/O driver (tokio's requirement for signals).
    pub fn from_signals() -> io::Result<Self> {
        Ok(Self::new().signals(Signals::new()?))
    }

    /// Uses `signals` (for example with SIGQUIT added) as triggers.
    #[must_use]
    pub fn signals(mut self, signals: Signals) -> Self {
        self.signals = Some(signals);
        self
    }

    /// Sets the drain delay: how long the server keeps serving, readiness already off, before
    /// its listeners close. Default [`DEFAULT_DRAIN_DELAY`].
    #[must_use]
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Sets the drain deadline, after which remaining connections are closed by force.
    /// Default [`DEFAULT_DRAIN_TIMEOUT`].
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Also starts the shutdown when `trigger` completes (a channel, a token's
    /// `cancelled_owned()`, an admin endpoint). Any number can be added; the first wins.
    #[must_use]
    pub fn trigger(mut self, trigger: impl Future<Output = ()> + Send + 'static) -> Self {
        self.triggers.push(Box::pin(trigger));
        self
    }

    /// Also cuts the drain short when `force` completes. If it completes before any shutdown
    /// trigger, the shutdown starts and is forced at once.
    #[must_use]
    pub fn force_trigger(mut self, force: impl Future<Output = ()> + Send + 'static) -> Self {
        self.forces.push(Box::pin(force));
        self
    }

    /// Uses `health` as the readiness and liveness to report (default: a fresh one).
    #[must_use]
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = health;
        self
    }

    /// Uses `token` as the shutdown token (default: a fresh one).
    #[must_use]
    pub fn with_token(mut self, token: CancellationToken) -> Self {
        self.token = token;
        self
    }

    /// Uses `tasks` as the tracker the drain waits for (default: a fresh one).
    #[must_use]
    pub fn with_tasks(mut self, tasks: TaskTracker) -> Self {
        self.tasks = tasks;
        self
    }

    /// Called at every phase change (see [`ShutdownPhase`]), for example to log or to report
    /// progress elsewhere. Runs wherever the phase moves (a runtime task, or a drop): keep it
    /// quick and non-blocking; a panic in it is caught and logged.
    ///
    /// Default: none. The phase is also the
    /// [`SHUTDOWN_PHASE`](crate::metrics::SHUTDOWN_PHASE) gauge.
    #[must_use]
    pub fn on_phase(mut self, hook: impl Fn(ShutdownPhase) + Send + Sync + 'static) -> Self {
        self.on_phase = Some(Arc::new(hook));
        self
    }

    /// Called every `every` during the drain with how many connections are still open, and
    /// once more when it has ended. Keep it quick and non-blocking.
    ///
    /// Default: none.
    #[must_use]
    pub fn on_drain_progress(
        mut self,
        every: Duration,
        hook: impl Fn(DrainProgress) + Send + Sync + 'static,
    ) -> Self {
        self.on_progress = Some((every, Arc::new(hook)));
        self
    }

    /// Reports to systemd when started by it with `Type=notify` (`NOTIFY_SOCKET` set; nothing
    /// happens otherwise): `READY=1` once every listener accepts, `STOPPING=1` when the
    /// shutdown begins, a `STATUS=` line at every phase and every second of the drain (with
    /// the connections still open), and `WATCHDOG=1` at half of `WatchdogSec=` from the
    /// serving runtime, so the pings stop if it stops. Unix only; elsewhere it does nothing.
    ///
    /// Default: off (a library does not talk to the service manager unless asked).
    #[must_use]
    pub fn systemd(mut self) -> Self {
        self.systemd = true;
        self
    }

    /// Triggers the shutdown (or forces it) from code.
    #[must_use]
    pub fn handle(&self) -> ShutdownHandle {
        self.handle.clone()
    }

    /// Readiness and liveness, as the server will report them.
    #[must_use]
    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Cancelled at the first moment of the shutdown: long-lived responses
    /// ([`end_on_shutdown`](crate::end_on_shutdown)) and background work watch it.
    #[must_use]
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Background tasks spawned here are waited for by the drain, under its deadline.
    #[must_use]
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Starts the lifecycle this configures: the triggers (signals, the handle, added
    /// triggers) and SIGHUP are listened for from now on, on tasks that end with the last
    /// handle of the returned [`Lifecycle`]. A server calls it when it starts serving.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (the triggers run as tasks).
    #[must_use]
    pub fn start(mut self) -> Lifecycle {
        #[cfg(unix)]
        let systemd = if self.systemd {
            match crate::systemd::Notifier::from_env() {
                Ok(notifier) => notifier.map(Arc::new),
                Err(error) => {
                    tracing::warn!(%error, "cannot talk to systemd; not notifying it");
                    None
                }
            }
        } else {
            None
        };
        let hangups = self.signals.as_mut().and_then(Signals::take_hangups);
        let parts = Parts {
            health: self.health.clone(),
            token: self.token.clone(),
            tasks: self.tasks.clone(),
            drain_delay: self.drain_delay,
            drain_timeout: self.drain_timeout,
            report: Report {
                gauges: Some(PhaseGauges::resolve()),
                on_phase: self.on_phase.take(),
                on_progress: self.on_progress.take(),
                #[cfg(unix)]
                systemd,
                #[cfg(unix)]
                stopping_sent: std::sync::atomic::AtomicBool::new(false),
                #[cfg(unix)]
                left_systemd: std::sync::atomic::AtomicBool::new(false),
            },
            hangups_caught: hangups.is_some(),
        };
        let lifecycle = Lifecycle::from_parts(parts);
        let mut triggers = std::mem::take(&mut self.triggers);
        let mut forces = std::mem::take(&mut self.forces);
        let parts = self.into_parts();
        triggers.push(parts.trigger);
        forces.push(parts.force);
        for trigger in triggers {
            let weak = lifecycle.downgrade();
            lifecycle.keep(tokio::spawn(async move {
                trigger.await;
                if let Some(lifecycle) = Lifecycle::upgrade(&weak) {
                    lifecycle.shut_down();
                }
            }));
        }
        for force in forces {
            let weak = lifecycle.downgrade();
            lifecycle.keep(tokio::spawn(async move {
                force.await;
                if let Some(lifecycle) = Lifecycle::upgrade(&weak) {
                    lifecycle.force();
                }
            }));
        }
        if let Some(mut hangups) = hangups {
            let weak = lifecycle.downgrade();
            lifecycle.keep(tokio::spawn(async move {
                while hangups.recv().await {
                    match Lifecycle::upgrade(&weak) {
                        Some(lifecycle) => lifecycle.reload().await,
                        None => return,
                    }
                }
            }));
        }
        lifecycle
    }

    /// Takes it apart for the server that runs it.
    #[must_use]
    pub fn into_parts(self) -> ShutdownParts {
        let (trigger, force): (Trigger, Trigger) = {
            let handle = self.handle;
            match self.signals {
                Some(signals) => {
                    let (first, second) = signals.into_triggers();
                    let shutdown = handle.shutdown.clone();
                    let force = handle.force.clone();
                    (
                        Box::pin(async move {
                            tokio::select! {
                                () = first => {}
                                () = shutdown.cancelled() => {}
                            }
                        }),
                        Box::pin(async move {
                            tokio::select! {
                                () = second => {}
                                () = force.cancelled() => {}
                            }
                        }),
                    )
                }
                None => (
                    Box::pin(handle.shutdown.cancelled_owned()),
                    Box::pin(handle.force.cancelled_owned()),
                ),
            }
        };
        ShutdownParts {
            trigger,
            force,
            drain_delay: self.drain_delay,
            drain_timeout: self.drain_timeout,
            health: self.health,
            token: self.token,
            tasks: self.tasks,
        }
    }
}

/// What a server needs to run a [`Shutdown`]; see [`Shutdown::into_parts`].
#[non_exhaustive]
pub struct ShutdownParts {
    /// Completes when the shutdown should begin.
    pub trigger: Trigger,
    /// Completes when the drain should be cut short. Poll it from the start: with signals it
    /// also does the listening for `trigger`.
    pub force: Trigger,
    /// The drain delay.
    pub drain_delay: Duration,
    /// The drain deadline.
    pub drain_timeout: Duration,
    /// Readiness and liveness to report.
    pub health: Health,
    /// To cancel at the first moment of the shutdown.
    pub token: CancellationToken,
    /// To wait for during the drain.
    pub tasks: TaskTracker,
}

impl fmt::Debug for ShutdownParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownParts")
            .field("drain_delay", &self.drain_delay)
            .field("drain_timeout", &self.drain_timeout)
            .field("health", &self.health)
            .finish_non_exhaustive()
    }
}

/// Starts or forces a [`Shutdown`] from code (an admin endpoint, a test, a fatal error).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    shutdown: CancellationToken,
    force: CancellationToken,
}

impl ShutdownHandle {
    /// Starts the graceful shutdown.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Cuts the drain short: remaining connections close at once.
    pub fn force(&self) {
        self.force.cancel();
    }
}
