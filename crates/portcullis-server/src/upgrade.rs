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
//! "commit\n" ─────────────────────────────────▶
//! Drain: stop accepting, finish, exit
//! ```
//!
//! A process the old one did not start (a new container sharing a volume with it) takes the
//! sockets over the [upgrade socket](Upgrade::socket) instead: it connects, says hello, and
//! gets the same sockets in one `SCM_RIGHTS` message; the readiness channel is that
//! connection. The old process cannot kill a process it did not start: when it gives up on
//! one (not ready in time) it says `rollback`, and the new process shuts down.
//!
//! Both processes hold the same sockets from the hand-off on; what the kernel queued in them
//! is accepted by whichever accepts next, so no connection is refused or reset. Rollback is
//! the default: nothing in the old process changes until the new one is ready.
//!
//! Each generation keeps its end of the readiness channel open until it has drained: the new
//! process counts the older generations still draining by the channels still open (its own
//! and those its predecessor passed on as `portcullis-draining`), in any PID namespace.

use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
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

/// How long a process that connected to the upgrade socket has to say hello, and the old
/// process to answer with the sockets.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the generations still draining are counted again.
const DRAINING_RECOUNT: Duration = Duration::from_secs(1);

/// The name of the readiness channel among the handed-over sockets.
const READY_SOCKET: &str = "portcullis-upgrade";
/// The name of the channels to older generations still draining.
const DRAINING_SOCKET: &str = "portcullis-draining";
/// The name of the upgrade socket's listener.
const UPGRADE_LISTENER: &str = "portcullis-upgrade-socket";
/// The name of the admin listener among them.
pub(crate) const ADMIN_SOCKET: &str = "admin";
/// This process's generation: 1 for the first, one more at each upgrade.
const GENERATION_VAR: &str = "PORTCULLIS_UPGRADE_GENERATION";
/// What a process connecting to the upgrade socket says first.
const HELLO_LINE: &str = "portcullis-upgrade 1";
/// What the new process writes on the readiness channel.
const READY_LINE: &str = "ready";
/// The old process's answer: it drains.
const COMMIT_LINE: &str = "commit";
/// The old process's answer: it serves on; the new process must stop.
const ROLLBACK_LINE: &str = "rollback";

/// The name of the `index`-th listener added to a builder among the handed-over sockets.
pub(crate) fn listener_name(index: usize) -> String {
    format!("listener-{index}")
}

/// Whether `name` is one this module gives a socket (so that systemd's descriptor store
/// holds a previous generation's sockets, not a socket unit's).
fn is_handoff_name(name: &str) -> bool {
    name == ADMIN_SOCKET
        || name == UPGRADE_LISTENER
        || name
            .strip_prefix("listener-")
            .is_some_and(|n| n.parse::<usize>().is_ok())
}

/// How a server upgrades itself; give it to [`Builder::upgrade`](crate::Builder::upgrade).
#[derive(Clone)]
pub struct Upgrade {
    exec: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    timeout: Duration,
    max_draining: usize,
    on_signal: bool,
    socket: Option<PathBuf>,
    trigger: Arc<Notify>,
    on_ready: Option<Arc<dyn Fn(u32) + Send + Sync>>,
    on_failure: Option<FailureHook>,
}

/// What [`Upgrade::on_failure`] runs.
type FailureHook = Arc<dyn Fn(&str) + Send + Sync>;

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgrade")
            .field("exec", &self.exec)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .field("max_draining", &self.max_draining)
            .field("on_signal", &self.on_signal)
            .field("socket", &self.socket)
            .field("on_ready", &self.on_ready.is_some())
            .field("on_failure", &self.on_failure.is_some())
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
            socket: None,
            trigger: Arc::new(Notify::new()),
            on_ready: None,
            on_failure: None,
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

    /// Serves hand-offs on the Unix socket at `path` (created mode 0600; a socket file no
    /// process answers is replaced), and takes over from the process serving it: a server
    /// started with the same `path` while another serves there asks that one for its
    /// sockets, exactly as a process started by an upgrade gets them, and the other one
    /// drains once this one is ready. This is the transport for a process the old one did
    /// not start (a new container sharing the socket's volume); only a process of the same
    /// user (or root) is answered. The socket itself is handed over too, so the path is
    /// never unbound. Default: none.
    ///
    /// Give it to the builder before its listeners: the first of them asks for the sockets.
    #[must_use]
    pub fn socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.socket = Some(path.into());
        self
    }

    /// The upgrade socket, if any.
    #[must_use]
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// Runs `hook` with a one-line account of each failed upgrade (the new process exited,
    /// was not ready in time, could not be started, or was refused) instead of logging it
    /// at ERROR: an executable prints it its own way.
    #[must_use]
    pub fn on_failure(mut self, hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(Arc::new(hook));
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
    /// The generation the previous one gave this process over the upgrade socket.
    generation: Option<u64>,
    /// The previous generation's process id, as this process sees it (0: not visible).
    previous: u32,
    /// Whether they came from systemd's descriptor store.
    from_fd_store: bool,
}

