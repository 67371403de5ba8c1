//! [`Listener`] and what it yields: [`Accepted`], [`Stream`], [`Addr`], [`ListenerId`].

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

use crate::accept::{AcceptLoop, AcceptSource};
use crate::error::{BindErrorKind, Step, Target};
use crate::{BindError, Keepalive, ListenerConfig};

/// A process-unique identifier of one [`Listener`], for logs and for telling connections of
/// different listeners apart.
///
/// Every listener gets its own id, including each of the acceptors of one
/// [`ListenerConfig::bind`] call. `Display` shows it as `listener-N`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(u64);

impl ListenerId {
    pub(crate) fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The id as a number (unique within this process, never 0).
    #[must_use]
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "listener-{}", self.0)
    }
}

/// A listening or peer address: an IP socket address or a Unix socket path.
///
/// `Display` shows `127.0.0.1:80`, `[::1]:80`, `unix:/run/app.sock`, or `unix:(unnamed)` for
/// an unnamed Unix socket (the usual case for the peer of a Unix connection).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Addr {
    /// An IPv4 or IPv6 socket address.
    Inet(SocketAddr),
    /// A Unix domain socket, with its path when it has one.
    Unix(Option<PathBuf>),
}

impl Addr {
    /// The IP address, for [`Addr::Inet`].
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        self.as_inet().map(|a| a.ip())
    }

    /// The socket address, for [`Addr::Inet`].
    #[must_use]
    pub fn as_inet(&self) -> Option<SocketAddr> {
        match self {
            Addr::Inet(addr) => Some(*addr),
            Addr::Unix(_) => None,
        }
    }

    /// The path, for a named [`Addr::Unix`].
    #[must_use]
    pub fn as_unix_path(&self) -> Option<&Path> {
        match self {
            Addr::Unix(path) => path.as_deref(),
            Addr::Inet(_) => None,
        }
    }

    /// Whether this is a Unix socket address.
    #[must_use]
    pub fn is_unix(&self) -> bool {
        matches!(self, Addr::Unix(_))
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Self {
        Addr::Inet(addr)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Inet(addr) => addr.fmt(f),
            Addr::Unix(Some(path)) => write!(f, "unix:{}", path.display()),
            Addr::Unix(None) => f.write_str("unix:(unnamed)"),
        }
    }
}

/// An accepted connection: a TCP or a Unix stream.
///
/// Implements tokio's [`AsyncRead`] and [`AsyncWrite`] by delegating to the inner stream, so it
/// can be handed to hyper-util's `TokioIo`, a TLS acceptor or any tokio codec directly.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix domain socket connection.
    Unix(UnixStream),
}

impl Stream {
    /// The TCP stream, if this is one.
    #[must_use]
    pub fn as_tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
        }
    }

    /// The Unix stream, if this is one.
    #[must_use]
    pub fn as_unix(&self) -> Option<&UnixStream> {
        match self {
            Stream::Unix(s) => Some(s),
            Stream::Tcp(_) => None,
        }
    }

    /// The TCP stream, or `self` back if this is a Unix stream.
    ///
    /// # Errors
    ///
    /// Returns `Err(self)` for a Unix stream.
    pub fn into_tcp(self) -> Result<TcpStream, Self> {
        match self {
            Stream::Tcp(s) => Ok(s),
            other => Err(other),
        }
    }

    /// The Unix stream, or `self` back if this is a TCP stream.
    ///
    /// # Errors
    ///
    /// Returns `Err(self)` for a TCP stream.
    pub fn into_unix(self) -> Result<UnixStream, Self> {
        match self {
            Stream::Unix(s) => Ok(s),
            other => Err(other),
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Tcp(s)
    }
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

// This impl and the `AsyncWrite` one below are inlined across crates (the server's I/O stack
// is generic, they are not): every read and write of a connection passes here.
impl AsyncRead for Stream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Unix(s) => s.is_write_vectored(),
        }
    }
}

/// One accepted connection with its addresses.
#[derive(Debug)]
pub struct Accepted {
    /// The connection, with the per-connection socket options of the
    /// [`ListenerConfig`] already applied.
    pub stream: Stream,
    /// The peer's address (`unix:(unnamed)` for most Unix clients).
    pub peer: Addr,
    /// The local address of this connection: for a listener bound to `0.0.0.0` or `[::]`, the
    /// address the client actually connected to.
    pub local: Addr,
    /// The listener that accepted it.
    pub listener: ListenerId,
}

