//! Zero-downtime upgrades: on SIGUSR2 (or [`UpgradeHandle::upgrade`]) the server starts the
//! new executable with its listening sockets, waits until the new process reports ready, and
//! only then drains; if the new process exits or is not ready in time it is killed and this
//! one serves on as if nothing happened.
//!
//! ```text
//! old process                                 new process
//! SIGUSR2
//! spawn exec + args, sockets from fd 3 ──────▶ Builder::listen* take them by name
//!   (listener-0, listener-1, ..., admin,         (listener-N: the N-th listener added)
//!    portcullis-upgrade: the readiness channel)
//!                                              serving, /readyz ready
//! ◀──────────────────────────────── "ready\n"  on portcullis-upgrade
//! Drain: stop accepting, finish, exit
//! ```
//!
//! Both processes hold the same sockets from the spawn on; what the kernel queued in them is
//! accepted by whichever accepts next, so no connection is refused or reset. Rollback is the
//! default: nothing in the old process changes until the new one is ready.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use portcullis_listen::{Handoff, Listener, ListenerConfig, SocketActivation};
use portcullis_shutdown::{Lifecycle, ShutdownPhase};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::metrics::{
    LABEL_OUTCOME, UPGRADE_DRAINING_GENERATIONS, UPGRADE_GENERATION, UPGRADES_TOTAL,
};

/// Default for [`Upgrade::timeout`]: how long the new process has to report ready.
pub const DEFAULT_UPGRADE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default for [`Upgrade::max_draining`]: older generations still draining when a new
/// upgrade may start. Each holds its connections' memory until they end.
pub const DEFAULT_MAX_DRAINING: usize = 2;

/// The name of the readiness channel among the handed-over sockets.
const READY_SOCKET: &str = "portcullis-upgrade";
/// The name of the admin listener among them.
pub(crate) const ADMIN_SOCKET: &str = "admin";
/// This process's generation: 1 for the first, one more at each upgrade.
const GENERATION_VAR: &str = "PORTCULLIS_UPGRADE_GENERATION";
/// The process ids of the generations still draining when this one was started.
const DRAINING_VAR: &str = "PORTCULLIS_UPGRADE_DRAINING";
/// What the new process writes on the readiness channel.
const READY_LINE: &str = "ready";

/// The name of the `index`-th listener added to a builder among the handed-over sockets.
pub(crate) fn listener_name(index: usize) -> String {
    format!("listener-{index}")
}

