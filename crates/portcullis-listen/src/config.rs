//! [`ListenerConfig`]: socket options, acceptor count, and the `bind*` constructors.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, TcpKeepalive, Type};

use crate::error::{BindErrorKind, Step, Target};
use crate::listener::{Source, UnixPathGuard};
use crate::{Addr, BindError, Listener, duration};

/// TCP keep-alive probing of idle accepted connections, so dead peers (a crashed client, a
/// NAT that forgot the flow) are noticed and their connections reaped.
///
/// The default (`idle` 60 s, `interval` 10 s, `retries` 6) reaps a dead peer within about two
/// minutes (60 s + 6 × 10 s) while costing one small packet per idle minute.
///
/// Linux takes these in whole seconds: `idle` and `interval` must be at least one second;
/// [`ListenerConfig::bind`] reports an error otherwise. On platforms without per-socket
/// interval and retry settings only `idle` is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub idle: Duration,
    /// Time between probes (`TCP_KEEPINTVL`).
    #[serde(deserialize_with = "duration::deserialize")]
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub retries: u32,
}

impl Keepalive {
    /// Keep-alive with the given idle time, probe interval and probe count.
    pub const fn new(idle: Duration, interval: Duration, retries: u32) -> Self {
        Self {
            idle,
            interval,
            retries,
        }
    }

    // Where interval and retries cannot be set per socket, `params` is returned unchanged.
    #[allow(clippy::let_and_return)]
    fn to_socket2(self) -> TcpKeepalive {
        let params = TcpKeepalive::new().with_time(self.idle);
        #[cfg(any(
            target_os = "android",
            target_os = "dragonfly",
            target_os = "freebsd",
            target_os = "fuchsia",
            target_os = "illumos",
            target_os = "ios",
            target_os = "linux",
            target_os = "macos",
            target_os = "netbsd",
        ))]
        let params = params
            .with_interval(self.interval)
            .with_retries(self.retries);
        params
    }
}

impl Default for Keepalive {
    fn default() -> Self {
        Self::new(Duration::from_secs(60), Duration::from_secs(10), 6)
    }
}

/// Options applied to every accepted TCP connection.
#[derive(Clone, Debug)]
pub(crate) struct AcceptOptions {
    nodelay: bool,
    keepalive: Option<Keepalive>,
    user_timeout: Option<Duration>,
}

impl AcceptOptions {
    /// Applies the options to `socket`: an accepted connection, or (to validate the values
    /// once, at bind time) the listening socket; Linux copies them to accepted sockets.
    pub(crate) fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        socket.set_tcp_nodelay(self.nodelay)?;
        match self.keepalive {
            Some(keepalive) => socket.set_tcp_keepalive(&keepalive.to_socket2())?,
            None => socket.set_keepalive(false)?,
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// How to bind a listener: socket options, per-connection options and the number of
/// acceptors.
///
/// Build it with the setters (each documents its default and why), or deserialize it from
/// configuration: keys are the setter names in kebab-case, durations are strings such as
/// `"5s"` (see [`parse_duration`](crate::parse_duration)), unknown keys are rejected.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use portcullis_listen::ListenerConfig;
/// use std::time::Duration;
///
/// let from_code = ListenerConfig::new().backlog(2048).defer_accept(Duration::from_secs(5));
/// let from_toml: ListenerConfig = toml::from_str(r#"
///     backlog = 2048
///     defer-accept = "5s"
///     keepalive = { idle = "30s", interval = "5s", retries = 3 }
///     user-timeout = "30s"
/// "#)?;
/// # let _ = (from_code, from_toml);
/// # Ok(()) }
/// ```
///
/// `keepalive = false` turns keep-alive off; `keepalive = true` selects the default
/// parameters.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ListenerConfig {
    backlog: u32,
    reuse_address: bool,
    reuse_port: bool,
    only_v6: bool,
    recv_buffer_size: Option<usize>,
    send_buffer_size: Option<usize>,
    tcp_fastopen: u32,
    #[serde(deserialize_with = "deserialize_zero_is_off")]
    defer_accept: Option<Duration>,
    nodelay: bool,
    #[serde(deserialize_with = "deserialize_keepalive")]
    keepalive: Option<Keepalive>,
    #[serde(deserialize_with = "deserialize_zero_is_off")]
    user_timeout: Option<Duration>,
    acceptors: NonZeroUsize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            backlog: 1024,
            reuse_address: true,
            reuse_port: false,
            only_v6: true,
            recv_buffer_size: None,
            send_buffer_size: None,
            tcp_fastopen: 0,
            defer_accept: None,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            user_timeout: None,
            acceptors: NonZeroUsize::MIN,
        }
    }
}

