//! [`Server::builder`] and the [`Builder`]: what a server serves, and how.

use std::fmt;
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use portcullis_health::{Check, HealthChecks, Overload};
use portcullis_limit::{
    Bans, ConnLimiter, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HANDSHAKES, HandshakeLimiter, IpFilter,
};
use portcullis_listen::proxy::ProxyProtocol;
use portcullis_listen::{Addr, Listener, ListenerConfig, ListenerId};
use portcullis_metrics::Admin;
use portcullis_shutdown::{DrainProgress, Health, Shutdown, ShutdownPhase};
use portcullis_tls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HttpConfig;
use crate::error::Error;
use crate::policy::ConnPolicy;
use crate::upgrade::{Inherited, Upgrade};

/// Default for [`Builder::drain_timeout`]: 30 s, Kubernetes' default termination grace
/// period.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = portcullis_shutdown::DEFAULT_DRAIN_TIMEOUT;

/// An HTTP server over portcullis listeners; start with [`Server::builder`].
#[derive(Debug)]
pub struct Server(());

impl Server {
    /// Starts configuring a server.
    pub fn builder() -> Builder {
        Builder {
            listeners: Vec::new(),
            http: HttpConfig::default(),
            shutdown: Shutdown::new(),
            conn_info: true,
            peer_addr: true,
            conn_limits: None,
            proxy_protocol: None,
            tls: None,
            listener_tls: Vec::new(),
            handshakes: None,
            admin: None,
            run_block_tasks: true,
            filter: None,
            bans: None,
            reloaders: Vec::new(),
            health: HealthChecks::new(),
            overload: Overload::default(),
            upgrade: None,
            handed_over: None,
            systemd_sockets: None,
        }
    }
}

/// Configures and runs a [`Server`].
///
/// Required: at least one listener ([`listen`](Self::listen), [`listener`](Self::listener)).
/// Everything else has a default, documented with its setter.
///
/// The server owns the lifecycle of what it is given: it runs the blocks' background work
/// for as long as it serves (certificate file watching and SIGHUP reloads for every TLS
/// acceptor, the admin service's upkeep) and stops it with the drain; limiters keep
/// their own housekeeping. Nothing has to be spawned by hand; see
/// [`run_block_tasks`](Self::run_block_tasks) to run it elsewhere instead.
#[must_use = "a server builder does nothing until `serve` is called"]
pub struct Builder {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) http: HttpConfig,
    pub(crate) shutdown: Shutdown,
    conn_info: bool,
    peer_addr: bool,
    conn_limits: Option<ConnLimiter>,
    proxy_protocol: Option<ProxyProtocol>,
    tls: Option<TlsAcceptor>,
    listener_tls: Vec<(ListenerId, TlsAcceptor)>,
    handshakes: Option<HandshakeLimiter>,
    pub(crate) admin: Option<(Listener, Admin)>,
    pub(crate) run_block_tasks: bool,
    filter: Option<IpFilter>,
    pub(crate) bans: Option<Bans>,
    pub(crate) reloaders: Vec<Reloader>,
    pub(crate) health: HealthChecks,
    pub(crate) overload: Overload,
    pub(crate) upgrade: Option<Upgrade>,
    /// The sockets a previous generation handed over (read at the first need: `None`
    /// until then).
    pub(crate) handed_over: Option<Option<Inherited>>,
    /// systemd's sockets when they are a socket unit's (not a previous generation's in its
    /// descriptor store), for [`listen_inherited`](Self::listen_inherited).
    systemd_sockets: Option<portcullis_listen::SocketActivation>,
}

/// Something the application reloads on SIGHUP.
pub(crate) type Reloader = Arc<dyn Fn() + Send + Sync>;

impl fmt::Debug for Builder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Builder")
            .field("listeners", &self.listeners)
            .field("http", &self.http)
            .field("shutdown", &self.shutdown)
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
            .field("admin", &self.admin)
            .field("run_block_tasks", &self.run_block_tasks)
            .field("filter", &self.filter)
            .field("bans", &self.bans)
            .field("reloaders", &self.reloaders.len())
            .field("health", &self.health)
            .field("overload", &self.overload)
            .field("upgrade", &self.upgrade)
            .field("handed_over", &self.handed_over)
            .finish()
    }
}