/// What a process learned from its previous generation, for its own upgrades.
#[derive(Default)]
pub(crate) struct Past {
    generation: Option<u64>,
    /// Channels to the older generations, open while they drain.
    draining: Vec<OwnedFd>,
    /// The upgrade socket's listener, handed over.
    socket: Option<OwnedFd>,
    /// Names systemd's descriptor store holds that this process did not take.
    stale: Vec<String>,
}

impl Inherited {
    /// The sockets a previous generation left this process, if any: handed over when it
    /// started this process (its environment), kept in systemd's descriptor store across a
    /// restart (`LISTEN_FDS` with this module's names), or asked for on the upgrade socket
    /// `socket`. The second value holds systemd's sockets when they are a socket unit's.
    /// Without `upgrades` (the builder has none), only a hand-off addressed to this process
    /// is taken; systemd's sockets are left to
    /// [`listen_inherited`](crate::Builder::listen_inherited).
    pub(crate) fn find(
        upgrades: bool,
        socket: Option<&Path>,
    ) -> Result<(Option<Self>, Option<SocketActivation>), Error> {
        use portcullis_listen::ActivationError::AlreadyTaken;
        match SocketActivation::from_upgrade_env() {
            Ok(Some(mut sockets)) => {
                let ready = sockets.take_socket(READY_SOCKET);
                let inherited = Self {
                    sockets,
                    ready,
                    generation: None,
                    previous: std::os::unix::process::parent_id(),
                    from_fd_store: false,
                };
                return Ok((Some(inherited), None));
            }
            Ok(None) => {}
            // Another builder of this process took them: it serves them.
            Err(AlreadyTaken) => return Ok((None, None)),
            Err(error) => return Err(Error::Activation(error)),
        }
        if !upgrades {
            return Ok((None, None));
        }
        match SocketActivation::from_env() {
            Ok(Some(sockets)) if sockets.names().all(is_handoff_name) => {
                let inherited = Self {
                    sockets,
                    ready: None,
                    generation: None,
                    previous: 0,
                    from_fd_store: true,
                };
                return Ok((Some(inherited), None));
            }
            Ok(Some(sockets)) => return Ok((None, Some(sockets))),
            Ok(None) => {}
            Err(AlreadyTaken) => return Ok((None, None)),
            Err(error) => return Err(Error::Activation(error)),
        }
        match socket {
            Some(path) => Ok((Self::request(path)?, None)),
            None => Ok((None, None)),
        }
    }