impl ListenerConfig {
    /// The default configuration; same as [`Default::default`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Length of the queue of connections the kernel has completed but the server has not yet
    /// accepted.
    ///
    /// Default: 1024. Large enough to absorb a burst while the accept task is busy; the kernel
    /// caps it at `net.core.somaxconn` (4096 on current Linux).
    pub fn backlog(mut self, backlog: u32) -> Self {
        self.backlog = backlog;
        self
    }

    /// `SO_REUSEADDR`: allow binding while old connections on the port linger in `TIME_WAIT`.
    ///
    /// Default: `true`, so a restarted server can bind at once. It does not let two live
    /// listeners share a port (that is [`reuse_port`](Self::reuse_port)).
    pub fn reuse_address(mut self, reuse: bool) -> Self {
        self.reuse_address = reuse;
        self
    }

    /// `SO_REUSEPORT`: let several sockets (of processes with the same user) listen on the same
    /// address; Linux spreads connections across them.
    ///
    /// Default: `false`, because with it another process of the same user can bind the port
    /// and take a share of the connections. Implied by [`acceptors`](Self::acceptors) above 1.
    /// Closing one of several reuse-port sockets drops the connections queued in it; hand
    /// sockets over for restarts instead (socket activation). Not available on illumos and
    /// Solaris (binding reports [`Unsupported`](crate::BindErrorKind::Unsupported)); on BSDs
    /// and macOS it shares the port without spreading the load.
    pub fn reuse_port(mut self, reuse: bool) -> Self {
        self.reuse_port = reuse;
        self
    }

    /// `IPV6_V6ONLY` for IPv6 addresses: whether `[::]` accepts only IPv6, leaving IPv4 to a
    /// separate `0.0.0.0` listener.
    ///
    /// Default: `true`, so `[::]:port` and `0.0.0.0:port` can both be bound, and IPv4 clients
    /// are seen as IPv4 addresses rather than `::ffff:a.b.c.d`. Ignored for IPv4 addresses.
    pub fn only_v6(mut self, only_v6: bool) -> Self {
        self.only_v6 = only_v6;
        self
    }

    /// `SO_RCVBUF` of the listening socket, inherited by accepted sockets.
    ///
    /// Default: the operating system's (autotuned on Linux; setting it turns autotuning off
    /// for these sockets). Linux doubles the value for bookkeeping.
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// `SO_SNDBUF` of the listening socket, inherited by accepted sockets.
    ///
    /// Default: the operating system's (autotuned on Linux). Linux doubles the value.
    pub fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// `TCP_FASTOPEN` with this pending-request queue length; 0 turns it off.
    ///
    /// Default: off. Fast Open lets a returning client send data in the SYN, which the server
    /// processes before the handshake completes, so a replayed SYN replays the request: only
    /// worth it for idempotent protocols, and TLS already protects against replays. Linux
    /// only; elsewhere the setting is ignored with a warning at bind time.
    pub fn tcp_fastopen(mut self, queue_len: u32) -> Self {
        self.tcp_fastopen = queue_len;
        self
    }

    /// `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept` only once the client has
    /// sent data (or this time has passed), so silent connections never reach the server.
    /// Zero turns it off; Linux works in whole seconds and rounds up.
    ///
    /// Default: off, because server-speaks-first protocols would see no connection until the
    /// timeout. Linux only; elsewhere the setting is ignored with a warning at bind time.
    pub fn defer_accept(mut self, timeout: Duration) -> Self {
        self.defer_accept = (!timeout.is_zero()).then_some(timeout);
        self
    }