/// Resolves `addr` to socket addresses.
fn resolve(addr: impl ToSocketAddrs + fmt::Display) -> Result<Vec<SocketAddr>, Error> {
    let input = addr.to_string();
    let resolved: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|error| Error::Address {
            input: input.clone(),
            reason: error.to_string(),
        })?
        .collect();
    if resolved.is_empty() {
        return Err(Error::Address {
            input,
            reason: "it resolves to no address".to_owned(),
        });
    }
    Ok(resolved)
}

impl Builder {
    /// Binds `addr` (`"0.0.0.0:8443"`, `"[::1]:0"`, `"localhost:8080"`: every address it
    /// resolves to) with the default socket options ([`ListenerConfig::default`]) and serves
    /// on it. Port 0 picks a free port: [`listen_addrs`](Self::listen_addrs) tells which.
    ///
    /// # Errors
    ///
    /// [`Error::Address`] when `addr` is no socket address; [`Error::Bind`] (naming the
    /// address) when it cannot be bound.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with its I/O driver (the listener registers with it).
    pub fn listen(self, addr: impl ToSocketAddrs + fmt::Display) -> Result<Self, Error> {
        self.listen_with(addr, &ListenerConfig::default())
    }

    /// [`listen`](Self::listen) with socket options of the caller's (backlog, acceptors,
    /// keepalive...).
    ///
    /// # Errors
    ///
    /// As [`listen`](Self::listen).
    pub fn listen_with(
        mut self,
        addr: impl ToSocketAddrs + fmt::Display,
        config: &ListenerConfig,
    ) -> Result<Self, Error> {
        for addr in resolve(addr)? {
            let (first, count) = (self.listeners.len(), config.acceptor_count().get());
            let taken = match self.handed_over()? {
                Some(inherited) => inherited.take_listeners(first, count, addr, config)?,
                None => None,
            };
            match taken {
                Some(taken) => self.listeners.extend(taken),
                None => self
                    .listeners
                    .extend(config.bind(addr).map_err(Error::Bind)?),
            }
        }
        Ok(self)
    }

    /// The sockets a previous generation of this server left to this process
    /// ([`upgrade`](Self::upgrade): handed over, or kept in systemd's descriptor store),
    /// found at the first call.
    pub(crate) fn handed_over(&mut self) -> Result<Option<&mut Inherited>, Error> {
        if self.handed_over.is_none() {
            let socket = self.upgrade.as_ref().and_then(Upgrade::socket_path);
            let (inherited, systemd) = Inherited::find(self.upgrade.is_some(), socket)?;
            self.handed_over = Some(inherited);
            self.systemd_sockets = systemd;
        }
        Ok(self.handed_over.as_mut().and_then(Option::as_mut))
    }