/// How a server upgrades itself; give it to [`Builder::upgrade`](crate::Builder::upgrade).
#[derive(Clone)]
pub struct Upgrade {
    exec: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    timeout: Duration,
    max_draining: usize,
    on_signal: bool,
    trigger: Arc<Notify>,
    on_ready: Option<Arc<dyn Fn(u32) + Send + Sync>>,
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("exec", &self.exec)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("max_draining", &self.max_draining)
            .field("on_signal", &self.on_signal)
            .field("on_ready", &self.on_ready.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Upgrade {
    fn default() -> Self {
        Self::new()
    }
}

impl Upgrade {
    /// Upgrades to this process's own executable with its own arguments, on SIGUSR2.
    #[must_use]
    pub fn new() -> Self {
        Self {
            exec: None,
            args: None,
            timeout: DEFAULT_UPGRADE_TIMEOUT,
            max_draining: DEFAULT_MAX_DRAINING,
            on_signal: true,
            trigger: Arc::new(Notify::new()),
            on_ready: None,
        }
    }

    /// The executable to start. Default: this process's own (the path it was started from,
    /// so a new binary installed at that path is the one started).
    #[must_use]
    pub fn exec(mut self, path: impl Into<PathBuf>) -> Self {
        self.exec = Some(path.into());
        self
    }

    /// Its arguments. Default: this process's own.
    #[must_use]
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<OsString>>) -> Self {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// How long the new process has to report ready before it is killed. Default
    /// [`DEFAULT_UPGRADE_TIMEOUT`].
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many older generations may still be draining when an upgrade starts; one more
    /// is refused (and counted). Default [`DEFAULT_MAX_DRAINING`].
    #[must_use]
    pub fn max_draining(mut self, max: usize) -> Self {
        self.max_draining = max;
        self
    }

    /// Whether SIGUSR2 starts an upgrade. Default: yes.
    #[must_use]
    pub fn on_signal(mut self, enabled: bool) -> Self {
        self.on_signal = enabled;
        self
    }

    /// Runs `hook` with the new process's id once it reported ready, before this process
    /// drains (to tell a supervisor or a script which process serves now).
    #[must_use]
    pub fn on_ready(mut self, hook: impl Fn(u32) + Send + Sync + 'static) -> Self {
        self.on_ready = Some(Arc::new(hook));
        self
    }

    /// A handle that starts an upgrade, for a trigger of the application's own (an admin
    /// endpoint, a deploy agent).
    #[must_use]
    pub fn handle(&self) -> UpgradeHandle {
        UpgradeHandle(Arc::clone(&self.trigger))
    }
}

/// Starts an upgrade of the server whose [`Upgrade`] it came from.
#[derive(Clone, Debug)]
pub struct UpgradeHandle(Arc<Notify>);

impl UpgradeHandle {
    /// Starts an upgrade (one at a time: a request while one runs is dropped).
    pub fn upgrade(&self) {
        self.0.notify_one();
    }
}

/// The sockets a previous generation handed to this process, taken by the builder.
pub(crate) struct Inherited {
    sockets: SocketActivation,
    /// The readiness channel back to the previous generation.
    ready: Option<OwnedFd>,
}

impl Inherited {
    /// The handed-over sockets, when this process was started by an upgrade.
    pub(crate) fn from_env() -> Result<Option<Self>, Error> {
        let sockets = match SocketActivation::from_upgrade_env() {
            Ok(sockets) => sockets,
            // Another builder of this process took them: it serves them.
            Err(portcullis_listen::ActivationError::AlreadyTaken) => None,
            Err(error) => return Err(Error::Activation(error)),
        };
        let Some(mut sockets) = sockets else {
            return Ok(None);
        };
        let ready = sockets.take_socket(READY_SOCKET);
        Ok(Some(Self { sockets, ready }))
    }

    /// The listeners handed over for the `count` listeners from `first` on, bound to
    /// `addr` (port 0: any port), or `None` when they are not all there: the caller binds.
    pub(crate) fn take_listeners(
        &mut self,
        first: usize,
        count: usize,
        addr: std::net::SocketAddr,
        config: &ListenerConfig,
    ) -> Result<Option<Vec<Listener>>, Error> {
        let names: Vec<String> = (first..first + count).map(listener_name).collect();
        let all_there = names
            .iter()
            .all(|name| self.sockets.names().any(|n| n == name));
        if !all_there {
            return Ok(None);
        }
        let mut taken = Vec::with_capacity(count);
        for name in &names {
            taken.extend(self.sockets.take(name, config).map_err(Error::Bind)?);
        }
        let matches = taken.iter().all(|listener| {
            listener.local_addr().as_inet().is_some_and(|local| {
                local.ip() == addr.ip() && (addr.port() == 0 || local.port() == addr.port())
            })
        });
        if !matches {
            tracing::warn!(
                %addr,
                "upgrade: the sockets handed over as {names:?} are not on {addr}; binding it afresh"
            );
            return Ok(None);
        }
        Ok(Some(taken))
    }

    /// The admin listener handed over, if any.
    pub(crate) fn take_admin(&mut self) -> Result<Option<Listener>, Error> {
        let mut taken = self
            .sockets
            .take(ADMIN_SOCKET, &ListenerConfig::default())
            .map_err(Error::Bind)?;
        Ok(taken.pop())
    }

    /// The readiness channel, once.
    pub(crate) fn take_ready(&mut self) -> Option<OwnedFd> {
        self.ready.take()
    }
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited")
            .field("sockets", &self.sockets.names().collect::<Vec<_>>())
            .field("ready", &self.ready.is_some())
            .finish()
    }
}

/// This process's generation, from the environment its predecessor set (1 without one).
fn generation() -> u64 {
    std::env::var(GENERATION_VAR)
        .ok()
        .and_then(|g| g.parse().ok())
        .filter(|&g| g >= 1)
        .unwrap_or(1)
}

/// The generations still draining when this process was started (their process ids).
fn draining_at_start() -> Vec<u32> {
    std::env::var(DRAINING_VAR)
        .ok()
        .map(|list| list.split(',').filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Whether process `pid` still runs (exists and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_ascii_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// The executable to start by default: the path this one was started from. On Linux
/// `current_exe` names a replaced binary `PATH (deleted)`; the new binary is at `PATH`.
fn own_exec() -> std::io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => PathBuf::from(path),
        None => exe,
    })
}

/// What one upgrade came to, as counted in `portcullis_upgrades_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The new process reported ready: this one drains.
    Ready,
    /// The new process exited before it was ready.
    Exited,
    /// The new process was not ready in time, and was killed.
    Timeout,
    /// Too many older generations are still draining.
    Refused,
    /// The new process could not be started.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Ready,
        Outcome::Exited,
        Outcome::Timeout,
        Outcome::Refused,
        Outcome::Failed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ready => "ready",
            Outcome::Exited => "exited",
            Outcome::Timeout => "timeout",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// The old process's side: the sockets to hand over and the upgrade task.
pub(crate) struct Upgrader {
    config: Upgrade,
    handoff: Handoff,
    generation: u64,
    draining: Vec<u32>,
    signals: Option<tokio::signal::unix::Signal>,
}

impl Upgrader {
    /// Lists the sockets to hand over (`listeners` in order, then the admin listener) and
    /// installs the SIGUSR2 handler. Call within the runtime.
    pub(crate) fn new(
        config: Upgrade,
        listeners: &[Listener],
        admin: Option<&Listener>,
    ) -> Result<Self, Error> {
        let mut handoff = Handoff::new();
        for (index, listener) in listeners.iter().enumerate() {
            handoff
                .socket(listener_name(index), listener)
                .map_err(Error::Upgrade)?;
        }
        if let Some(admin) = admin {
            handoff
                .socket(ADMIN_SOCKET, admin)
                .map_err(Error::Upgrade)?;
        }
        let signals = if config.on_signal {
            let kind = tokio::signal::unix::SignalKind::user_defined2();
            Some(tokio::signal::unix::signal(kind).map_err(Error::Upgrade)?)
        } else {
            None
        };
        let generation = generation();
        metrics::gauge!(UPGRADE_GENERATION).set(generation as f64);
        let draining = draining_at_start();
        metrics::gauge!(UPGRADE_DRAINING_GENERATIONS)
            .set(draining.iter().filter(|&&pid| alive(pid)).count() as f64);
        for outcome in Outcome::ALL {
            let _ = metrics::counter!(UPGRADES_TOTAL, LABEL_OUTCOME => outcome.as_str());
        }
        Ok(Self {
            config,
            handoff,
            generation,
            draining,
            signals,
        })
    }