    /// `TCP_NODELAY` on accepted connections: send small writes at once instead of waiting
    /// to coalesce them (Nagle's algorithm).
    ///
    /// Default: `true`; request/response protocols such as HTTP otherwise stall up to 40 ms on
    /// the interaction of Nagle and delayed ACKs.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// TCP keep-alive on accepted connections; `None` turns it off.
    ///
    /// Default: `Some(Keepalive::default())` (60 s idle, 10 s interval, 6 probes), so the
    /// connections of peers that vanished without a FIN are reaped within about two minutes
    /// instead of holding a descriptor forever.
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// `TCP_USER_TIMEOUT` on accepted connections: drop a connection whose sent data stays
    /// unacknowledged this long. `None` or zero keeps the system default.
    ///
    /// Default: `None`, the kernel's retransmission limit (about 15 minutes). Set it to free
    /// connections to unreachable peers that have unacknowledged data sooner. Linux only;
    /// elsewhere the setting is ignored with a warning at bind time.
    pub fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.user_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Number of sockets [`bind`](Self::bind) creates on the same address with
    /// `SO_REUSEPORT`, each returned as a separate [`Listener`] to run on its own task.
    ///
    /// Default: 1. More acceptors help when one accept task cannot keep up with the
    /// connection rate (tens of thousands per second); above 1 implies
    /// [`reuse_port`](Self::reuse_port) among the acceptors, but unless `reuse_port` was set
    /// explicitly, [`bind`](Self::bind) still refuses an address something else already
    /// listens on (address in use), so a second copy of a server cannot silently share the
    /// port. Ignored by [`bind_unix`](Self::bind_unix) and
    /// [`from_std`](Self::from_std).
    pub fn acceptors(mut self, acceptors: NonZeroUsize) -> Self {
        self.acceptors = acceptors;
        self
    }

    pub(crate) fn accept_options(&self) -> AcceptOptions {
        AcceptOptions {
            nodelay: self.nodelay,
            keepalive: self.keepalive,
            user_timeout: self.user_timeout,
        }
    }

    /// Binds TCP listeners on `addr`: [`acceptors`](Self::acceptors) sockets (default 1),
    /// every option applied before `listen()`.
    ///
    /// Port 0 picks a free port; with several acceptors they all share the port picked for the
    /// first one, and [`Listener::local_addr`] shows it.
    ///
    /// Must be called from within a tokio runtime with I/O and time enabled (the sockets are
    /// registered with its reactor, and the accept loop uses its timer to back off).
    ///
    /// # Errors
    ///
    /// Returns a [`BindError`] naming the address when no tokio runtime is running
    /// ([`NoRuntime`](crate::BindErrorKind::NoRuntime)), the address is in use or not
    /// available, binding is not permitted, an option is not supported by the platform, or the
    /// kernel rejects an option value (for example a keep-alive idle time under one second).
    /// On error no socket stays open.
    ///
    /// # Panics
    ///
    /// tokio panics if the current runtime was built without the I/O driver
    /// (`enable_io`); a runtime from `#[tokio::main]` has it.
    pub fn bind(&self, addr: SocketAddr) -> Result<Vec<Listener>, BindError> {
        let target = || Target::Addr(Addr::Inet(addr));
        require_runtime(target)?;
        self.warn_unsupported(&Addr::Inet(addr));
        let reuse_port = self.reuse_port || self.acceptors.get() > 1;
        if reuse_port && !self.reuse_port && addr.port() != 0 {
            // SO_REUSEPORT only because of several acceptors: the port must still be ours
            // alone. Binding it once without SO_REUSEPORT fails if anything else listens there
            // (another server, or a second copy of this one), where the reuse-port group would
            // silently share the port with it.
            let probe = self.configured_socket(addr, false)?;
            probe
                .bind(&SockAddr::from(addr))
                .map_err(|e| BindError::io(target(), Step::Bind, e))?;
            drop(probe);
        }
        let first = self.tcp_socket(addr, reuse_port)?;
        let mut actual = addr;
        if addr.port() == 0 {
            let local = first
                .local_addr()
                .map_err(|e| BindError::io(target(), Step::Bind, e))?;
            if let Some(port) = local.as_socket().map(|a| a.port()) {
                actual.set_port(port);
            }
        }
        let mut sockets = vec![first];
        for _ in 1..self.acceptors.get() {
            sockets.push(self.tcp_socket(actual, reuse_port)?);
        }
        sockets
            .into_iter()
            .map(|socket| self.adopt_tcp(std::net::TcpListener::from(socket), target()))
            .collect()
    }

