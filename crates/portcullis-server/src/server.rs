//! The server builder, accept loops and the drain.

use std::fmt;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use portcullis_limit::{
    ConnLimiter, ConnPermit, ConnRejected, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES,
    HandshakeLimiter, PeerAddr,
};
use portcullis_listen::proxy::{Prefixed, ProxyProtocol};
use portcullis_listen::{Accepted, Addr, DetachedListener, Listener, ListenerId};
use portcullis_metrics::Admin;
use portcullis_shutdown::Health;
use portcullis_tls::{ClientCertificates, TlsAcceptor};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tower::Service;

use crate::BoxError;
use crate::config::HttpConfig;
use crate::driver::Driver;
use crate::error::Error;
use crate::io::{Agreed, ConnIo, TrackedIo};
use crate::metrics::{CloseReason, PhaseHook, ServerMetrics, ShutdownMetrics, ShutdownPhase};
use crate::phase::{Phase, PhaseWatch, Stage};
use crate::report::ServeReport;
use crate::service::ConnService;
use crate::state::ConnState;

mod admin;

pub use admin::ADMIN_DRAIN_TIMEOUT;
use admin::AdminServer;

/// hyper's built-in HTTP/1 header count limit, and portcullis's default.
const HYPER_MAX_HEADERS: usize = 100;

/// Default for [`Builder::drain_timeout`]: 30 s, Kubernetes' default termination grace
/// period.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = portcullis_shutdown::DEFAULT_DRAIN_TIMEOUT;

type ShutdownFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Where a request came from, inserted into every request's extensions (unless turned off
/// with [`Builder::conn_info`]).
///
/// ```
/// # use http::Request;
/// # fn handler(request: Request<()>) {
/// if let Some(info) = request.extensions().get::<portcullis_server::ConnInfo>() {
///     println!("request from {} on {}", info.peer, info.local);
/// }
/// # }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnInfo {
    /// The peer's address.
    pub peer: Addr,
    /// The local address the connection was accepted on.
    pub local: Addr,
    /// The listener that accepted it.
    pub listener: ListenerId,
    /// The trusted proxy the connection came through, when it carried a PROXY protocol
    /// header; [`ConnInfo::peer`] is then the client named in the header.
    pub proxied_by: Option<Addr>,
}

/// What the accept loop and the connection task apply to every connection.
#[derive(Clone, Debug)]
struct ConnPolicy {
    info: bool,
    peer: bool,
    limits: ConnLimiter,
    proxy: Option<Arc<ProxyProtocol>>,
    tls: Option<TlsAcceptor>,
    /// Listeners with an acceptor of their own (a handful: searched in order).
    listener_tls: Arc<[(ListenerId, TlsAcceptor)]>,
    handshakes: HandshakeLimiter,
}

impl ConnPolicy {
    /// The PROXY protocol settings to read a header with, if `peer` is a trusted proxy.
    fn proxy_for(&self, peer: &Addr) -> Option<&ProxyProtocol> {
        let proxy = self.proxy.as_deref()?;
        peer.ip()
            .is_some_and(|ip| proxy.is_trusted(ip))
            .then_some(proxy)
    }

    /// The TLS acceptor of connections accepted by `listener`, if they speak TLS.
    fn tls_for(&self, listener: ListenerId) -> Option<&TlsAcceptor> {
        self.listener_tls
            .iter()
            .find_map(|(id, acceptor)| (*id == listener).then_some(acceptor))
            .or(self.tls.as_ref())
    }

    /// Takes the connection's places under the caps. A connection that will carry a PROXY
    /// header is held to the per-client cap once the header names its client.
    fn admit(&self, peer: &Addr) -> Result<ConnPermit, ConnRejected> {
        match peer.ip() {
            Some(ip) if self.proxy_for(peer).is_none() => self.limits.try_acquire(ip),
            _ => self.limits.try_acquire_global(),
        }
    }
}

/// An HTTP server over portcullis listeners; start with [`Server::builder`].
#[derive(Debug)]
pub struct Server(());

impl Server {
    /// Starts configuring a server.
    ///
    /// The default connection and handshake caps resolve their metric handles here, with the
    /// recorder installed at this moment: install the recorder (a Prometheus exporter, say)
    /// before making the builder.
    pub fn builder() -> Builder {
        Builder {
            listeners: Vec::new(),
            http: HttpConfig::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            shutdown: None,
            force: None,
            conn_info: true,
            peer_addr: true,
            conn_limits: ConnLimiter::new(DEFAULT_MAX_CONNECTIONS),
            proxy_protocol: None,
            tls: None,
            listener_tls: Vec::new(),
            handshakes: HandshakeLimiter::new(DEFAULT_MAX_HANDSHAKES),
            health: None,
            drain_delay: Duration::ZERO,
            app_token: None,
            app_tasks: None,
            on_phase: None,
            on_drain_progress: None,
            admin: None,
        }
    }
}

/// Configures and runs a [`Server`].
#[must_use = "a server builder does nothing until `serve` is called"]
///
/// Required: at least one listener. Optional, with defaults: [`HttpConfig`], the drain
/// deadline and the shutdown trigger (none: serve until the process ends).
pub struct Builder {
    listeners: Vec<Listener>,
    http: HttpConfig,
    drain_timeout: Duration,
    shutdown: Option<ShutdownFuture>,
    force: Option<ShutdownFuture>,
    conn_info: bool,
    peer_addr: bool,
    conn_limits: ConnLimiter,
    proxy_protocol: Option<ProxyProtocol>,
    tls: Option<TlsAcceptor>,
    listener_tls: Vec<(ListenerId, TlsAcceptor)>,
    handshakes: HandshakeLimiter,
    health: Option<Health>,
    drain_delay: Duration,
    app_token: Option<CancellationToken>,
    app_tasks: Option<TaskTracker>,
    on_phase: Option<PhaseHook>,
    on_drain_progress: Option<(Duration, ProgressHook)>,
    admin: Option<(Listener, Admin)>,
}

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("listeners", &self.listeners)
            .field("http", &self.http)
            .field("drain_timeout", &self.drain_timeout)
            .field("shutdown", &self.shutdown.as_ref().map(|_| "..."))
            .field("force", &self.force.as_ref().map(|_| "..."))
            .field("conn_info", &self.conn_info)
            .field("peer_addr", &self.peer_addr)
            .field("conn_limits", &self.conn_limits)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("tls", &self.tls.is_some())
            .field(
                "listener_tls",
                &self
                    .listener_tls
                    .iter()
                    .map(|(id, _)| *id)
                    .collect::<Vec<_>>(),
            )
            .field("handshakes", &self.handshakes)
            .field("health", &self.health)
            .field("drain_delay", &self.drain_delay)
            .field("app_token", &self.app_token)
            .field("app_tasks", &self.app_tasks)
            .field("on_phase", &self.on_phase.as_ref().map(|_| "..."))
            .field(
                "on_drain_progress",
                &self.on_drain_progress.as_ref().map(|(every, _)| every),
            )
            .field("admin", &self.admin)
            .finish()
    }
}