    /// Runs upgrades as they are asked for, until `stop`; after one succeeded, moves
    /// `lifecycle` to its drain and cancels `handed_over`.
    pub(crate) async fn run(
        mut self,
        lifecycle: Lifecycle,
        handed_over: CancellationToken,
        stop: CancellationToken,
    ) {
        loop {
            let trigger = Arc::clone(&self.config.trigger);
            let signals = self.signals.as_mut();
            tokio::select! {
                () = stop.cancelled() => return,
                // Shutting down: drop the duplicates of the sockets now, or they would keep
                // each listener open (queueing connections nobody accepts) after the drain
                // closed it.
                () = lifecycle.token().cancelled() => return,
                () = trigger.notified() => {}
                Some(()) = async move {
                    match signals {
                        Some(signals) => signals.recv().await,
                        None => std::future::pending().await,
                    }
                } => {}
            }
            if lifecycle.phase() != ShutdownPhase::Running {
                tracing::warn!("upgrade: asked for while shutting down; ignored");
                continue;
            }
            // A shutdown or the server's end cancels the attempt: its child is killed (the
            // guard in `await_ready`) and the duplicates of the sockets are closed.
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                () = lifecycle.token().cancelled() => return,
                outcome = self.attempt(&lifecycle) => outcome,
            };
            metrics::counter!(UPGRADES_TOTAL, LABEL_OUTCOME => outcome.as_str()).increment(1);
            // One attempt per request: triggers that came during this one are dropped.
            while self.config.trigger.notified().now_or_never().is_some() {}
            if let Some(signals) = self.signals.as_mut() {
                while signals.recv().now_or_never().flatten().is_some() {}
            }
            if outcome == Outcome::Ready {
                // The new process is systemd's main one now (MAINPID= was sent).
                lifecycle.leave_systemd();
                handed_over.cancel();
                // The sockets are served by the new process: no drain delay (nothing has to
                // take this one out of rotation), straight to the drain.
                lifecycle.advance(ShutdownPhase::Drain);
                return;
            }
        }
    }

    /// One upgrade: start the new process and wait for its readiness (or its end).
    async fn attempt(&mut self, lifecycle: &Lifecycle) -> Outcome {
        self.draining.retain(|&pid| alive(pid));
        metrics::gauge!(UPGRADE_DRAINING_GENERATIONS).set(self.draining.len() as f64);
        if self.draining.len() >= self.config.max_draining {
            tracing::error!(
                draining = ?self.draining,
                max = self.config.max_draining,
                "upgrade refused: {} older generations are still draining",
                self.draining.len()
            );
            return Outcome::Refused;
        }
        match self.spawn() {
            Ok((child, channel)) => self.await_ready(child, channel, lifecycle).await,
            Err(error) => {
                tracing::error!(%error, "upgrade failed: cannot start the new process");
                Outcome::Failed
            }
        }
    }