    /// Creates, configures, binds and listens one TCP socket.
    fn tcp_socket(&self, addr: SocketAddr, reuse_port: bool) -> Result<Socket, BindError> {
        let target = || Target::Addr(Addr::Inet(addr));
        let socket = self.configured_socket(addr, reuse_port)?;
        socket
            .bind(&SockAddr::from(addr))
            .map_err(|e| BindError::io(target(), Step::Bind, e))?;
        socket
            .listen(backlog_int(self.backlog))
            .map_err(|e| BindError::io(target(), Step::Listen, e))?;
        Ok(socket)
    }

    /// Creates one TCP socket for `addr` with every option set, not yet bound.
    fn configured_socket(&self, addr: SocketAddr, reuse_port: bool) -> Result<Socket, BindError> {
        let target = || Target::Addr(Addr::Inet(addr));
        let opt = |name: &'static str| move |e| BindError::io(target(), Step::SetOption(name), e);
        // socket2 sets close-on-exec atomically where the platform allows.
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(|e| BindError::io(target(), Step::Socket, e))?;
        socket.set_nonblocking(true).map_err(opt("O_NONBLOCK"))?;
        if self.reuse_address {
            socket
                .set_reuse_address(true)
                .map_err(opt("SO_REUSEADDR"))?;
        }
        if reuse_port {
            set_reuse_port(&socket).map_err(opt("SO_REUSEPORT"))?;
        }
        if addr.is_ipv6() {
            socket
                .set_only_v6(self.only_v6)
                .map_err(opt("IPV6_V6ONLY"))?;
        }
        if let Some(size) = self.recv_buffer_size {
            socket
                .set_recv_buffer_size(size)
                .map_err(opt("SO_RCVBUF"))?;
        }
        if let Some(size) = self.send_buffer_size {
            socket
                .set_send_buffer_size(size)
                .map_err(opt("SO_SNDBUF"))?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            if self.tcp_fastopen > 0 {
                crate::sockopt::set_tcp_fastopen(&socket, self.tcp_fastopen)
                    .map_err(opt("TCP_FASTOPEN"))?;
            }
            if let Some(timeout) = self.defer_accept {
                crate::sockopt::set_tcp_defer_accept(&socket, timeout)
                    .map_err(opt("TCP_DEFER_ACCEPT"))?;
            }
        }
        // Validate the per-connection options once, here, rather than failing every accepted
        // connection later; Linux also copies them to accepted sockets.
        self.accept_options()
            .apply(SockRef::from(&socket))
            .map_err(opt(PER_CONNECTION_OPTIONS))?;
        Ok(socket)
    }