impl Builder {
    /// Serves `admin` (`/metrics`, `/livez`, `/readyz`) on its own listener.
    ///
    /// The admin listener is outside everything that protects the application's listeners
    /// from clients (connection and rate limits): a scraper or a probe must get through when
    /// the server is overloaded. Its connections are not in the connection metrics, so that
    /// scrapes do not count themselves. It accepts from the start (`/readyz` answers 503
    /// until every listener accepts) until the drain of the application's connections has
    /// ended, so the not-ready state can be seen throughout the shutdown; then it closes,
    /// giving its own connections [`ADMIN_DRAIN_TIMEOUT`] to finish.
    ///
    /// Unless `admin` has its own checks, `/readyz` and `/livez` report the server's
    /// [`Health`] (the one given to [`health`](Self::health) or
    /// [`graceful`](Self::graceful), or one of the server's own).
    pub fn admin(mut self, listener: Listener, admin: Admin) -> Self {
        self.admin = Some((listener, admin));
        self
    }

    /// Adds a listener. Each listener gets its own accept loop.
    pub fn listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    /// Adds several listeners, for example every acceptor of one
    /// [`ListenerConfig::bind`](portcullis_listen::ListenerConfig::bind).
    pub fn listeners(mut self, listeners: impl IntoIterator<Item = Listener>) -> Self {
        self.listeners.extend(listeners);
        self
    }

    /// The readiness state this server reports: set ready once every listener accepts, and
    /// not ready at the first moment of a shutdown, before the drain delay and before any
    /// listener closes. Serve it as `/readyz` (and its liveness as `/livez`).
    ///
    /// Default: none (nothing is reported).
    pub fn health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// Runs `shutdown` as this server's graceful shutdown: its triggers (signals, handle),
    /// drain delay and deadline, readiness, token and tracked tasks. The same as setting
    /// [`shutdown`](Self::shutdown), [`force`](Self::force),
    /// [`drain_delay`](Self::drain_delay), [`drain_timeout`](Self::drain_timeout),
    /// [`health`](Self::health), [`shutdown_token`](Self::shutdown_token) and
    /// [`track_tasks`](Self::track_tasks) one by one.
    ///
    /// ```no_run
    /// # async fn run(listener: portcullis_listen::Listener) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use portcullis_shutdown::Shutdown;
    ///
    /// let shutdown = Shutdown::from_signals()?.drain_delay(Duration::from_secs(5));
    /// let health = shutdown.health(); // serve it as /readyz
    /// let service = tower::service_fn(|_request: http::Request<hyper::body::Incoming>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    /// });
    /// let report = portcullis_server::Server::builder()
    ///     .listener(listener)
    ///     .graceful(shutdown)
    ///     .serve(service)
    ///     .await?;
    /// # let _ = (health, report);
    /// # Ok(()) }
    /// ```
    pub fn graceful(self, shutdown: portcullis_shutdown::Shutdown) -> Self {
        let parts = shutdown.into_parts();
        let mut builder = self
            .drain_delay(parts.drain_delay)
            .drain_timeout(parts.drain_timeout)
            .health(parts.health)
            .shutdown_token(parts.token)
            .track_tasks(parts.tasks);
        builder.shutdown = Some(parts.trigger);
        builder.force = Some(parts.force);
        builder
    }