    /// Asks the process serving the upgrade socket at `path` for its sockets; `None` when
    /// no process serves there.
    fn request(path: &Path) -> Result<Option<Self>, Error> {
        let error = |error: std::io::Error| {
            Error::Upgrade(std::io::Error::new(
                error.kind(),
                format!("upgrade socket {}: {error}", path.display()),
            ))
        };
        let stream = match connect_at_once(path) {
            Ok(stream) => stream,
            // Nobody serves there: this is the first generation.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(error(e)),
        };
        // Only a process of this user (or root) may hand this one its sockets: another
        // could keep copies and accept from them.
        let peer = rustix::net::sockopt::socket_peercred(&stream).map_err(|e| error(e.into()))?;
        let own = rustix::process::geteuid();
        if peer.uid != own && !peer.uid.is_root() {
            return Err(error(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "the process serving it runs as uid {}, not as this process's {}",
                    peer.uid.as_raw(),
                    own.as_raw()
                ),
            )));
        }
        stream
            .set_read_timeout(Some(HANDSHAKE_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
            .and_then(|()| (&stream).write_all(format!("{HELLO_LINE}\n").as_bytes()))
            .map_err(error)?;
        let (mut sockets, note) = SocketActivation::receive(&stream).map_err(error)?;
        if let Some(reason) = note.strip_prefix("refused: ") {
            return Err(error(std::io::Error::other(format!(
                "the process serving it refused to hand its sockets over: {}",
                reason.trim_end()
            ))));
        }
        let generation = note
            .lines()
            .find_map(|line| line.strip_prefix("generation="))
            .and_then(|g| g.parse().ok());
        stream
            .set_read_timeout(None)
            .and_then(|()| stream.set_write_timeout(None))
            .map_err(error)?;
        // Not a readiness channel of its own: the connection is.
        drop(sockets.take_socket(READY_SOCKET));
        tracing::info!(path = %path.display(), ?generation, "upgrade: took the sockets over from the process serving the upgrade socket");
        Ok(Some(Self {
            sockets,
            ready: Some(OwnedFd::from(stream)),
            generation,
            previous: u32::try_from(peer.pid.as_raw_nonzero().get()).unwrap_or(0),
            from_fd_store: false,
        }))
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
    #[cfg(feature = "prometheus")]
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

    /// The previous generation's process id as this process sees it (0: not visible, or
    /// none).
    pub(crate) fn previous(&self) -> u32 {
        self.previous
    }

    /// What the previous generation passed on for this process's own upgrades: the
    /// channels to the generations still draining (the previous one's included, by a
    /// duplicate of the readiness channel), the upgrade socket, the generation; and the
    /// names of the descriptor store's sockets no listener took. Call once the listeners
    /// took theirs.
    pub(crate) fn take_past(&mut self) -> Past {
        let mut draining = Vec::new();
        while let Some(channel) = self.sockets.take_socket(DRAINING_SOCKET) {
            draining.push(channel);
        }
        if let Some(ready) = &self.ready {
            match ready.try_clone() {
                Ok(channel) => draining.push(channel),
                Err(error) => {
                    tracing::warn!(%error, "upgrade: cannot watch the previous generation's drain")
                }
            }
        }
        let socket = self.sockets.take_socket(UPGRADE_LISTENER);
        let stale = if self.from_fd_store {
            self.sockets.names().map(str::to_owned).collect()
        } else {
            Vec::new()
        };
        Past {
            generation: self.generation,
            draining,
            socket,
            stale,
        }
    }
}

impl std::fmt::Debug for Inherited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inherited")
            .field("sockets", &self.sockets.names().collect::<Vec<_>>())
            .field("ready", &self.ready.is_some())
            .field("generation", &self.generation)
            .field("from_fd_store", &self.from_fd_store)
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

/// Whether the peer of `channel` still has it open (a generation still draining): the
/// peer's close shows as `POLLRDHUP` or `POLLHUP`, unread data or not.
fn still_open(channel: &OwnedFd) -> bool {
    use rustix::event::{PollFd, PollFlags};
    let mut fds = [PollFd::new(channel, PollFlags::RDHUP)];
    match rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())) {
        Ok(_) => !fds[0]
            .revents()
            .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL),
        Err(_) => false,
    }
}

/// Connects to the Unix socket at `path` without waiting: a full backlog (a process that
/// does not accept) is an error, not a hang.
fn connect_at_once(path: &Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    match socket.connect(&socket2::SockAddr::unix(path)?) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "its backlog is full: the process serving it does not accept",
            ));
        }
        Err(e) => return Err(e),
    }
    socket.set_nonblocking(false)?;
    Ok(socket.into())
}

/// Binds the upgrade socket at `path`, mode 0600: a socket file that nobody answers (its
/// process ended) is replaced; one a process answers is an error.
fn bind_upgrade_socket(path: &Path) -> Result<std::os::unix::net::UnixListener, Error> {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::{UnixListener, UnixStream};
    let error = |what: &str, error: std::io::Error| {
        Error::Upgrade(std::io::Error::new(
            error.kind(),
            format!("upgrade socket {}: {what}: {error}", path.display()),
        ))
    };
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match UnixStream::connect(path) {
            // Only a socket is replaced (connecting to another file is refused too).
            Err(refused)
                if refused.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::fs::symlink_metadata(path).is_ok_and(|m| {
                        std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())
                    }) =>
            {
                std::fs::remove_file(path)
                    .map_err(|e| error("cannot remove the stale socket", e))?;
                UnixListener::bind(path).map_err(|e| error("cannot bind", e))?
            }
            Ok(_) => {
                return Err(error(
                    "cannot bind",
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process serves it (and did not hand it over)",
                    ),
                ));
            }
            Err(_) => return Err(error("cannot bind", e)),
        },
        Err(e) => return Err(error("cannot bind", e)),
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| error("cannot make it private", e))?;
    Ok(listener)
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