    fn spawn(&self) -> std::io::Result<(tokio::process::Child, tokio::net::UnixStream)> {
        let exec = match &self.config.exec {
            Some(exec) => exec.clone(),
            None => own_exec()?,
        };
        let args = self
            .config
            .args
            .clone()
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let ours = tokio::net::UnixStream::from_std(ours)?;
        let mut handoff = self.handoff.try_clone()?;
        handoff.socket(READY_SOCKET, theirs.as_fd())?;
        let mut draining = self.draining.clone();
        draining.push(std::process::id());
        let mut command = std::process::Command::new(&exec);
        command
            .args(&args)
            .stdin(std::process::Stdio::null())
            // systemd's watchdog names this process; the new one pings once it is the
            // main process (it keeps WATCHDOG_USEC).
            .env_remove("WATCHDOG_PID")
            .env(GENERATION_VAR, (self.generation + 1).to_string())
            .env(
                DRAINING_VAR,
                draining
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        let prepared = handoff.prepare(&mut command)?;
        let child = tokio::process::Command::from(command)
            .spawn()
            .map_err(|error| {
                std::io::Error::new(error.kind(), format!("{}: {error}", exec.display()))
            })?;
        drop((prepared, handoff, theirs));
        Ok((child, ours))
    }

    async fn await_ready(
        &mut self,
        child: tokio::process::Child,
        channel: tokio::net::UnixStream,
        lifecycle: &Lifecycle,
    ) -> Outcome {
        let pid = child.id().unwrap_or_default();
        // Killed on every way out but readiness, cancellation included.
        let mut child = KillOnDrop(Some(child));
        lifecycle.notify_systemd(&format!("STATUS=upgrading: new process {pid} started"));
        tracing::info!(
            pid,
            generation = self.generation + 1,
            "upgrade: new process started"
        );
        let mut lines = BufReader::new(channel).take(256).lines();
        let ready = async {
            // EOF or anything else: the process is exiting (or broke the protocol).
            matches!(lines.next_line().await, Ok(Some(line)) if line == READY_LINE)
        };
        let outcome = tokio::select! {
            ready = ready => if ready { Outcome::Ready } else { Outcome::Exited },
            _ = child.wait() => Outcome::Exited,
            () = tokio::time::sleep(self.config.timeout) => Outcome::Timeout,
        };
        if outcome == Outcome::Ready {
            tracing::info!(
                pid,
                generation = self.generation + 1,
                "upgrade: the new process is ready; draining"
            );
            // Decided: the new process is systemd's main one from now on (NotifyAccess=main
            // is enough, this process being the main one still).
            lifecycle.notify_systemd(&format!("MAINPID={pid}"));
            if let Some(hook) = &self.config.on_ready {
                hook(pid);
            }
            // Reaped by tokio when it exits (it outlives this process normally).
            child.keep();
            return outcome;
        }
        let status = child.kill_and_wait().await;
        lifecycle.notify_systemd(&format!(
            "STATUS=serving; the upgrade to pid {pid} failed ({})",
            outcome.as_str()
        ));
        tracing::error!(
            pid,
            ?status,
            timeout = ?self.config.timeout,
            "upgrade failed: the new process {}; it is gone and this process serves on",
            if outcome == Outcome::Timeout { "was not ready in time" } else { "exited before it was ready" }
        );
        outcome
    }
}

/// The new process of an attempt, killed (and reaped by tokio) when dropped unless kept.
struct KillOnDrop(Option<tokio::process::Child>);

impl KillOnDrop {
    async fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self.0.as_mut() {
            Some(child) => child.wait().await,
            None => std::future::pending().await,
        }
    }

    /// Kills it and waits for its end.
    async fn kill_and_wait(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        let _ = child.start_kill();
        child.wait().await.ok()
    }

    /// Lets it run on: it serves now.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            // tokio reaps a dropped child once it has exited.
            let _ = child.start_kill();
        }
    }
}

/// The new process's side: reports ready on the channel once `ready` holds (polled every
/// 20 ms), until `stop`.
pub(crate) async fn report_ready(
    channel: OwnedFd,
    ready: impl Fn() -> bool,
    stop: CancellationToken,
) {
    let channel = std::os::unix::net::UnixStream::from(channel);
    let channel = channel
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(channel));
    let mut channel = match channel {
        Ok(channel) => channel,
        Err(error) => {
            tracing::error!(%error, "upgrade: cannot use the readiness channel; the previous generation will time out");
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if ready() {
            // Under systemd: ready; the previous generation makes this the main process
            // (MAINPID=) once it reads the line below.
            match portcullis_shutdown::systemd::Notifier::from_env() {
                Ok(Some(notifier)) => {
                    let state = format!(
                        "READY=1\nSTATUS=serving (upgraded from pid {})",
                        std::os::unix::process::parent_id()
                    );
                    if let Err(error) = notifier.send(&state) {
                        tracing::warn!(%error, "upgrade: cannot tell systemd the new main pid");
                    }
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "upgrade: NOTIFY_SOCKET is unusable"),
            }
            let line = format!("{READY_LINE}\n");
            if let Err(error) = channel.write_all(line.as_bytes()).await {
                tracing::error!(%error, "upgrade: cannot report ready to the previous generation");
            }
            return;
        }
    }
}