    /// Serves the sockets systemd passed to this process (socket activation: `LISTEN_FDS`,
    /// `LISTEN_PID`), with `config`'s per-connection options, if there are any. Returns the
    /// builder and whether any were taken, so an executable binds its own addresses only when
    /// it was not given sockets:
    ///
    /// ```no_run
    /// # fn run() -> Result<(), portcullis_server::Error> {
    /// let config = portcullis_listen::ListenerConfig::default();
    /// let (mut builder, inherited) = portcullis_server::Server::builder().listen_inherited(&config)?;
    /// if !inherited {
    ///     builder = builder.listen_with("127.0.0.1:8080", &config)?;
    /// }
    /// # let _ = builder; Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Activation`] when the variables are malformed; [`Error::Bind`] when an
    /// inherited socket cannot be adopted.
    pub fn listen_inherited(mut self, config: &ListenerConfig) -> Result<(Self, bool), Error> {
        // A previous generation's sockets are taken by name where the listeners are added.
        if self.handed_over()?.is_some() {
            return Ok((self, false));
        }
        let inherited = match self.systemd_sockets.take() {
            Some(sockets) => Some(sockets),
            // Without upgrades, `handed_over` leaves systemd's sockets alone.
            None if self.upgrade.is_none() => {
                portcullis_listen::SocketActivation::from_env().map_err(Error::Activation)?
            }
            None => None,
        };
        let Some(mut inherited) = inherited else {
            return Ok((self, false));
        };
        let listeners = inherited.take_all(config).map_err(Error::Bind)?;
        let any = !listeners.is_empty();
        self.listeners.extend(listeners);
        Ok((self, any))
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

    /// Serves the admin service on `addr` (`/metrics`, `/livez`, `/readyz`), with
    /// `/metrics` rendered by a Prometheus exporter that this call installs as the process's
    /// metrics recorder, with every portcullis metric described and registered (its
    /// histograms are bucketed as they are recorded: nothing grows when nobody scrapes). See
    /// [`admin_listener`](Self::admin_listener) for what the admin listener is exempt from.
    ///
    /// A library never installs the recorder itself; calling this from an executable asks
    /// for it. Give your own with [`admin_listener`](Self::admin_listener).
    ///
    /// # Errors
    ///
    /// [`Error::Address`], [`Error::Bind`] as for [`listen`](Self::listen);
    /// [`Error::Exporter`] when a metrics recorder is already installed.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime with its I/O driver.
    #[cfg(feature = "prometheus")]
    pub fn admin(mut self, addr: impl ToSocketAddrs + fmt::Display) -> Result<Self, Error> {
        let addr = resolve(addr)?[0];
        let handed_over = match self.handed_over()? {
            Some(inherited) => inherited.take_admin()?,
            None => None,
        };
        let listener = match handed_over {
            Some(listener) => listener,
            None => Listener::bind(addr).map_err(Error::Bind)?,
        };
        let exporter = portcullis_metrics::PrometheusExporter::install()
            .map_err(|error| Error::Exporter(Box::new(error)))?;
        crate::metrics::describe_all();
        crate::metrics::register_all();
        Ok(self.admin_listener(listener, Admin::new().prometheus(&exporter)))
    }

    /// Serves `admin` (`/metrics`, `/livez`, `/readyz`) on its own listener.
    ///
    /// The admin listener is outside everything that protects the application's listeners
    /// from clients (connection and rate limits): a scraper or a probe must get through when
    /// the server is overloaded. Its connections are not in the connection metrics, so that
    /// scrapes do not count themselves. It accepts from the start (`/readyz` answers 503
    /// until every listener accepts) until the drain of the application's connections has
    /// ended, so the not-ready state can be seen throughout the shutdown; then it closes,
    /// giving its own connections [`ADMIN_DRAIN_TIMEOUT`](crate::ADMIN_DRAIN_TIMEOUT) to
    /// finish. Its [upkeep](Admin::upkeep), if any, runs while the server serves.
    ///
    /// Unless `admin` has its own checks, `/readyz` and `/livez` report the server's
    /// [`Health`].
    pub fn admin_listener(mut self, listener: Listener, admin: Admin) -> Self {
        self.admin = Some((listener, admin));
        self
    }

    /// The local addresses of the application's listeners, each once, in the order added,
    /// with real ports when port 0 was bound: what to print as "listening on".
    #[must_use]
    pub fn listen_addrs(&self) -> Vec<Addr> {
        let mut addrs: Vec<Addr> = Vec::new();
        for listener in &self.listeners {
            if !addrs.contains(listener.local_addr()) {
                addrs.push(listener.local_addr().clone());
            }
        }
        addrs
    }

    /// Writes the lines that tell a person (or a test harness) where the server listens:
    /// `listening on http://IP:PORT` (`https://` on a TLS listener) once per address of
    /// [`listen_addrs`](Self::listen_addrs), then `admin on http://IP:PORT`, and flushes.
    /// IPv6 addresses are bracketed (`http://[::1]:8080`). Call it once every listener is
    /// bound: the addresses accept from that moment (connections wait in the backlog until
    /// serving starts).
    ///
    /// # Errors
    ///
    /// When `out` fails.
    pub fn announce(&self, mut out: impl std::io::Write) -> std::io::Result<()> {
        let mut lines = String::new();
        let mut seen: Vec<&Addr> = Vec::new();
        for listener in &self.listeners {
            let addr = listener.local_addr();
            if seen.contains(&addr) {
                continue;
            }
            seen.push(addr);
            let tls =
                self.tls.is_some() || self.listener_tls.iter().any(|(id, _)| *id == listener.id());
            let scheme = if tls { "https" } else { "http" };
            lines.push_str(&format!("listening on {scheme}://{addr}\n"));
        }
        if let Some(addr) = self.admin_addr() {
            lines.push_str(&format!("admin on http://{addr}\n"));
        }
        out.write_all(lines.as_bytes())?;
        out.flush()
    }

    /// The local address of every listener added so far (one per acceptor).
    #[must_use]
    pub fn local_addrs(&self) -> Vec<Addr> {
        self.listeners
            .iter()
            .map(|l| l.local_addr().clone())
            .collect()
    }

    /// The admin listener's local address, if there is one.
    #[must_use]
    pub fn admin_addr(&self) -> Option<&Addr> {
        self.admin
            .as_ref()
            .map(|(listener, _)| listener.local_addr())
    }

    /// Whether the server runs its blocks' background work itself: for every TLS acceptor
    /// it holds, the certificate file watcher and a reload on each SIGHUP (the handler is
    /// installed when serving starts, unless a [`Shutdown::from_signals`] catches SIGHUP
    /// already); the admin service's upkeep ([`Admin::upkeep`], for a recorder of the
    /// application's that needs one). All of it stops with the drain.
    /// Off, each acceptor keeps its own file watcher until the application calls `watch`.
    ///
    /// Default `true`. Turn it off only to run that work yourself
    /// ([`TlsAcceptor::watch`], [`TlsAcceptor::reload_on_sighup`], the admin service's
    /// upkeep).
    pub fn run_block_tasks(mut self, enabled: bool) -> Self {
        self.run_block_tasks = enabled;
        self
    }

    /// Runs `shutdown` as this server's graceful shutdown: its triggers (signals, handle),
    /// drain delay and deadline, readiness, token, tracked tasks, hooks and systemd
    /// reporting. Replaces what the shutdown setters below set before it: call it first.
    ///
    /// Default: [`Shutdown::new`], which only its handle would trigger (serve until the
    /// process ends).
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use portcullis_shutdown::Shutdown;
    ///
    /// let shutdown = Shutdown::from_signals()?.drain_delay(Duration::from_secs(5));
    /// let service = tower::service_fn(|_request: http::Request<portcullis_server::RequestBody>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    /// });
    /// let report = portcullis_server::Server::builder()
    ///     .listen("127.0.0.1:8080")?
    ///     .graceful(shutdown)
    ///     .serve(service)
    ///     .await?;
    /// # let _ = report;
    /// # Ok(()) }
    /// ```
    pub fn graceful(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Reports to systemd under `Type=notify`: `READY=1` once every listener accepts,
    /// `STOPPING=1` when the shutdown begins, `STATUS=` at every phase and every second of
    /// the drain, `WATCHDOG=1` pings when `WatchdogSec=` is set. Nothing happens outside
    /// systemd. See [`Shutdown::systemd`].
    pub fn systemd(mut self) -> Self {
        self.shutdown = self.shutdown.systemd();
        self
    }

    /// The readiness state this server reports: set ready once every listener accepts, and
    /// not ready at the first moment of a shutdown, before the drain delay and before any
    /// listener closes.
    ///
    /// Default: the shutdown's own (see [`Shutdown::health`]).
    pub fn health(mut self, health: Health) -> Self {
        self.shutdown = self.shutdown.with_health(health);
        self
    }

    /// A token cancelled at the first moment of a shutdown (together with readiness going
    /// off), for application code that must wind down by itself: long-lived responses (SSE,
    /// streams: see `portcullis_shutdown::end_on_shutdown`), background loops, upgraded
    /// connections. Their connections are still drained, and forced at the drain deadline.
    ///
    /// Default: the shutdown's own (see [`Shutdown::token`]).
    pub fn shutdown_token(mut self, token: CancellationToken) -> Self {
        self.shutdown = self.shutdown.with_token(token);
        self
    }

    /// Called at every lifecycle phase change (see [`ShutdownPhase`]). See
    /// [`Shutdown::on_phase`].
    pub fn on_phase(mut self, hook: impl Fn(ShutdownPhase) + Send + Sync + 'static) -> Self {
        self.shutdown = self.shutdown.on_phase(hook);
        self
    }

    /// Called every `every` during the drain with how many connections are still open, and
    /// once more when it has ended. See [`Shutdown::on_drain_progress`].
    pub fn on_drain_progress(
        mut self,
        every: Duration,
        hook: impl Fn(DrainProgress) + Send + Sync + 'static,
    ) -> Self {
        self.shutdown = self.shutdown.on_drain_progress(every, hook);
        self
    }

    /// Background tasks the application spawns on `tasks` (`TaskTracker::spawn`): the drain
    /// waits for them too, under the same deadline. Tasks still running at the deadline are
    /// not aborted (a tracker cannot abort); they are reported in
    /// [`ServeReport::tasks_left`](crate::ServeReport::tasks_left) and make the run unclean.
    ///
    /// Default: the shutdown's own (see [`Shutdown::tasks`]).
    pub fn track_tasks(mut self, tasks: TaskTracker) -> Self {
        self.shutdown = self.shutdown.with_tasks(tasks);
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
        self.shutdown = self.shutdown.drain_delay(delay);
        self
    }

    /// How long the drain may take before the remaining connections are closed by force.
    ///
    /// Default 30 s, Kubernetes' default termination grace period: long enough for ordinary
    /// requests to finish, and the point after which the orchestrator kills the process anyway.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown = self.shutdown.drain_timeout(timeout);
        self
    }

    /// Also starts the shutdown when `signal` completes: the listeners close (after the
    /// drain delay), idle connections close, in-flight requests finish (HTTP/1 answers carry
    /// `Connection: close`, HTTP/2 connections get GOAWAY), and whatever is still open at the
    /// drain deadline is closed by force.
    ///
    /// Any future works: a signal, a channel, a `CancellationToken`'s `cancelled_owned()`.
    pub fn shutdown(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = self.shutdown.trigger(signal);
        self
    }

    /// Also cuts the drain short when `signal` completes: every connection still open is
    /// closed at once. Typically the second SIGTERM. If it completes before the shutdown
    /// starts, the shutdown starts and is forced at once.
    pub fn force(mut self, signal: impl Future<Output = ()> + Send + 'static) -> Self {
        self.shutdown = self.shutdown.force_trigger(signal);
        self
    }

    /// Whether every request carries a [`ConnInfo`](crate::ConnInfo) extension (peer and
    /// local address, listener).
    ///
    /// Default `true`: handlers, logs and per-client limits need the peer address. Turning it
    /// off saves an allocation-heavy extension insert per request (about 800 instructions)
    /// for applications that never read it.
    pub fn conn_info(mut self, enabled: bool) -> Self {
        self.conn_info = enabled;
        self
    }

    /// Whether every request carries a [`PeerAddr`](portcullis_limit::PeerAddr) extension:
    /// the client's address (the one a trusted proxy's PROXY header names, or the TCP peer),
    /// for handlers that want it.
    ///
    /// Default `true`. portcullis-limit's rate limit layer does not need it: every connection
    /// task (and every HTTP/2 stream task) runs inside a
    /// [`PeerAddr::scope`](portcullis_limit::PeerAddr::scope), which the layer reads at no
    /// per-request cost. Turning it off saves an extension insert (an allocation) on every
    /// request.
    ///
    /// With the `axum` feature, every such request also carries axum's
    /// `ConnectInfo<SocketAddr>` with the same address, so handlers with a
    /// `ConnectInfo<SocketAddr>` extractor work as under
    /// `axum::serve(.., router.into_make_service_with_connect_info::<SocketAddr>())`; turning
    /// this off removes both. Requests on Unix sockets carry neither.
    pub fn peer_addr(mut self, enabled: bool) -> Self {
        self.peer_addr = enabled;
        self
    }

    /// The connection caps, checked in the accept loop right after accept, before anything
    /// is read from the connection. A connection over a cap is closed at once (so the listen
    /// backlog never fills with connections waiting for a place) and counted in
    /// `portcullis_limit_connections_rejected_total` by reason; its place is given back when
    /// the connection ends, however it ends.
    ///
    /// Default: a global cap of [`DEFAULT_MAX_CONNECTIONS`] (10 000) and no per-client cap.
    /// Shared by every listener (and every core of
    /// [`serve_per_core`](Self::serve_per_core)). With PROXY protocol, the per-client cap
    /// applies to the client named in the header, once it is read.
    pub fn connection_limits(mut self, limits: impl Into<ConnLimiter>) -> Self {
        self.conn_limits = Some(limits.into());
        self
    }

    /// Reads a PROXY protocol (v1 or v2) header on connections from the trusted ranges of
    /// `proxy`, in the connection's task and under the header's own deadline; the address in
    /// the header becomes the connection's peer everywhere after that
    /// ([`ConnInfo::peer`](crate::ConnInfo::peer), [`PeerAddr`](portcullis_limit::PeerAddr),
    /// the per-client connection cap). A connection from a trusted peer whose header is
    /// missing, malformed or late is closed and counted in
    /// `portcullis_listen_proxy_header_errors_total`. Connections from other peers are served
    /// as they are, without reading a header: a client that is not a trusted proxy cannot
    /// name its own address.
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
    /// [`TlsConfig::handshake_timeout`](portcullis_tls::TlsConfig::handshake_timeout)). The
    /// header and idle deadlines of [`HttpConfig`] start after it. A failed handshake closes
    /// the connection and is counted by reason in `portcullis_tls_handshake_failures_total`.
    /// The protocol ALPN agreed on (`h2` or `http/1.1`, both offered by default) is the one
    /// served: a client that agreed on one and speaks the other is closed. Without ALPN it is
    /// told from the first bytes. A client certificate that was verified (mTLS) reaches every
    /// request of the connection as a [`ClientCertificates`](portcullis_tls::ClientCertificates)
    /// extension.
    ///
    /// While it serves, the server watches the certificate files (a changed file, a symlink
    /// swap included, is live within about a second) and reloads on SIGHUP; a bad new pair
    /// keeps the old one in service. Connections already open keep the certificate they
    /// started with.
    pub fn tls(mut self, acceptor: TlsAcceptor) -> Self {
        self.tls = Some(acceptor);
        self
    }

    /// Adds listeners that serve TLS with `acceptor`, whatever [`tls`](Self::tls) says for the
    /// others: one server can serve plain HTTP on one port (to redirect, say) and TLS on
    /// another, or different certificates on different listeners. Everything
    /// [`tls`](Self::tls) says about the handshake and the reloads applies.
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
        self.handshakes = Some(limits);
        self
    }