/// How an upgrade was asked for.
enum Request {
    /// SIGUSR2 or the handle: start the new executable.
    Exec,
    /// A process connected to the upgrade socket and said hello.
    Socket(tokio::net::UnixStream),
}

/// The old process's side: the sockets to hand over and the upgrade task.
pub(crate) struct Upgrader {
    config: Upgrade,
    handoff: Handoff,
    generation: u64,
    /// Channels to the older generations: open while they drain.
    draining: Vec<OwnedFd>,
    signals: Option<tokio::signal::unix::Signal>,
    socket: Option<tokio::net::UnixListener>,
    /// Names systemd's descriptor store holds that no listener took.
    stale: Vec<String>,
}

impl Upgrader {
    /// Lists the sockets to hand over (`listeners` in order, then the admin listener and
    /// the upgrade socket), binds the upgrade socket unless `past` holds it (at the
    /// configured path), and installs the SIGUSR2 handler. Call within the runtime.
    pub(crate) fn new(
        config: Upgrade,
        listeners: &[Listener],
        admin: Option<&Listener>,
        past: Past,
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
        let socket = match (&config.socket, past.socket) {
            (Some(path), Some(inherited)) => {
                let listener = std::os::unix::net::UnixListener::from(inherited);
                if serves_path(&listener, path) {
                    Some(listener)
                } else {
                    tracing::warn!(
                        path = %path.display(),
                        "upgrade: the upgrade socket handed over is not the one at the path (moved, removed, or another path configured); binding the path afresh"
                    );
                    drop(listener);
                    Some(bind_upgrade_socket(path)?)
                }
            }
            (Some(path), None) => Some(bind_upgrade_socket(path)?),
            (None, _) => None,
        };
        let socket = match socket {
            Some(listener) => {
                handoff
                    .socket(UPGRADE_LISTENER, &listener)
                    .map_err(Error::Upgrade)?;
                listener.set_nonblocking(true).map_err(Error::Upgrade)?;
                Some(tokio::net::UnixListener::from_std(listener).map_err(Error::Upgrade)?)
            }
            None => None,
        };
        let signals = if config.on_signal {
            let kind = tokio::signal::unix::SignalKind::user_defined2();
            Some(tokio::signal::unix::signal(kind).map_err(Error::Upgrade)?)
        } else {
            None
        };
        let generation = past.generation.unwrap_or_else(generation);
        metrics::gauge!(UPGRADE_GENERATION).set(generation as f64);
        let mut draining = past.draining;
        draining.retain(still_open);
        metrics::gauge!(UPGRADE_DRAINING_GENERATIONS).set(draining.len() as f64);
        for outcome in Outcome::ALL {
            let _ = metrics::counter!(UPGRADES_TOTAL, LABEL_OUTCOME => outcome.as_str());
        }
        Ok(Self {
            config,
            handoff,
            generation,
            draining,
            signals,
            socket,
            stale: past.stale,
        })
    }