    fn warn_unsupported(&self, addr: &Addr) {
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        {
            let ignored: Vec<&str> = [
                (self.tcp_fastopen > 0, "tcp-fastopen"),
                (self.defer_accept.is_some(), "defer-accept"),
                (self.user_timeout.is_some(), "user-timeout"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            if !ignored.is_empty() {
                tracing::warn!(%addr, ?ignored, "listener options are Linux-only and were ignored");
            }
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = addr;
    }

    /// Binds a Unix domain stream socket at `path` and sets its permission bits to `mode`
    /// (for example `0o660`) before it starts listening.
    ///
    /// A leftover socket file from a previous run is removed safely: if `path` is a socket
    /// and connecting to it is refused, nobody is listening and it is removed; if the connect
    /// succeeds, another server is live there and binding fails with
    /// [`AddrInUse`](crate::BindErrorKind::AddrInUse). A path that exists and is not a socket
    /// (a regular file, a directory, a symlink) is never removed: binding fails with
    /// [`NotASocket`](crate::BindErrorKind::NotASocket). Without `mode` the file gets the
    /// default permissions under the process umask.
    ///
    /// The socket file is removed when the [`Listener`] is dropped, if the path still names
    /// this socket. Only the per-connection options have no meaning for Unix sockets; the
    /// backlog applies.
    ///
    /// # Errors
    ///
    /// Returns a [`BindError`] naming the path for the cases above, when no tokio runtime is
    /// running, or when creating, binding, changing permissions or listening fails.
    ///
    /// # Panics
    ///
    /// As [`bind`](Self::bind): tokio panics if the runtime has no I/O driver.
    pub fn bind_unix(
        &self,
        path: impl AsRef<Path>,
        mode: Option<u32>,
    ) -> Result<Listener, BindError> {
        let path = path.as_ref();
        let target = || Target::Addr(Addr::Unix(Some(path.to_path_buf())));
        require_runtime(target)?;
        remove_stale_socket(path, target)?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None)
            .map_err(|e| BindError::io(target(), Step::Socket, e))?;
        socket
            .set_nonblocking(true)
            .map_err(|e| BindError::io(target(), Step::SetOption("O_NONBLOCK"), e))?;
        let sockaddr = SockAddr::unix(path).map_err(|e| BindError::io(target(), Step::Bind, e))?;
        socket
            .bind(&sockaddr)
            .map_err(|e| BindError::io(target(), Step::Bind, e))?;
        // From here on the file exists: the guard removes it again on every error path.
        let guard = UnixPathGuard::new(path).map_err(|e| BindError::io(target(), Step::Bind, e))?;
        if let Some(mode) = mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(|e| BindError::io(target(), Step::Permissions, e))?;
        }
        socket
            .listen(backlog_int(self.backlog))
            .map_err(|e| BindError::io(target(), Step::Listen, e))?;
        let listener = tokio::net::UnixListener::from_std(socket.into())
            .map_err(|e| BindError::io(target(), Step::Register, e))?;
        let local = Addr::Unix(Some(path.to_path_buf()));
        Ok(Listener::from_source(
            Source::Unix { listener },
            local,
            Some(guard),
        ))
    }

    /// Adopts an already bound and listening TCP socket (for example one handed over by a
    /// parent process).
    ///
    /// Sets it non-blocking and gives accepted connections the per-connection options
    /// (`nodelay`, `keepalive`, `user_timeout`): they are set on the listening socket, which
    /// Linux copies to every accepted one (elsewhere they are also set per connection). The
    /// other options of the listening socket (backlog, reuse, buffers, Fast Open,
    /// defer-accept) are left as they are: the socket is already listening.
    ///
    /// # Errors
    ///
    /// Returns a [`BindError`] naming the socket's address when no tokio runtime is running,
    /// the per-connection options are rejected, or the socket cannot be registered with the
    /// reactor.
    ///
    /// # Panics
    ///
    /// As [`bind`](Self::bind): tokio panics if the runtime has no I/O driver.
    pub fn from_std(&self, listener: std::net::TcpListener) -> Result<Listener, BindError> {
        let target = match listener.local_addr() {
            Ok(addr) => Target::Addr(Addr::Inet(addr)),
            Err(_) => Target::Addr(Addr::Unix(None)),
        };
        self.adopt_tcp(listener, target)
    }

    /// Turns a listening std socket into a [`Listener`]; errors name `target`.
    pub(crate) fn adopt_tcp(
        &self,
        listener: std::net::TcpListener,
        target: Target,
    ) -> Result<Listener, BindError> {
        let target = || target.clone();
        require_runtime(target)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| BindError::io(target(), Step::SetOption("O_NONBLOCK"), e))?;
        let options = self.accept_options();
        options
            .apply(SockRef::from(&listener))
            .map_err(|e| BindError::io(target(), Step::SetOption(PER_CONNECTION_OPTIONS), e))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| BindError::io(target(), Step::Register, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| BindError::io(target(), Step::Adopt, e))?;
        Ok(Listener::from_source(
            Source::Tcp { listener, options },
            Addr::Inet(local),
            None,
        ))
    }

    /// Turns a listening std Unix socket into a [`Listener`] without taking charge of its
    /// file; errors name `target`.
    pub(crate) fn adopt_unix(
        &self,
        listener: std::os::unix::net::UnixListener,
        target: Target,
    ) -> Result<Listener, BindError> {
        let target = || target.clone();
        require_runtime(target)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| BindError::io(target(), Step::SetOption("O_NONBLOCK"), e))?;
        let listener = tokio::net::UnixListener::from_std(listener)
            .map_err(|e| BindError::io(target(), Step::Register, e))?;
        let local = listener
            .local_addr()
            .map_err(|e| BindError::io(target(), Step::Adopt, e))?;
        let local = Addr::Unix(local.as_pathname().map(Path::to_path_buf));
        Ok(Listener::from_source(
            Source::Unix { listener },
            local,
            None,
        ))
    }
}