    /// Refuses connections by the client's address, with CIDR allow and deny lists
    /// ([`FilterRules`](portcullis_limit::FilterRules)): checked in the accept loop before
    /// anything is read or written (before TLS), or, for a connection from a trusted PROXY
    /// protocol peer, as soon as the header names its client. A refused connection is closed
    /// and counted in `portcullis_limit_filter_rejected_total` by rule. Deny wins; with any
    /// allow rule, only the allowed ranges are served.
    ///
    /// Keep a clone of the [`IpFilter`] to reload the lists
    /// ([`IpFilter::replace`](portcullis_limit::IpFilter::replace)), from an
    /// [`on_reload`](Self::on_reload) hook for SIGHUP, say: connections already open stay
    /// open. The admin listener is never filtered. Default: no filter.
    pub fn filter(mut self, filter: impl Into<IpFilter>) -> Self {
        self.filter = Some(filter.into());
        self
    }

    /// Bans clients the server keeps refusing ([`Bans`], built from a
    /// [`BanPolicy`](portcullis_limit::BanPolicy)).
    ///
    /// The server strikes a client on each of its refusals: a per-client connection cap
    /// refusal, a failed TLS handshake, a malformed request (hyper's 400, 414 or 431), and
    /// every answer whose status the policy counts (429 by default, whatever layer wrote it)
    /// or that carries a [`Strike`](portcullis_limit::Strike) extension. A banned client's
    /// connections are closed at accept, before the connection caps, and counted in
    /// `portcullis_limit_ban_rejections_total{at="accept"}`; a banned client behind a trusted
    /// proxy (the policy's [`client_ip`](portcullis_limit::BanPolicy::client_ip)) gets 429
    /// with `Retry-After` on the proxy's connection, which stays open; a connection a client
    /// opened before its ban gets the same 429 on its next request, and closes. The admin listener
    /// serves the bans' API at `/bans` and is itself never banned. Default: no bans.
    pub fn bans(mut self, bans: Bans) -> Self {
        self.bans = Some(bans);
        self
    }