    /// A token cancelled at the first moment of a shutdown (together with readiness going
    /// off), for application code that must wind down by itself: long-lived responses (SSE,
    /// streams: see `portcullis_shutdown::end_on_shutdown`), background loops, upgraded connections.
    /// Their connections are still drained, and forced at the drain deadline.
    ///
    /// Default: none.
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.app_token = Some(token);
        self
    }

    /// Called at every shutdown phase change (running, delay, drain, done), for example to
    /// report progress to a service manager (`STATUS=` under systemd). Runs on the server's
    /// runtime: keep it quick and non-blocking.
    ///
    /// Default: none. The phases are also visible as the
    /// [`SHUTDOWN_PHASE`](crate::metrics::SHUTDOWN_PHASE) gauge.
    pub fn on_phase(mut self, hook: impl Fn(ShutdownPhase) + Send + Sync + 'static) -> Self {
        self.on_phase = Some(Arc::new(hook));
        self
    }

    /// Called every `every` during the drain with how many connections are still open, once
    /// as the drain begins and once more when it has ended, for example to report progress to
    /// a service manager (`STATUS=` under systemd) or a log. Runs on the server's runtime:
    /// keep it quick and non-blocking.
    ///
    /// Default: none. The count is also the [`CONNECTIONS_ACTIVE`](crate::metrics::CONNECTIONS_ACTIVE)
    /// gauge.
    pub fn on_drain_progress(
        mut self,
        every: Duration,
        hook: impl Fn(DrainProgress) + Send + Sync + 'static,
    ) -> Self {
        self.on_drain_progress = Some((every, Arc::new(hook)));
        self
    }

    /// Background tasks the application spawns on `tasks` (`TaskTracker::spawn`): the drain
    /// waits for them too, under the same deadline. Tasks still running at the deadline are
    /// not aborted (a tracker cannot abort); they are reported in
    /// [`ServeReport::tasks_left`] and make the run unclean.
    ///
    /// Default: none.
    pub fn track_tasks(mut self, tasks: TaskTracker) -> Self {
        self.app_tasks = Some(tasks);
        self
    }

    /// How long the server keeps accepting and serving after the shutdown began, with
    /// readiness already off, before its listeners close.
    ///
    /// Default 0 s: without a load balancer that polls readiness there is nobody to wait for.
    /// Behind Kubernetes set a few seconds: endpoints are removed at the same time as the
    /// pod gets SIGTERM, and load balancers keep sending new connections until the removal
    /// has propagated; closing the listeners at once would refuse them. A force trigger ends
    /// the delay at once.
    pub fn drain_delay(mut self, delay: Duration) -> Self {
        self.drain_delay = delay;
        self
    }

    /// Whether every request carries a [`ConnInfo`] extension (peer and local address,
    /// listener).
    ///
    /// Default `true`: handlers, logs and per-client limits need the peer address. Turning it
    /// off saves an allocation-heavy extension insert per request (about 800 instructions)
    /// for applications that never read it.
    pub fn conn_info(mut self, enabled: bool) -> Self {
        self.conn_info = enabled;
        self
    }

    /// Whether every request carries a [`PeerAddr`] extension: the client's address (the one
    /// a trusted proxy's PROXY header names, or the TCP peer), for handlers that want it.
    ///
    /// Default `true`. portcullis-limit's rate limit layer does not need it: every connection task
    /// (and every HTTP/2 stream task) runs inside a [`PeerAddr::scope`], which the layer reads
    /// at no per-request cost. Turning it off saves an extension insert (an allocation) on
    /// every request.
    pub fn peer_addr(mut self, enabled: bool) -> Self {
        self.peer_addr = enabled;
        self
    }

    /// The connection caps, checked in the accept loop right after accept, before anything
    /// is read from the connection. A connection over a cap is closed at once (so the listen
    /// backlog never fills with connections waiting for a place) and counted in
    /// `portcullis_limit_connections_rejected_total` by reason; its place is given back when the
    /// connection ends, however it ends.
    ///
    /// Default: [`ConnLimiter::new`]`(`[`DEFAULT_MAX_CONNECTIONS`]`)`, a global cap of 10 000 and
    /// no per-client cap. Shared by every listener (and every core of
    /// [`serve_per_core`](Self::serve_per_core)). With PROXY protocol, the per-client cap
    /// applies to the client named in the header, once it is read.
    pub fn connection_limits(mut self, limits: ConnLimiter) -> Self {
        self.conn_limits = limits;
        self
    }

    /// Reads a PROXY protocol (v1 or v2) header on connections from the trusted ranges of
    /// `proxy`, in the connection's task and under the header's own deadline; the address in
    /// the header becomes the connection's peer everywhere after that ([`ConnInfo::peer`],
    /// [`PeerAddr`], the per-client connection cap). A connection from a trusted peer whose
    /// header is missing, malformed or late is closed and counted in
    /// `portcullis_listen_proxy_header_errors_total`. Connections from other peers are served as they
    /// are, without reading a header: a client that is not a trusted proxy cannot name its own
    /// address.
    pub fn proxy_protocol(mut self, proxy: ProxyProtocol) -> Self {
        self.proxy_protocol = Some(proxy);
        self
    }

    /// Serves TLS on every listener of the application (not on the admin listener), except
    /// those added with [`tls_listeners`](Self::tls_listeners), which use their own acceptor.
    ///
    /// The handshake runs in the connection's task, never in the accept loop, after the
    /// connection caps and the PROXY header: a place under the handshake cap
    /// ([`handshake_limits`](Self::handshake_limits)) is waited for, then the handshake runs,
    /// both under one deadline: the acceptor's handshake timeout (10 s by default,
    /// [`TlsConfig::handshake_timeout`](portcullis_tls::TlsConfig::handshake_timeout)). The header
    /// and idle deadlines of [`HttpConfig`] start after it. A failed
    /// handshake closes the connection and is counted by reason in
    /// `portcullis_tls_handshake_failures_total`. The protocol ALPN agreed on (`h2` or `http/1.1`,
    /// both offered by default) is the one served: a client that agreed on one and speaks the
    /// other is closed. Without ALPN it is told from the first bytes. A client certificate that was
    /// verified (mTLS) reaches every request of the connection as a
    /// [`ClientCertificates`](portcullis_tls::ClientCertificates) extension.
    ///
    /// The acceptor keeps serving whatever its reload triggers
    /// ([`TlsAcceptor::watch`], [`TlsAcceptor::reload_on_sighup`], [`TlsAcceptor::reload`])
    /// swap in; connections already open keep the certificate they started with.
    pub fn tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Adds listeners that serve TLS with `acceptor`, whatever [`tls`](Self::tls) says for the
    /// others: one server can serve plain HTTP on one port (to redirect, say) and TLS on
    /// another, or different certificates on different listeners. Everything
    /// [`tls`](Self::tls) says about the handshake applies.
    pub fn tls_listeners(
        mut self,
        listeners: impl IntoIterator<Item = Listener>,
        acceptor: TlsAcceptor,
    ) -> Self {
        for listener in listeners {
            self.listener_tls.push((listener.id(), acceptor.clone()));
            self.listeners.push(listener);
        }
        self
    }

    /// The cap on concurrent TLS handshakes, shared by every listener (and every core).
    /// Default: [`HandshakeLimiter::new`]`(`[`DEFAULT_MAX_HANDSHAKES`]`)`. A connection that
    /// finds no place within the handshake timeout is closed and counted as
    /// `portcullis_limit_connections_rejected_total{reason="max_handshakes"}`.
    pub fn handshake_limits(mut self, limits: HandshakeLimiter) -> Self {
        self.handshakes = limits;
        self
    }

    /// Sets the HTTP settings; see [`HttpConfig`] for each default.
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = http;
        self
    }

    /// How long the drain may take before the remaining connections are closed by force.
    ///
    /// Default 30 s, Kubernetes' default termination grace period: long enough for ordinary
    /// requests to finish, and the point after which the orchestrator kills the process anyway.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The future whose completion starts the shutdown: the listeners close at once, idle
    /// connections close, in-flight requests finish (HTTP/1 answers carry `Connection: close`,
    /// HTTP/2 connections get GOAWAY), and whatever is still open at the drain deadline is
    /// closed by force.
    ///
    /// Any future works: a signal, a channel, a `CancellationToken`'s `cancelled_owned()`.
    pub fn shutdown(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = Some(Box::pin(signal));
        self
    }

    /// The future whose completion cuts the drain short: every connection still open is
    /// closed at once. Typically the second SIGTERM. If it completes before the shutdown
    /// future, the shutdown starts and is forced at once.
    pub fn force(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.force = Some(Box::pin(signal));
        self
    }

    /// The local addresses of the listeners added so far, with real ports when port 0 was
    /// bound.
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().clone())
            .collect()
    }

    /// Serves `service` on every listener until the shutdown future completes, then drains.
    ///
    /// `service` is any tower service over `http::Request<hyper::body::Incoming>`, an axum
    /// `Router` included. It is cloned for every request. A panic in it, and an error it
    /// returns, become a 500 answer for that one request; a panic while producing a response
    /// body cuts that response short. The connection and the server live on either way.
    ///
    /// # Errors
    ///
    /// [`Error::NoListeners`] when no listener was added. Failures of individual connections
    /// are never errors of the server: they are counted and logged.
    ///
    /// # Panics
    ///
    /// Needs a tokio runtime with its I/O and time drivers enabled (`#[tokio::main]` has both):
    /// connection deadlines are tokio timers, and tokio panics on a timer without a time
    /// driver.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the returned future stops everything it started: the accept loops end (the
    /// listeners close) and every connection is closed at once, as if forced.
    pub async fn serve<S, B>(self, service: S) -> Result<ServeReport, Error>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if self.listeners.is_empty() {
            return Err(Error::NoListeners);
        }
        let health = self
            .health
            .clone()
            .or_else(|| self.admin.is_some().then(Health::new));
        let admin = self
            .admin
            .map(|(listener, admin)| AdminServer::start(listener, admin, health.as_ref()));
        let mut tokens = Tokens::default();
        tokens.shutdown_metrics.set_hook(self.on_phase.clone());
        // Dropped early (the future was cancelled) or at the end: either way nothing of this
        // server outlives it.
        let _force_on_drop = ForceOnDrop(Arc::clone(&tokens.phase));
        let _triggers = tokens.watch(self.shutdown, self.force);
        let conn = ConnPolicy {
            info: self.conn_info,
            peer: self.peer_addr,
            limits: self.conn_limits,
            proxy: self.proxy_protocol.map(Arc::new),
            tls: self.tls,
            listener_tls: self.listener_tls.into(),
            handshakes: self.handshakes,
        };
        let core = Core::new(
            service,
            &self.http,
            conn,
            tokens.clone(),
            ServerMetrics::resolve(),
        );
        let accept_loops = core.start(self.listeners);
        if let Some(health) = &health {
            health.set_ready(true);
        }
        tokens.shutdown_metrics.enter(ShutdownPhase::Running);
        let progress = Progress::start(&tokens, self.on_drain_progress, self.drain_timeout);
        let delay_duration = tokens
            .announce_shutdown(health.as_ref(), self.app_token.as_ref(), self.drain_delay)
            .await;
        let drain_started = Instant::now();
        let deadline = drain_started + self.drain_timeout;
        let mut report = core.drain(accept_loops, self.drain_timeout).await;
        report.tasks_left = wait_for_tasks(self.app_tasks.as_ref(), deadline, &tokens).await;
        report.delay_duration = delay_duration;
        report.drain_duration = drain_started.elapsed();
        progress.finish(&tokens, report.drain_duration);
        tokens.finish(drain_started);
        if let Some(admin) = admin {
            admin.stop().await;
        }
        Ok(report)
    }

    /// Serves with one single-threaded runtime per core instead of one shared runtime.
    ///
    /// `threads` OS threads each run a current-thread tokio runtime with its own share of the
    /// listeners (add `threads` acceptors per address with
    /// [`ListenerConfig::acceptors`](portcullis_listen::ListenerConfig::acceptors), so the kernel
    /// spreads connections over them through `SO_REUSEPORT`) and its own service, built by
    /// `make_service` on that thread. Nothing is shared between cores on the request path,
    /// like nginx's worker processes. Blocks the calling thread until every core has drained.
    /// The listeners must have been created on a runtime that is still alive (they are moved
    /// off it here); the shutdown and force futures run on a small runtime of their own.
    ///
    /// # Errors
    ///
    /// [`Error::NoListeners`]; [`Error::InsideRuntime`] when called from within a tokio
    /// runtime; [`Error::Runtime`] or [`Error::Listener`] when a core cannot be started (the
    /// cores already started are stopped first); [`Error::CorePanicked`] when a core's thread
    /// panicked.
    pub fn serve_per_core<F, S, B>(
        self,
        threads: NonZeroUsize,
        make_service: F,
    ) -> Result<ServeReport, Error>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if self.listeners.is_empty() {
            return Err(Error::NoListeners);
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        let health = self
            .health
            .clone()
            .or_else(|| self.admin.is_some().then(Health::new));
        // Runs the triggers, the admin listener, and waits for the cores.
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let admin = match self.admin {
            Some((listener, admin)) => {
                let addr = listener.local_addr().clone();
                let detached = listener.detach().map_err(|source| Error::Listener {
                    addr: addr.clone(),
                    source,
                })?;
                let _on_waiter = waiter.enter();
                let listener = detached.attach().map_err(|error| Error::Listener {
                    addr,
                    source: std::io::Error::from(error),
                })?;
                Some((listener, admin))
            }
            None => None,
        };
        // Move every listener off the runtime it was created on; each core re-registers its
        // share on its own runtime.
        let mut shares: Vec<Vec<DetachedListener>> =
            (0..threads.get()).map(|_| Vec::new()).collect();
        for (i, listener) in self.listeners.into_iter().enumerate() {
            let addr = listener.local_addr().clone();
            let detached = listener
                .detach()
                .map_err(|source| Error::Listener { addr, source })?;
            shares[i % threads.get()].push(detached);
        }
        let all_phases: Arc<[Arc<Phase>]> = (0..threads.get()).map(|_| Phase::new()).collect();
        let all_open: Arc<[Arc<AtomicU64>]> = (0..threads.get())
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        let mut tokens = Tokens {
            open: Arc::clone(&all_open[0]),
            all_open: Arc::clone(&all_open),
            shutdown: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            phase: Arc::clone(&all_phases[0]),
            all_phases: Arc::clone(&all_phases),
            begin_drain: CancellationToken::new(),
            forced: CancellationToken::new(),
            shutdown_metrics: ShutdownMetrics::resolve(),
        };
        tokens.shutdown_metrics.set_hook(self.on_phase.clone());
        let make_service = Arc::new(make_service);
        let proxy = self.proxy_protocol.map(Arc::new);
        let listener_tls: Arc<[(ListenerId, TlsAcceptor)]> = self.listener_tls.into();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let mut cores = Cores {
            handles: Vec::new(),
            tokens: tokens.clone(),
        };
        for (index, share) in shares.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Runtime)?;
            let tokens = Tokens {
                phase: Arc::clone(&all_phases[index]),
                open: Arc::clone(&all_open[index]),
                ..tokens.clone()
            };
            let make_service = Arc::clone(&make_service);
            let http = self.http.clone();
            let drain_timeout = self.drain_timeout;
            let conn = ConnPolicy {
                info: self.conn_info,
                peer: self.peer_addr,
                limits: self.conn_limits.clone(),
                proxy: proxy.clone(),
                tls: self.tls.clone(),
                listener_tls: Arc::clone(&listener_tls),
                handshakes: self.handshakes.clone(),
            };
            let app_tasks = self.app_tasks.clone();
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("portcullis-core-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut listeners = Vec::with_capacity(share.len());
                        for detached in share {
                            let addr = detached.local_addr().clone();
                            match detached.attach() {
                                Ok(listener) => listeners.push(listener),
                                Err(error) => {
                                    let source = std::io::Error::from(error);
                                    let _ = ready.send(Err(Error::Listener { addr, source }));
                                    return ServeReport::default();
                                }
                            }
                        }
                        let _ = ready.send(Ok(()));
                        let core = Core::new(
                            make_service(),
                            &http,
                            conn,
                            tokens.clone(),
                            ServerMetrics::resolve(),
                        );
                        let accept_loops = core.start(listeners);
                        tokens.begin_drain.cancelled().await;
                        let deadline = Instant::now() + drain_timeout;
                        let mut report = core.drain(accept_loops, drain_timeout).await;
                        // Application tasks spawned on this core run on its runtime, which
                        // ends with this closure: wait for them here, under the deadline.
                        report.tasks_left =
                            wait_for_tasks(app_tasks.as_ref(), deadline, &tokens).await;
                        report
                    })
                })
                .map_err(Error::Runtime)?;
            cores.handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..cores.handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => break,
            }
        }
        let handles = std::mem::take(&mut cores.handles);
        let mut report = ServeReport::default();
        let mut failed = None;
        waiter.block_on(async {
            let admin =
                admin.map(|(listener, admin)| AdminServer::start(listener, admin, health.as_ref()));
            // The triggers keep running until every core has drained, so that a force
            // trigger is still heard during the drain.
            let _triggers = tokens.watch(self.shutdown, self.force);
            if let Some(health) = &health {
                health.set_ready(true);
            }
            tokens.shutdown_metrics.enter(ShutdownPhase::Running);
            let progress = Progress::start(&tokens, self.on_drain_progress, self.drain_timeout);
            let drain_timeout = self.drain_timeout;
            let drain_timing = {
                let tokens = tokens.clone();
                let health = health.clone();
                let app_token = self.app_token.clone();
                let delay = self.drain_delay;
                AbortOnDropHandle::new(tokio::spawn(async move {
                    let delay_duration = tokens
                        .announce_shutdown(health.as_ref(), app_token.as_ref(), delay)
                        .await;
                    (Instant::now(), drain_timeout, delay_duration)
                }))
            };
            for (core, handle) in handles.into_iter().enumerate() {
                match tokio::task::spawn_blocking(move || handle.join()).await {
                    Ok(Ok(part)) => report.merge(&part),
                    Ok(Err(payload)) => {
                        failed = Some(Error::CorePanicked {
                            core,
                            message: panic_message(payload.as_ref()).to_owned(),
                        });
                    }
                    Err(_) => {
                        failed = Some(Error::CorePanicked {
                            core,
                            message: "its join task failed".to_owned(),
                        });
                    }
                }
            }
            // Every core has drained, so the drain began and the announcer has its deadline
            // (unless the cores failed, and no shutdown may ever come).
            if failed.is_none()
                && let Ok((drain_started, drain_timeout, delay_duration)) = drain_timing.await
            {
                // Tasks spawned outside the cores (on this thread's runtime or elsewhere).
                let left = wait_for_tasks(
                    self.app_tasks.as_ref(),
                    drain_started + drain_timeout,
                    &tokens,
                )
                .await;
                report.tasks_left = report.tasks_left.max(left);
                report.delay_duration = delay_duration;
                report.drain_duration = drain_started.elapsed();
                progress.finish(&tokens, report.drain_duration);
                tokens.finish(drain_started);
            }
            if failed.is_some() {
                // A core died: whatever state the shutdown got to, nobody should keep
                // routing here or waiting for it.
                if let Some(health) = &health {
                    health.set_ready(false);
                }
                if let Some(token) = &self.app_token {
                    token.cancel();
                }
                tokens.shutdown_metrics.enter(ShutdownPhase::Done);
            }
            if let Some(admin) = admin {
                admin.stop().await;
            }
        });
        match failed {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

/// A hook called with the drain's progress.
type ProgressHook = Arc<dyn Fn(DrainProgress) + Send + Sync>;

/// How far a drain has got: the argument of [`Builder::on_drain_progress`].
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

/// The drain-progress reporter of a server: a task that calls the hook as the drain goes.
struct Progress {
    hook: Option<(ProgressHook, Duration)>,
    _task: Option<AbortOnDropHandle<()>>,
}

impl Progress {
    /// Starts a task that waits for the drain to begin, then reports every `every`.
    fn start(tokens: &Tokens, hook: Option<(Duration, ProgressHook)>, timeout: Duration) -> Self {
        let Some((every, hook)) = hook else {
            return Self {
                hook: None,
                _task: None,
            };
        };
        let task = {
            let hook = Arc::clone(&hook);
            let tokens = tokens.clone();
            tokio::spawn(async move {
                tokens.begin_drain.cancelled().await;
                let started = Instant::now();
                let mut ticks = tokio::time::interval(every.max(Duration::from_millis(1)));
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    ticks.tick().await;
                    let elapsed = started.elapsed();
                    hook(DrainProgress {
                        open: tokens.open_connections(),
                        elapsed,
                        remaining: timeout.saturating_sub(elapsed),
                        finished: false,
                    });
                }
            })
        };
        Self {
            hook: Some((hook, timeout)),
            _task: Some(AbortOnDropHandle::new(task)),
        }
    }

    /// Stops the reporting and makes the last call.
    fn finish(self, tokens: &Tokens, elapsed: Duration) {
        let Self { hook, _task } = self;
        drop(_task);
        if let Some((hook, timeout)) = hook {
            hook(DrainProgress {
                open: tokens.open_connections(),
                elapsed,
                remaining: timeout.saturating_sub(elapsed),
                finished: true,
            });
        }
    }
}