/// How the per-connection options are named in errors.
const PER_CONNECTION_OPTIONS: &str = "per-connection options (nodelay, keepalive, user timeout)";

fn backlog_int(backlog: u32) -> libc::c_int {
    libc::c_int::try_from(backlog).unwrap_or(libc::c_int::MAX)
}

fn no_runtime(target: Target) -> BindError {
    BindError::other(
        target,
        Step::Runtime,
        BindErrorKind::NoRuntime,
        "no tokio runtime is running on this thread (listeners must be created inside one)",
    )
}

fn require_runtime(target: impl Fn() -> Target) -> Result<(), BindError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(no_runtime(target())),
    }
}

#[cfg(not(any(
    target_os = "solaris",
    target_os = "illumos",
    target_os = "cygwin",
    target_os = "nuttx"
)))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(any(
    target_os = "solaris",
    target_os = "illumos",
    target_os = "cygwin",
    target_os = "nuttx"
))]
fn set_reuse_port(_socket: &Socket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_REUSEPORT is not available on this platform",
    ))
}

/// Removes a stale socket file at `path`, refusing to touch anything else.
fn remove_stale_socket(path: &Path, target: impl Fn() -> Target) -> Result<(), BindError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(BindError::io(target(), Step::Bind, e)),
    };
    if !meta.file_type().is_socket() {
        return Err(BindError::other(
            target(),
            Step::Bind,
            BindErrorKind::NotASocket,
            "the path exists and is not a socket; it was left alone",
        ));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::other(
            target(),
            Step::Bind,
            BindErrorKind::AddrInUse,
            "another process is accepting connections on this socket",
        )),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale unix socket");
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(BindError::io(target(), Step::RemoveStale, e)),
            }
        }
        Err(e) => Err(BindError::io(target(), Step::Bind, e)),
    }
}

/// An optional duration where zero means off, as in the setters.
fn deserialize_zero_is_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(duration::deserialize_option(d)?.filter(|t| !t.is_zero()))
}

/// `keepalive = false` (off), `keepalive = true` (defaults) or a table of parameters.
fn deserialize_keepalive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Keepalive>, D::Error> {
    struct KeepaliveVisitor;

    impl<'de> Visitor<'de> for KeepaliveVisitor {
        type Value = Option<Keepalive>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("false, true, or a table with idle, interval and retries")
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            Ok(v.then(Keepalive::default))
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_any(self)
        }

        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            Keepalive::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }

    d.deserialize_any(KeepaliveVisitor)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Linux forces IPV6_V6ONLY on when binding a specific IPv6 address such as [::1], so the
    // setting is only observable on the unbound socket (or on [::], which tests do not bind).
    #[test]
    fn only_v6_is_set_before_bind() -> io::Result<()> {
        let addr: SocketAddr = "[::1]:0".parse().map_err(io::Error::other)?;
        for only_v6 in [true, false] {
            let socket = ListenerConfig::new()
                .only_v6(only_v6)
                .configured_socket(addr, false)
                .map_err(io::Error::from)?;
            assert_eq!(socket.only_v6()?, only_v6);
        }
        Ok(())
    }

    #[test]
    fn defer_accept_rounds_sub_second_up() -> io::Result<()> {
        let addr: SocketAddr = "127.0.0.1:0".parse().map_err(io::Error::other)?;
        let socket = ListenerConfig::new()
            .defer_accept(Duration::from_millis(1))
            .configured_socket(addr, false)
            .map_err(io::Error::from)?;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        assert!(crate::sockopt::tcp_defer_accept(&socket)? > 0);
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = socket;
        Ok(())
    }

    #[test]
    fn zero_durations_mean_off() {
        let config = ListenerConfig::new()
            .defer_accept(Duration::ZERO)
            .user_timeout(Some(Duration::ZERO));
        assert_eq!(config, ListenerConfig::default());
    }
}