    /// Runs `checks` for as long as the server serves, and makes `/readyz` on the admin
    /// listener answer from them: 503 until every critical check has succeeded once and
    /// while one is down, 200 with non-critical checks down (degraded, listed by
    /// `/readyz?verbose`). A probe only reads their cached state: it never runs a check and
    /// never waits on a dependency. `/livez` never depends on them (it reads the event-loop
    /// lag probe, see [`LIVENESS_LAG_LIMIT`](crate::LIVENESS_LAG_LIMIT)). Keep a clone of
    /// `checks` to read their [`status`](HealthChecks::status) elsewhere; replaces the checks
    /// of [`health_check`](Self::health_check). Default: none (ready whenever serving).
    ///
    /// An [`Admin`] given a readiness check of its own ([`Admin::readiness`]) answers
    /// `/readyz` from that alone. In per-core mode the checks and the lag probe run on the
    /// runtime of the lifecycle and the admin listener.
    pub fn health_checks(mut self, checks: HealthChecks) -> Self {
        self.health = checks;
        self
    }

    /// The overload manager: how the server protects itself when descriptors, memory, its
    /// event loop or its connection cap run short (the monitors, triggers and actions of
    /// [`portcullis_health::overload`]). It samples on its own tick (no syscall on any
    /// request's path) for as long as the server serves; its actions never touch the admin
    /// listener, and `/readyz` answers 503 while it sheds requests or stops accepting.
    ///
    /// Default: [`Overload::default`], whose descriptor ladder reclaims idle keep-alive
    /// connections (longest idle first) at 90 % of the soft `RLIMIT_NOFILE`, so that idle
    /// clients holding every descriptor cannot lock new ones out; memory is watched against
    /// the cgroup's `memory.max` when there is one. [`Overload::off`] turns it off.
    ///
    /// In per-core mode the manager runs on the runtime of the lifecycle, and the event-loop
    /// lag it measures is that runtime's.
    pub fn overload(mut self, overload: Overload) -> Self {
        self.overload = overload;
        self
    }