    /// Runs upgrades as they are asked for, until `stop`; after one succeeded, moves
    /// `lifecycle` to its drain, cancels `handed_over`, and keeps the readiness channel
    /// open until `stop` (its close tells the newer generations this one is gone).
    ///
    /// Until `confirmed` (the previous generation answered `commit`, or there is none),
    /// this process is on probation: it may still be rolled back, so it refuses upgrades
    /// and stores nothing in systemd's descriptor store.
    pub(crate) async fn run(
        mut self,
        lifecycle: Lifecycle,
        confirmed: CancellationToken,
        handed_over: CancellationToken,
        stop: CancellationToken,
    ) {
        // Hellos are read by a task of their own, so that a slow or silent peer never holds
        // this loop, and a request during an attempt is refused at once.
        let (sender, mut requests) = tokio::sync::mpsc::channel(1);
        let _acceptor = self.socket.take().map(|socket| {
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(accept_hellos(socket, sender)))
        });
        // The draining gauge follows the older generations' exits.
        let mut recount = tokio::time::interval(DRAINING_RECOUNT);
        recount.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stored = false;
        loop {
            let trigger = Arc::clone(&self.config.trigger);
            let signals = self.signals.as_mut();
            let request = tokio::select! {
                () = stop.cancelled() => return,
                // Shutting down: drop the duplicates of the sockets now, or they would keep
                // each listener open (queueing connections nobody accepts) after the drain
                // closed it.
                () = lifecycle.token().cancelled() => return,
                () = confirmed.cancelled(), if !stored => {
                    stored = true;
                    store_in_systemd(&self.handoff, &self.stale);
                    continue;
                }
                _ = recount.tick(), if !self.draining.is_empty() => {
                    self.draining.retain(still_open);
                    metrics::gauge!(UPGRADE_DRAINING_GENERATIONS).set(self.draining.len() as f64);
                    continue;
                }
                () = trigger.notified() => Request::Exec,
                Some(()) = async move {
                    match signals {
                        Some(signals) => signals.recv().await,
                        None => std::future::pending().await,
                    }
                } => Request::Exec,
                Some(stream) = requests.recv() => Request::Socket(stream),
            };
            if lifecycle.phase() != ShutdownPhase::Running {
                tracing::warn!("upgrade: asked for while shutting down; ignored");
                if let Request::Socket(stream) = request {
                    refuse(&stream, "this process is shutting down").await;
                }
                continue;
            }
            if !confirmed.is_cancelled() {
                let reason = "this process is not yet confirmed by the generation before it";
                self.failed(&format!("upgrade refused: {reason}"));
                metrics::counter!(UPGRADES_TOTAL, LABEL_OUTCOME => Outcome::Refused.as_str())
                    .increment(1);
                if let Request::Socket(stream) = request {
                    refuse(&stream, reason).await;
                }
                continue;
            }
            let exec = matches!(request, Request::Exec);
            // A shutdown or the server's end cancels the attempt: its child is killed (the
            // guard in `await_ready`) and the duplicates of the sockets are closed.
            let (outcome, channel) = {
                let attempt = self.attempt(request, &lifecycle);
                tokio::pin!(attempt);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = lifecycle.token().cancelled() => return,
                        Some(stream) = requests.recv() => {
                            refuse(&stream, "another upgrade is in progress").await;
                        }
                        outcome = &mut attempt => break outcome,
                    }
                }
            };
            metrics::counter!(UPGRADES_TOTAL, LABEL_OUTCOME => outcome.as_str()).increment(1);
            // One attempt per request: triggers that came during this one are dropped.
            while self.config.trigger.notified().now_or_never().is_some() {}
            if let Some(signals) = self.signals.as_mut() {
                while signals.recv().now_or_never().flatten().is_some() {}
            }
            let Some(channel) = channel else {
                continue;
            };
            if exec {
                // The new process is systemd's main one now (MAINPID= was sent).
                lifecycle.leave_systemd();
            }
            handed_over.cancel();
            // The sockets are served by the new process: no drain delay (nothing has to
            // take this one out of rotation), straight to the drain.
            lifecycle.advance(ShutdownPhase::Drain);
            // The duplicates and the upgrade socket go now (each listener closes with its
            // drain); the channel stays open while this server drains.
            drop(self);
            drop(_acceptor);
            stop.cancelled().await;
            drop(channel);
            return;
        }
    }

    /// Reports a failed upgrade: through the hook, or at ERROR.
    fn failed(&self, message: &str) {
        match &self.config.on_failure {
            Some(hook) => hook(message),
            None => tracing::error!("{message}"),
        }
    }

    /// One upgrade: start the new process (or hand the sockets to the one that asked) and
    /// wait for its readiness (or its end). The channel when it is ready.
    async fn attempt(
        &mut self,
        request: Request,
        lifecycle: &Lifecycle,
    ) -> (Outcome, Option<tokio::net::UnixStream>) {
        self.draining.retain(still_open);
        metrics::gauge!(UPGRADE_DRAINING_GENERATIONS).set(self.draining.len() as f64);
        if self.draining.len() >= self.config.max_draining {
            let reason = format!(
                "{} older generations are still draining (at most {})",
                self.draining.len(),
                self.config.max_draining
            );
            self.failed(&format!("upgrade refused: {reason}"));
            if let Request::Socket(stream) = request {
                refuse(&stream, &reason).await;
            }
            return (Outcome::Refused, None);
        }
        match request {
            Request::Exec => match self.spawn() {
                Ok((child, channel)) => self.await_ready(Some(child), channel, lifecycle).await,
                Err(error) => {
                    self.failed(&format!(
                        "upgrade failed: cannot start the new process: {error}"
                    ));
                    (Outcome::Failed, None)
                }
            },
            Request::Socket(stream) => {
                let sent = match self.attempt_handoff() {
                    Ok(handoff) => {
                        let note = format!("generation={}\n", self.generation + 1);
                        handoff.send(&stream, &note).await
                    }
                    Err(error) => Err(error),
                };
                match sent {
                    Ok(()) => self.await_ready(None, stream, lifecycle).await,
                    Err(error) => {
                        self.failed(&format!(
                            "upgrade failed: cannot hand the sockets over the upgrade socket: {error}"
                        ));
                        (Outcome::Failed, None)
                    }
                }
            }
        }
    }

    /// The sockets of one attempt: the server's, and the channels to the generations still
    /// draining.
    fn attempt_handoff(&self) -> std::io::Result<Handoff> {
        let mut handoff = self.handoff.try_clone()?;
        for channel in &self.draining {
            handoff.socket(DRAINING_SOCKET, channel)?;
        }
        Ok(handoff)
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
        let mut handoff = self.attempt_handoff()?;
        handoff.socket(READY_SOCKET, theirs.as_fd())?;
        let mut command = std::process::Command::new(&exec);
        command
            .args(&args)
            .stdin(std::process::Stdio::null())
            // systemd's watchdog names this process; the new one pings once it is the
            // main process (it keeps WATCHDOG_USEC).
            .env_remove("WATCHDOG_PID")
            .env(GENERATION_VAR, (self.generation + 1).to_string());
        let prepared = handoff.prepare(&mut command)?;
        let child = tokio::process::Command::from(command)
            .spawn()
            .map_err(|error| {
                std::io::Error::new(error.kind(), format!("{}: {error}", exec.display()))
            })?;
        drop((prepared, handoff, theirs));
        Ok((child, ours))
    }

    /// Waits for the new process on `channel` (and for `child`'s end, when this process
    /// started it): `commit` once it is ready, `rollback` (and the child killed) otherwise.
    async fn await_ready(
        &mut self,
        child: Option<tokio::process::Child>,
        mut channel: tokio::net::UnixStream,
        lifecycle: &Lifecycle,
    ) -> (Outcome, Option<tokio::net::UnixStream>) {
        let peer = match &child {
            Some(child) => child.id(),
            None => channel
                .peer_cred()
                .ok()
                .and_then(|cred| cred.pid())
                .and_then(|pid| u32::try_from(pid).ok()),
        }
        .unwrap_or_default();
        let started = child.is_some();
        // Killed on every way out but readiness, cancellation included.
        let mut child = KillOnDrop(child);
        lifecycle.notify_systemd(&format!("STATUS=upgrading: new process {peer} started"));
        tracing::info!(
            pid = peer,
            generation = self.generation + 1,
            "upgrade: {}",
            if started {
                "new process started"
            } else {
                "sockets handed over the upgrade socket"
            }
        );
        let outcome = {
            let mut lines = BufReader::new(&mut channel).take(256).lines();
            let ready = async {
                // EOF or anything else: the process is exiting (or broke the protocol).
                matches!(lines.next_line().await, Ok(Some(line)) if line == READY_LINE)
            };
            tokio::select! {
                ready = ready => if ready { Outcome::Ready } else { Outcome::Exited },
                _ = child.wait() => Outcome::Exited,
                () = tokio::time::sleep(self.config.timeout) => Outcome::Timeout,
            }
        };
        if outcome == Outcome::Ready {
            if started {
                // Decided: the new process is systemd's main one from now on
                // (NotifyAccess=main is enough, this process being the main one still),
                // before it hears `commit` and stores its sockets as the main process.
                lifecycle.notify_systemd(&format!("MAINPID={peer}"));
            }
            let confirmed = channel
                .write_all(format!("{COMMIT_LINE}\n").as_bytes())
                .await;
            if let Err(error) = confirmed {
                // Every copy of its end is closed: the new process is gone.
                if started {
                    lifecycle.notify_systemd(&format!("MAINPID={}", std::process::id()));
                }
                let status = child.kill_and_wait().await;
                self.failed(&format!(
                    "upgrade failed: the new process {peer} ended before it was confirmed ({error}{}); this process serves on",
                    status.map(|s| format!(", {s}")).unwrap_or_default()
                ));
                return (Outcome::Exited, None);
            }
            tracing::info!(
                pid = peer,
                generation = self.generation + 1,
                "upgrade: the new process is ready; draining"
            );
            if let Some(hook) = &self.config.on_ready {
                hook(peer);
            }
            // Reaped by tokio when it exits (it outlives this process normally).
            child.keep();
            return (outcome, Some(channel));
        }
        // Best effort: a process this one did not start must stop on its own.
        let _ = channel.try_write(format!("{ROLLBACK_LINE}\n").as_bytes());
        let status = child.kill_and_wait().await;
        lifecycle.notify_systemd(&format!(
            "STATUS=serving; the upgrade to pid {peer} failed ({})",
            outcome.as_str()
        ));
        let what = match outcome {
            Outcome::Timeout => format!("was not ready within {:?}", self.config.timeout),
            _ => "exited before it was ready".to_owned(),
        };
        let status = status.map(|s| format!(" ({s})")).unwrap_or_default();
        let after = match (started, outcome) {
            (true, Outcome::Timeout) => "it was killed",
            (true, _) => "it is gone",
            (false, _) => "it was told to roll back",
        };
        self.failed(&format!(
            "upgrade failed: the new process {peer} {what}{status}; {after} and this process serves on"
        ));
        (outcome, None)
    }
}