/// Waits for the application's tracked tasks until `deadline` (or a force); returns how many
/// are still running.
async fn wait_for_tasks(tasks: Option<&TaskTracker>, deadline: Instant, tokens: &Tokens) -> u64 {
    let Some(tasks) = tasks else {
        return 0;
    };
    tasks.close();
    tokio::select! {
        () = tasks.wait() => {}
        () = tokio::time::sleep_until(deadline) => {}
        () = tokens.forced.cancelled() => {}
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

/// The started cores of [`Builder::serve_per_core`]; on an early return, stops and joins them.
struct Cores {
    handles: Vec<std::thread::JoinHandle<ServeReport>>,
    tokens: Tokens,
}

impl Drop for Cores {
    fn drop(&mut self) {
        if self.handles.is_empty() {
            return;
        }
        self.tokens.shutdown.cancel();
        self.tokens.begin_drain.cancel();
        for phase in self.tokens.all_phases.iter() {
            phase.advance(Stage::Forced);
        }
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

/// Signals of a server's shutdown. In per-core mode each core has its own phase (nothing on
/// the request path is shared between cores); the shutdown token and the force trigger reach
/// all of them.
#[derive(Clone, Debug)]
struct Tokens {
    /// Starts the shutdown (of every core, in per-core mode).
    shutdown: CancellationToken,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    /// Draining: every connection finishes gracefully; forced: every connection closes now.
    phase: Arc<Phase>,
    /// Every core's phase (just `phase` outside per-core mode), for the force trigger.
    all_phases: Arc<[Arc<Phase>]>,
    /// The drain delay is over: stop accepting and drain (every core, in per-core mode).
    begin_drain: CancellationToken,
    /// The force trigger fired.
    forced: CancellationToken,
    /// The phase and drain-duration gauges (shared by every core).
    shutdown_metrics: ShutdownMetrics,
    /// Connections open on this core.
    open: Arc<AtomicU64>,
    /// Connections open on every core (just `open` outside per-core mode).
    all_open: Arc<[Arc<AtomicU64>]>,
}

impl Default for Tokens {
    fn default() -> Self {
        let phase = Phase::new();
        let open = Arc::new(AtomicU64::new(0));
        Self {
            all_open: Arc::from([Arc::clone(&open)]),
            open,
            shutdown: CancellationToken::new(),
            stop_accepting: CancellationToken::new(),
            all_phases: Arc::from([Arc::clone(&phase)]),
            phase,
            begin_drain: CancellationToken::new(),
            forced: CancellationToken::new(),
            shutdown_metrics: ShutdownMetrics::resolve(),
        }
    }
}

/// Forces the drain when dropped: nothing a server started outlives its `serve` future.
struct ForceOnDrop(Arc<Phase>);

impl Drop for ForceOnDrop {
    fn drop(&mut self) {
        self.0.advance(Stage::Forced);
    }
}

impl Tokens {
    /// Connections open on every core.
    fn open_connections(&self) -> u64 {
        self.all_open
            .iter()
            .map(|open| open.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits for the shutdown trigger, turns readiness off at once, keeps serving for the
    /// drain delay (cut short by the force trigger), then starts the drain.
    async fn announce_shutdown(
        &self,
        health: Option<&Health>,
        app_token: Option<&CancellationToken>,
        delay: Duration,
    ) -> Duration {
        self.shutdown.cancelled().await;
        let started = Instant::now();
        if let Some(health) = health {
            health.set_ready(false);
        }
        if let Some(token) = app_token {
            token.cancel();
        }
        if !delay.is_zero() {
            self.shutdown_metrics.enter(ShutdownPhase::Delay);
            tracing::info!(?delay, "shutting down: readiness off, still serving");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.forced.cancelled() => {}
            }
        }
        self.shutdown_metrics.enter(ShutdownPhase::Drain);
        self.begin_drain.cancel();
        started.elapsed()
    }

    /// Records the end of a drain that began at `drain_started`.
    fn finish(&self, drain_started: Instant) {
        self.shutdown_metrics.drained_in(drain_started.elapsed());
        self.shutdown_metrics.enter(ShutdownPhase::Done);
    }

    /// Spawns the tasks that turn the user's triggers into token cancellations. The tasks
    /// are aborted when the returned guard drops.
    fn watch(
        &self,
        shutdown: Option<ShutdownFuture>,
        force: Option<ShutdownFuture>,
    ) -> [AbortOnDropHandle<()>; 2] {
        let on_shutdown = self.shutdown.clone();
        let shutdown = shutdown.unwrap_or_else(|| Box::pin(std::future::pending()));
        let on_force = (
            self.shutdown.clone(),
            Arc::clone(&self.all_phases),
            self.forced.clone(),
        );
        let force = force.unwrap_or_else(|| Box::pin(std::future::pending()));
        [
            AbortOnDropHandle::new(tokio::spawn(async move {
                shutdown.await;
                on_shutdown.cancel();
            })),
            AbortOnDropHandle::new(tokio::spawn(async move {
                force.await;
                on_force.2.cancel();
                on_force.0.cancel();
                for phase in on_force.1.iter() {
                    phase.advance(Stage::Forced);
                }
            })),
        ]
    }
}

/// Everything one runtime needs to serve connections.
struct Core<S> {
    shared: Arc<Shared<S>>,
}

struct Shared<S> {
    service: S,
    builder: auto::Builder<TrackedExecutor>,
    http: HttpConfig,
    conn: ConnPolicy,
    tokens: Tokens,
    metrics: Arc<ServerMetrics>,
    /// Connection tasks, and the HTTP/2 stream tasks hyper spawns for them.
    tracker: TaskTracker,
    /// Connections accepted (counted in the accept loop, before their task runs).
    connections: AtomicU64,
    /// Connections that were open when the drain began and closed by themselves.
    drained: AtomicU64,
    /// Connections closed by force.
    forced: AtomicU64,
}

/// hyper's executor for HTTP/2 stream tasks: tracked like connections, so the drain waits for
/// them, and stopped when the drain is forced.
#[derive(Clone, Debug)]
struct TrackedExecutor {
    tracker: TaskTracker,
    phase: Arc<Phase>,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let phase = Arc::clone(&self.phase);
        // Stream tasks are spawned from their connection's task: they keep its peer scope.
        let peer = PeerAddr::current();
        self.tracker.spawn(async move {
            let run = async move {
                tokio::select! {
                    biased;
                    () = phase.reached(Stage::Forced) => {}
                    _ = future => {}
                }
            };
            match peer {
                Some(peer) => PeerAddr::scope(peer, run).await,
                None => run.await,
            }
        });
    }
}

impl<S, B> Core<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn new(
        service: S,
        http: &HttpConfig,
        conn: ConnPolicy,
        tokens: Tokens,
        metrics: ServerMetrics,
    ) -> Self {
        let tracker = TaskTracker::new();
        let executor = TrackedExecutor {
            tracker: tracker.clone(),
            phase: Arc::clone(&tokens.phase),
        };
        Core {
            shared: Arc::new(Shared {
                service,
                builder: hyper_builder(http, executor),
                http: http.clone(),
                conn,
                tokens,
                metrics: Arc::new(metrics),
                tracker,
                connections: AtomicU64::new(0),
                drained: AtomicU64::new(0),
                forced: AtomicU64::new(0),
            }),
        }
    }

    fn start(&self, listeners: Vec<Listener>) -> Vec<AbortOnDropHandle<()>> {
        listeners
            .into_iter()
            .map(|listener| {
                let shared = Arc::clone(&self.shared);
                AbortOnDropHandle::new(tokio::spawn(accept_loop(listener, shared)))
            })
            .collect()
    }

    async fn drain(
        self,
        accept_loops: Vec<AbortOnDropHandle<()>>,
        drain_timeout: Duration,
    ) -> ServeReport {
        let started = Instant::now();
        let shared = &self.shared;
        let tokens = &shared.tokens;
        tokens.stop_accepting.cancel();
        for accept_loop in accept_loops {
            // The loop drops its listener on exit: new connections are refused from here on.
            let _ = accept_loop.await;
        }
        tokens.phase.advance(Stage::Draining);
        shared.tracker.close();
        let finished = tokio::select! {
            () = shared.tracker.wait() => true,
            () = tokio::time::sleep(drain_timeout) => false,
            () = tokens.phase.reached(Stage::Forced) => false,
        };
        if !finished {
            tracing::warn!(
                open = shared.tracker.len(),
                "drain cut short; closing the remaining connections"
            );
            tokens.phase.advance(Stage::Forced);
            shared.tracker.wait().await;
        }
        ServeReport {
            connections: shared.connections.load(Ordering::Acquire),
            drained: shared.drained.load(Ordering::Acquire),
            forced: shared.forced.load(Ordering::Acquire),
            drain_duration: started.elapsed(),
            delay_duration: Duration::ZERO,
            tasks_left: 0,
        }
    }
}

fn hyper_builder(http: &HttpConfig, executor: TrackedExecutor) -> auto::Builder<TrackedExecutor> {
    let mut builder = auto::Builder::new(executor);
    builder
        .http1()
        .timer(TokioTimer::new())
        // portcullis enforces the head deadline itself, per request; hyper's would also close idle
        // keep-alive connections at the header timeout.
        .header_read_timeout(None)
        .max_buf_size(http.max_header_bytes)
        .keep_alive(true);
    if http.max_headers != HYPER_MAX_HEADERS {
        // Any explicit value makes hyper allocate and fill a header array for every request;
        // its built-in limit uses a fixed array on the stack. `tests/limits.rs` checks that the
        // built-in limit is still 100.
        builder.http1().max_headers(http.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(http.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(http.h2_max_local_error_reset_streams)
        .max_header_list_size(http.h2_max_header_list_size);
    builder
}

async fn accept_loop<S, B>(mut listener: Listener, shared: Arc<Shared<S>>)
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let stop = shared.tokens.stop_accepting.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        // The caps first, before anything is read; over a cap the connection is dropped
        // (closed) here, which is cheap, and counted by the limiter.
        let Ok(permit) = shared.conn.admit(&accepted.peer) else {
            continue;
        };
        // Never await anything per connection here: everything a connection waits for
        // (a PROXY header, protocol detection, its requests) happens in its own task.
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let task = serve_connection(Arc::clone(&shared), accepted, permit, Instant::now());
        shared.tracker.spawn(task);
    }
    tracing::debug!(listener = %listener.local_addr(), "listener closed");
}

/// Records how a connection ended when dropped, even if its task panicked.
struct Closing<'a, S> {
    shared: &'a Shared<S>,
    started: Instant,
    reason: CloseReason,
}

impl<S> Drop for Closing<'_, S> {
    fn drop(&mut self) {
        let shared = self.shared;
        let metrics = &shared.metrics;
        if self.reason == CloseReason::DrainForced {
            shared.forced.fetch_add(1, Ordering::Relaxed);
        } else if shared.tokens.phase.stage() >= Stage::Draining {
            shared.drained.fetch_add(1, Ordering::Relaxed);
        }
        shared.tokens.open.fetch_sub(1, Ordering::Relaxed);
        metrics.closed(self.reason).increment(1);
        metrics.active.decrement(1.0);
        metrics
            .duration
            .record(self.started.elapsed().as_secs_f64());
    }
}

async fn serve_connection<S, B>(
    shared: Arc<Shared<S>>,
    accepted: Accepted,
    mut permit: ConnPermit,
    started: Instant,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let metrics = &shared.metrics;
    shared.tokens.open.fetch_add(1, Ordering::Relaxed);
    metrics.active.increment(1.0);
    // Reports `Error` unless the driver finishes: a panic anywhere below still closes the
    // books on this connection.
    let mut closing = Closing {
        shared: &shared,
        started,
        reason: CloseReason::Error,
    };

    let Accepted {
        stream,
        mut peer,
        local,
        listener,
        ..
    } = accepted;
    let mut stream = Prefixed::new(stream);
    let mut proxied_by = None;
    if let Some(proxy) = shared.conn.proxy_for(&peer) {
        // Bounded by the header deadline; a forced drain does not wait for it.
        let read = tokio::select! {
            biased;
            () = shared.tokens.phase.reached(Stage::Forced) => {
                closing.reason = CloseReason::DrainForced;
                return;
            }
            read = proxy.read_header(stream.into_inner()) => read,
        };
        match read {
            Ok((header, rest)) => {
                stream = rest;
                if let Some(source) = header.source {
                    if let Err(rejected) = permit.add_client(source.ip()) {
                        tracing::debug!(%source, %rejected, "connection refused");
                        closing.reason = CloseReason::Refused;
                        return;
                    }
                    proxied_by = Some(std::mem::replace(&mut peer, Addr::Inet(source)));
                }
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "PROXY header refused; connection closed");
                closing.reason = CloseReason::Refused;
                return;
            }
        }
    }
    let mut agreed = None;
    let (stream, client_certificates) = match shared.conn.tls_for(listener) {
        None => (ConnIo::Left(stream), None),
        Some(tls) => {
            // One deadline for the wait for a place and the handshake together.
            let deadline = Instant::now() + tls.handshake_timeout();
            let handshake = async {
                let _place = shared
                    .conn
                    .handshakes
                    .acquire_within(deadline.saturating_duration_since(Instant::now()))
                    .await?;
                tls.accept_until(stream, deadline).await.ok()
            };
            // A forced drain does not wait for it.
            let accepted = tokio::select! {
                biased;
                () = shared.tokens.phase.reached(Stage::Forced) => {
                    closing.reason = CloseReason::DrainForced;
                    return;
                }
                accepted = handshake => accepted,
            };
            // Refused or failed: counted (and logged at debug) by the limiter or the acceptor.
            let Some(stream) = accepted else {
                closing.reason = CloseReason::Refused;
                return;
            };
            let certificates = ClientCertificates::from_stream(&stream);
            // The protocol ALPN agreed on is the one the client must speak; without one it
            // is told from the first bytes.
            agreed = match portcullis_tls::negotiated_alpn(&stream) {
                Some(b"h2") => Some(Agreed::Http2),
                Some(b"http/1.1") => Some(Agreed::Http1),
                // HTTP/2 over TLS needs ALPN (RFC 9113): a client that agreed on nothing
                // speaks HTTP/1.1, unless the server offers no ALPN at all.
                _ if tls.server_config().alpn_protocols.is_empty() => None,
                _ => Some(Agreed::Http1),
            };
            (ConnIo::Right(Box::new(stream)), certificates)
        }
    };
    let scope = peer.as_inet();
    let peer_addr = scope.filter(|_| shared.conn.peer).map(PeerAddr);
    let info = shared.conn.info.then_some(ConnInfo {
        peer,
        local,
        listener,
        proxied_by,
    });
    // The connection's own deadlines (greeting, header, idle) start now that PROXY and TLS
    // are done; `started` (accept) still dates the connection for its duration metric.
    let state = ConnState::new(Instant::now());
    // The caps' place travels with the I/O: an upgraded connection (a WebSocket, say) keeps
    // holding it after hyper hands the socket to the application.
    let io = TokioIo::new(
        TrackedIo::new(stream, Arc::clone(&state))
            .agreed(agreed)
            .holding(permit),
    );
    let service = ConnService::new(
        shared.service.clone(),
        Arc::clone(&state),
        Arc::clone(metrics),
        info,
        peer_addr,
        client_certificates,
    );
    let conn = shared.builder.serve_connection_with_upgrades(io, service);
    let driver = Driver::new(
        conn,
        state,
        shared.http.header_timeout,
        shared.http.idle_timeout,
        PhaseWatch::new(Arc::clone(&shared.tokens.phase)),
    );
    // The peer scope serves the rate limit layer without a per-request extension.
    closing.reason = match scope {
        Some(peer) => PeerAddr::scope(peer, driver).await,
        None => driver.await,
    };
}