    /// Zero-downtime upgrades: on SIGUSR2 (or the [`UpgradeHandle`](crate::UpgradeHandle)
    /// of `upgrade`), starts the new executable with every listening socket of this server,
    /// the admin listener's included, and drains only once the new process reports ready;
    /// if it exits or is not ready within the upgrade's timeout it is killed and this
    /// process serves on. See the [`upgrade`](crate::upgrade) module.
    ///
    /// The new process takes the sockets over where this one bound them:
    /// [`listen`](Self::listen), [`listen_with`](Self::listen_with) and
    /// [`admin`](Self::admin) adopt the socket the previous generation served as the same
    /// listener (the N-th added, on the same address) instead of binding it, and it reports
    /// ready once it serves and its readiness holds (every critical health check up, no
    /// overload refusal). Listeners given ready-made ([`listener`](Self::listener)) are
    /// handed over too, but a new process must adopt them itself.
    ///
    /// Default: off.
    pub fn upgrade(mut self, upgrade: Upgrade) -> Self {
        self.upgrade = Some(upgrade);
        self
    }

    /// Adds one check to those of [`health_checks`](Self::health_checks).
    pub fn health_check(self, check: Check) -> Self {
        self.health.add(check);
        self
    }

    /// Runs `reload` on every SIGHUP while the server serves (on the blocking pool), beside
    /// the reloads of the server's own blocks (TLS certificates): to re-read a file of the
    /// application's, such as the lists of an [`IpFilter`]. A server whose shutdown is not
    /// signal-driven installs its own SIGHUP handler for it.
    pub fn on_reload(mut self, reload: impl Fn() + Send + Sync + 'static) -> Self {
        self.reloaders.push(Arc::new(reload));
        self
    }

    /// Sets the HTTP settings; see [`HttpConfig`] for each default.
    pub fn http(mut self, http: HttpConfig) -> Self {
        self.http = http;
        self
    }

    /// The per-connection policy, with the default caps made now (at serve time, so their
    /// metric handles see the recorder installed by then).
    pub(crate) fn take_policy(&mut self) -> ConnPolicy {
        ConnPolicy {
            info: self.conn_info,
            peer: self.peer_addr,
            limits: self
                .conn_limits
                .take()
                .unwrap_or_else(|| ConnLimiter::new(DEFAULT_MAX_CONNECTIONS)),
            proxy: self.proxy_protocol.take().map(Arc::new),
            tls: self.tls.take(),
            listener_tls: std::mem::take(&mut self.listener_tls).into(),
            handshakes: self
                .handshakes
                .take()
                .unwrap_or_else(|| HandshakeLimiter::new(DEFAULT_MAX_HANDSHAKES)),
            filter: self.filter.take(),
            bans: self.bans.clone(),
        }
    }
}