/// Accepts on the upgrade socket and passes each connection that said hello to the
/// upgrade loop; one that comes while the loop has one waiting is refused at once.
async fn accept_hellos(
    socket: tokio::net::UnixListener,
    requests: tokio::sync::mpsc::Sender<tokio::net::UnixStream>,
) {
    loop {
        let stream = match socket.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "upgrade socket: accept failed");
                // EMFILE and the like: let descriptors free up.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let Some(stream) = hello(stream).await else {
                return;
            };
            if let Err(tokio::sync::mpsc::error::TrySendError::Full(stream)) =
                requests.try_send(stream)
            {
                refuse(&stream, "another upgrade is in progress").await;
            }
        });
    }
}

/// Whether `listener` is the socket at `path` still: bound to that path, and a socket file
/// is there (a directory systemd cleans at restart takes the file, not the socket).
fn serves_path(listener: &std::os::unix::net::UnixListener, path: &Path) -> bool {
    let bound = listener
        .local_addr()
        .ok()
        .and_then(|addr| addr.as_pathname().map(Path::to_path_buf));
    bound.as_deref() == Some(path)
        && std::fs::symlink_metadata(path)
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
}

/// The hello of a process that connected to the upgrade socket: the stream when it is one
/// of this user's (or root's) and speaks the protocol.
async fn hello(mut stream: tokio::net::UnixStream) -> Option<tokio::net::UnixStream> {
    let own = rustix::process::geteuid().as_raw();
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == own || cred.uid() == 0 => {}
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                "upgrade socket: a process of another user connected; ignored"
            );
            return None;
        }
        Err(error) => {
            tracing::warn!(%error, "upgrade socket: cannot tell who connected; ignored");
            return None;
        }
    }
    let mut line = Vec::new();
    let read = async {
        let mut byte = [0u8; 1];
        // Byte by byte: nothing past the line may be consumed (the hand-off follows).
        while line.len() <= HELLO_LINE.len() {
            match stream.read(&mut byte).await {
                Ok(1) if byte[0] == b'\n' => return true,
                Ok(1) => line.push(byte[0]),
                _ => return false,
            }
        }
        false
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, read).await {
        Ok(true) if line == HELLO_LINE.as_bytes() => Some(stream),
        _ => {
            tracing::warn!("upgrade socket: a connection did not say hello; ignored");
            None
        }
    }
}