/// Options applied to every accepted TCP connection.
#[derive(Clone, Debug)]
pub(crate) struct AcceptOptions {
    pub(crate) nodelay: bool,
    pub(crate) keepalive: Option<Keepalive>,
    pub(crate) user_timeout: Option<Duration>,
}

impl AcceptOptions {
    /// Applies the options to `socket`: an accepted connection, or (to validate the values
    /// once, at bind time) the listening socket; Linux copies them to accepted sockets.
    pub(crate) fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        socket.set_tcp_nodelay(self.nodelay)?;
        match self.keepalive {
            Some(keepalive) => socket.set_tcp_keepalive(&keepalive_params(keepalive))?,
            None => socket.set_keepalive(false)?,
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }
}

/// socket2's keep-alive parameters. Where interval and retries cannot be set per socket,
/// only the idle time is.
#[allow(clippy::let_and_return)]
fn keepalive_params(keepalive: Keepalive) -> TcpKeepalive {
    let params = TcpKeepalive::new().with_time(keepalive.idle);
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
        .with_interval(keepalive.interval)
        .with_retries(keepalive.retries);
    params
}

/// The socket behind a [`Listener`]: what the accept loop polls.
#[derive(Debug)]
pub(crate) enum Source {
    Tcp {
        listener: TcpListener,
        options: AcceptOptions,
    },
    Unix {
        listener: UnixListener,
    },
}

impl AcceptSource for Source {
    type Conn = Stream;

    fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<(Stream, Addr)>> {
        match self {
            Source::Tcp { listener, .. } => listener
                .poll_accept(cx)
                .map_ok(|(s, peer)| (Stream::Tcp(s), Addr::Inet(peer))),
            Source::Unix { listener } => listener.poll_accept(cx).map_ok(|(s, peer)| {
                let path = peer.as_pathname().map(Path::to_path_buf);
                (Stream::Unix(s), Addr::Unix(path))
            }),
        }
    }

    fn configure(&self, conn: &Stream) -> io::Result<()> {
        // Linux copies TCP_NODELAY, the keepalive settings and TCP_USER_TIMEOUT from the
        // listening socket (where `AcceptOptions` were applied at bind) to every accepted one,
        // so the accept path makes no extra system calls there. Elsewhere they are applied to
        // each connection. `tests/sockopts.rs` reads them back on accepted connections.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            let _ = (self, conn);
            Ok(())
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        match (self, conn) {
            (Source::Tcp { options, .. }, Stream::Tcp(s)) => options.apply(SockRef::from(s)),
            _ => Ok(()),
        }
    }

    fn shed_one(&mut self) -> io::Result<()> {
        // The listener is non-blocking, so this returns WouldBlock once the queue is empty.
        // tokio's readiness tracking copes with accepts behind its back: a stale "ready"
        // makes its next accept see WouldBlock and re-arm.
        let accepted = match self {
            Source::Tcp { listener, .. } => SockRef::from(&*listener).accept(),
            Source::Unix { listener } => SockRef::from(&*listener).accept(),
        };
        accepted.map(drop)
    }
}

impl AsFd for Source {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Source::Tcp { listener, .. } => listener.as_fd(),
            Source::Unix { listener } => listener.as_fd(),
        }
    }
}

/// Removes the socket file of a Unix listener we bound, when the listener is dropped, but only
/// while the path still names the socket we created.
#[derive(Debug)]
pub(crate) struct UnixPathGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl UnixPathGuard {
    pub(crate) fn new(path: &Path) -> io::Result<Self> {
        let meta = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for UnixPathGuard {
    fn drop(&mut self) {
        use std::os::unix::fs::FileTypeExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta)
                if meta.file_type().is_socket()
                    && meta.dev() == self.dev
                    && meta.ino() == self.ino =>
            {
                if let Err(error) = std::fs::remove_file(&self.path) {
                    tracing::debug!(path = %self.path.display(), %error, "cannot remove unix socket file");
                }
            }
            _ => tracing::debug!(
                path = %self.path.display(),
                "unix socket path was replaced or removed; leaving it alone"
            ),
        }
    }
}

