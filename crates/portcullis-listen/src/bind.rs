//! Binding: the system calls behind [`ListenerConfig::bind`], [`ListenerConfig::bind_unix`] and
//! [`ListenerConfig::from_std`], and the adoption of sockets handed over by a service manager.
//!
//! Every option is set on the socket before `bind()`/`listen()`. The configuration itself is
//! plain data in `config.rs`; this module reads it, so the dependency runs one way: `bind` uses
//! `config` and `listener`, `listener` uses `config`, and `config` uses neither.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::config::ListenerConfig;
use crate::error::{BindErrorKind, Step, Target};
use crate::listener::{AcceptOptions, Source, UnixPathGuard};
use crate::{Addr, BindError, Listener};

impl ListenerConfig {
    /// The per-connection options, as the listener applies them to accepted sockets.
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}