/// Answers a process on the upgrade socket that it gets no sockets, and why.
async fn refuse(stream: &tokio::net::UnixStream, reason: &str) {
    let note = format!("refused: {reason}\n");
    if let Err(error) = Handoff::new().send(stream, &note).await {
        tracing::warn!(%error, "upgrade socket: cannot send the refusal");
    }
}

/// Stores the sockets of `handoff` in systemd's file-descriptor store, when the service has
/// one (systemd sets `FDSTORE` to `FileDescriptorStoreMax=`): each under its name, replacing
/// what the store held under that name, and `stale` (stored by a previous generation, taken
/// by no listener now) removed. At the next start systemd passes them back in `LISTEN_FDS`.
fn store_in_systemd(handoff: &Handoff, stale: &[String]) {
    let room = std::env::var("FDSTORE")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    if room == 0 {
        return;
    }
    if handoff.len() > room {
        tracing::warn!(
            sockets = handoff.len(),
            room,
            "upgrade: FileDescriptorStoreMax= is below the number of listening sockets: the store cannot hold them all, and a restart binds afresh"
        );
    }
    let notifier = match portcullis_shutdown::systemd::Notifier::from_env() {
        Ok(Some(notifier)) => notifier,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "upgrade: NOTIFY_SOCKET is unusable; the sockets are not stored");
            return;
        }
    };
    let remove = |name: &str| notifier.send(&format!("FDSTOREREMOVE=1\nFDNAME={name}\n"));
    for name in stale {
        if let Err(error) = remove(name) {
            tracing::warn!(%error, name, "upgrade: cannot remove a socket from systemd's store");
        }
    }
    for (name, fd) in handoff.sockets() {
        let stored = remove(name)
            .and_then(|()| notifier.send_with_fds(&format!("FDSTORE=1\nFDNAME={name}\n"), &[fd]));
        if let Err(error) = stored {
            tracing::warn!(%error, name, "upgrade: cannot store a socket in systemd's store");
        }
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
/// 20 ms), then waits for the previous generation's answer: `commit` (or its end without
/// one: nobody else serves) cancels `confirmed`; `rollback` (the previous generation gave
/// up on this one and serves on) shuts `lifecycle` down. `previous` is that generation's
/// process id as this one sees it (0: not visible).
pub(crate) async fn report_ready(
    channel: OwnedFd,
    ready: impl Fn() -> bool,
    lifecycle: Lifecycle,
    previous: u32,
    confirmed: CancellationToken,
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
    let (reader, mut writer) = channel.split();
    let mut answers = BufReader::new(reader).take(256).lines();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut reported = false;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            answer = answers.next_line() => {
                match answer {
                    Ok(Some(line)) if line == COMMIT_LINE && reported => {
                        tracing::info!("upgrade: the previous generation drains; this process serves");
                        confirmed.cancel();
                    }
                    Ok(Some(line)) if line == ROLLBACK_LINE => {
                        tracing::error!(
                            "upgrade rolled back: the previous generation gave up on this process (not ready in time) and serves on; this process shuts down"
                        );
                        lifecycle.shut_down();
                    }
                    Ok(Some(line)) => tracing::warn!(line, "upgrade: unexpected answer from the previous generation; ignored"),
                    // The previous generation ended without an answer: nobody else serves.
                    Ok(None) | Err(_) => {
                        tracing::warn!("upgrade: the previous generation ended before it answered; this process serves on");
                        confirmed.cancel();
                    }
                }
                return;
            }
            _ = tick.tick(), if !reported => {
                if ready() {
                    // Under systemd: ready; the previous generation makes this the main
                    // process (MAINPID=) once it reads the line below.
                    match portcullis_shutdown::systemd::Notifier::from_env() {
                        Ok(Some(notifier)) => {
                            let state = if previous == 0 {
                                "READY=1\nSTATUS=serving (upgraded)".to_owned()
                            } else {
                                format!("READY=1\nSTATUS=serving (upgraded from pid {previous})")
                            };
                            if let Err(error) = notifier.send(&state) {
                                tracing::warn!(%error, "upgrade: cannot tell systemd the new main pid");
                            }
                        }
                        Ok(None) => {}
                        Err(error) => tracing::warn!(%error, "upgrade: NOTIFY_SOCKET is unusable"),
                    }
                    let line = format!("{READY_LINE}\n");
                    if let Err(error) = writer.write_all(line.as_bytes()).await {
                        tracing::error!(%error, "upgrade: cannot report ready to the previous generation");
                        return;
                    }
                    reported = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_is_open_until_its_peer_closes_it_unread_data_or_not() -> std::io::Result<()> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        let ours = OwnedFd::from(ours);
        assert!(still_open(&ours));
        (&theirs).write_all(b"commit\n")?;
        assert!(still_open(&ours), "data waiting is no close");
        drop(theirs);
        assert!(!still_open(&ours), "closed, with the data still unread");
        Ok(())
    }

    #[test]
    fn handoff_names_are_recognised_in_the_descriptor_store() {
        for name in [
            "listener-0",
            "listener-12",
            "admin",
            "portcullis-upgrade-socket",
        ] {
            assert!(is_handoff_name(name), "{name}");
        }
        for name in [
            "web",
            "listener-",
            "listener-x",
            "hardened.socket",
            "unknown",
        ] {
            assert!(!is_handoff_name(name), "{name}");
        }
    }
}