/// A listening socket with a resilient accept loop.
///
/// Created by [`ListenerConfig::bind`], [`ListenerConfig::bind_unix`],
/// [`ListenerConfig::from_std`], [`SocketActivation`](crate::SocketActivation) or the shortcut
/// [`Listener::bind`]. [`accept`](Self::accept) never fails: errors are counted, logged with
/// rate limiting, and either retried at once or backed off (see the crate docs).
///
/// Not `Clone`: the accept loop's backoff and reserve descriptor belong to one task. To accept
/// on several tasks, bind several acceptors ([`ListenerConfig::acceptors`]).
///
/// Dropping a Unix listener created by [`ListenerConfig::bind_unix`] removes its socket file,
/// if the path still names that socket.
pub struct Listener {
    id: ListenerId,
    local: Addr,
    inner: AcceptLoop<Source>,
    // Dropped after `inner` (field order), so the socket is closed before the file goes.
    _unix_path: Option<UnixPathGuard>,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("id", &self.id)
            .field("local", &self.local)
            .field("accept", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Listener {
    pub(crate) fn from_source(
        source: Source,
        local: Addr,
        unix_path: Option<UnixPathGuard>,
    ) -> Self {
        Self::with_id(ListenerId::next(), source, local, unix_path)
    }

    fn with_id(
        id: ListenerId,
        source: Source,
        local: Addr,
        unix_path: Option<UnixPathGuard>,
    ) -> Self {
        let inner = AcceptLoop::new(source, id, local.clone());
        Self {
            id,
            local,
            inner,
            _unix_path: unix_path,
        }
    }

    /// Binds one TCP listener on `addr` with the default [`ListenerConfig`].
    ///
    /// Shortcut for `ListenerConfig::default().bind(addr)` with one acceptor.
    ///
    /// # Errors
    ///
    /// As [`ListenerConfig::bind`]: the address is in use or not available, permission is
    /// denied, or no tokio runtime is running.
    pub fn bind(addr: SocketAddr) -> Result<Listener, BindError> {
        // `bind` returns exactly `acceptors` (default 1) listeners; no panic if that changes.
        ListenerConfig::default().bind(addr)?.pop().ok_or_else(|| {
            BindError::other(
                Target::Addr(Addr::Inet(addr)),
                Step::Bind,
                BindErrorKind::Io,
                "no listener was created",
            )
        })
    }

    /// The address this listener is bound to, with the real port when port 0 was requested.
    #[must_use]
    pub fn local_addr(&self) -> &Addr {
        &self.local
    }

    /// This listener's process-unique id.
    #[must_use]
    pub fn id(&self) -> ListenerId {
        self.id
    }

    /// Accepts the next connection.
    ///
    /// Never returns an error and never gives up: per-connection errors (`ECONNABORTED`,
    /// `ECONNRESET`, ...) are counted and skipped at once; resource errors (`EMFILE`,
    /// `ENFILE`, `ENOBUFS`, `ENOMEM`) and unknown errors are counted and backed off, 5 ms
    /// doubling to 1 s, reset by the next success. On `EMFILE`/`ENFILE` queued connections
    /// are accepted and closed with the help of a reserve descriptor so clients are not left
    /// hanging. See the crate docs.
    ///
    /// # Panics
    ///
    /// Backing off uses a tokio timer: if an accept error needs a backoff and the runtime was
    /// built without the time driver, tokio panics.
    ///
    /// # Cancellation safety
    ///
    /// This method is cancellation safe: all state lives in the listener, and a connection is
    /// only taken off the queue in the same poll that returns it, so dropping the future (for
    /// example in `tokio::select!`) never loses a connection.
    pub async fn accept(&mut self) -> Accepted {
        poll_fn(|cx| self.poll_accept(cx)).await
    }

    /// Polls for the next connection; the poll-based form of [`accept`](Self::accept).
    ///
    /// Returns `Poll::Pending` and arranges for `cx` to be woken when a connection may be
    /// ready or a backoff has elapsed.
    pub fn poll_accept(&mut self, cx: &mut Context<'_>) -> Poll<Accepted> {
        let (stream, peer) = std::task::ready!(self.inner.poll_accept(cx));
        let local = self.local_of(&stream);
        Poll::Ready(Accepted {
            stream,
            peer,
            local,
            listener: self.id,
        })
    }

    /// Takes this listener off the tokio runtime it was created on, so that it can be
    /// [attached](DetachedListener::attach) to another one: the way to give each runtime of a
    /// one-runtime-per-core server its own listeners. The socket stays open and listening
    /// throughout, so no queued connection is lost; its id, address and per-connection
    /// options are kept.
    ///
    /// # Errors
    ///
    /// When the socket cannot be deregistered from the runtime's reactor.
    pub fn detach(self) -> io::Result<DetachedListener> {
        let Listener {
            id,
            local,
            inner,
            _unix_path: unix_path,
        } = self;
        let source = match inner.into_source() {
            Source::Tcp { listener, options } => DetachedSource::Tcp {
                listener: listener.into_std()?,
                options,
            },
            Source::Unix { listener } => DetachedSource::Unix {
                listener: listener.into_std()?,
            },
        };
        Ok(DetachedListener {
            id,
            local,
            source,
            unix_path,
        })
    }

    fn local_of(&self, stream: &Stream) -> Addr {
        match (&self.local, stream) {
            (Addr::Inet(bound), Stream::Tcp(s)) if bound.ip().is_unspecified() => s
                .local_addr()
                .map_or_else(|_| self.local.clone(), Addr::Inet),
            _ => self.local.clone(),
        }
    }
}

/// A [`Listener`] between two tokio runtimes; see [`Listener::detach`].
#[derive(Debug)]
pub struct DetachedListener {
    id: ListenerId,
    local: Addr,
    source: DetachedSource,
    // Dropped after `source` (field order), so the socket is closed before the file goes.
    unix_path: Option<UnixPathGuard>,
}

#[derive(Debug)]
enum DetachedSource {
    Tcp {
        listener: std::net::TcpListener,
        options: AcceptOptions,
    },
    Unix {
        listener: std::os::unix::net::UnixListener,
    },
}

impl DetachedListener {
    /// The listener's address.
    #[must_use]
    pub fn local_addr(&self) -> &Addr {
        &self.local
    }

    /// Registers the listener with the current tokio runtime.
    ///
    /// # Errors
    ///
    /// A [`BindError`] naming the address when no runtime is running or the socket cannot be
    /// registered with its reactor.
    pub fn attach(self) -> Result<Listener, BindError> {
        let target = || Target::Addr(self.local.clone());
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(BindError::other(
                target(),
                Step::Runtime,
                BindErrorKind::NoRuntime,
                "no tokio runtime is running",
            ));
        }
        let source = match self.source {
            DetachedSource::Tcp { listener, options } => Source::Tcp {
                listener: TcpListener::from_std(listener)
                    .map_err(|e| BindError::io(target(), Step::Register, e))?,
                options,
            },
            DetachedSource::Unix { listener } => Source::Unix {
                listener: UnixListener::from_std(listener)
                    .map_err(|e| BindError::io(target(), Step::Register, e))?,
            },
        };
        Ok(Listener::with_id(
            self.id,
            source,
            self.local,
            self.unix_path,
        ))
    }
}

impl AsFd for Listener {
    /// The listening socket, for reading socket options (with socket2's `SockRef` or
    /// [`crate::sockopt`]).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.source().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_display() {
        let v4: SocketAddr = "127.0.0.1:80".parse().expect("addr");
        let v6: SocketAddr = "[::1]:80".parse().expect("addr");
        assert_eq!(Addr::from(v4).to_string(), "127.0.0.1:80");
        assert_eq!(Addr::from(v6).to_string(), "[::1]:80");
        assert_eq!(
            Addr::Unix(Some(PathBuf::from("/run/x.sock"))).to_string(),
            "unix:/run/x.sock"
        );
        assert_eq!(Addr::Unix(None).to_string(), "unix:(unnamed)");
    }

    #[test]
    fn addr_accessors() {
        let v4: SocketAddr = "10.1.2.3:443".parse().expect("addr");
        let a = Addr::from(v4);
        assert_eq!(a.ip(), Some(v4.ip()));
        assert_eq!(a.as_inet(), Some(v4));
        assert!(!a.is_unix());
        let u = Addr::Unix(Some(PathBuf::from("/x")));
        assert_eq!(u.ip(), None);
        assert_eq!(u.as_inet(), None);
        assert_eq!(u.as_unix_path(), Some(Path::new("/x")));
        assert!(u.is_unix());
    }

    #[test]
    fn listener_ids_are_unique() {
        let a = ListenerId::next();
        let b = ListenerId::next();
        assert_ne!(a, b);
        assert_ne!(a.as_u64(), 0);
        assert_eq!(a.to_string(), format!("listener-{}", a.as_u64()));
    }

    #[test]
    fn stream_is_send_sync_unpin() {
        fn check<T: Send + Sync + Unpin + AsyncRead + AsyncWrite>() {}
        check::<Stream>();
        fn check_listener<T: Send + Sync>() {}
        check_listener::<Listener>();
        check_listener::<Accepted>();
    }
}
