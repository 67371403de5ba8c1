//! A hardened HTTP/1.1 + HTTP/2 server for any tower service, composed from portcullis's
//! building blocks over hyper.
//!
//! `portcullis-server` takes listeners and an application service (an axum `Router` or any
//! `tower::Service<http::Request<portcullis_server::RequestBody>>`) and serves it with every
//! connection phase under a deadline:
//!
//! ```text
//! Listener::accept()        portcullis-listen: socket options, EMFILE-proof backoff, never exits
//!  -> filter, bans          portcullis-limit: CIDR allow/deny, temporary bans, synchronous
//!  -> connection caps       portcullis-limit: global and per-client, before anything is read
//!  -> spawn connection task (the accept loop never awaits anything per connection)
//!  -> PROXY header          portcullis-listen: from trusted proxies only; the client it
//!                           names is filtered, checked for a ban and capped here
//!  -> TLS handshake         portcullis-tls: capped, under one deadline, ALPN enforced
//!  -> hyper-util auto       HTTP/1.1 or HTTP/2 (h2c prior knowledge), timer installed
//!  -> portcullis deadlines  greeting / request head: header timeout; between requests: idle
//!  -> application service   panics and errors become a 500 for that request only
//!  -> minimum data rates    the request body (408 below it) and the connection's writes
//! lifecycle                 portcullis-shutdown: readiness off -> delay -> drain -> deadline
//! admin listener            /metrics /livez /readyz (and /bans), outside every limit and ban,
//!                           up through the drain
//! ```
//!
//! The server owns the lifecycle of what it is given: for as long as it serves it runs the
//! blocks' background work (certificate file watching and SIGHUP reloads for every TLS
//! acceptor, the exporter's upkeep behind the admin listener), reports to systemd when asked
//! ([`Builder::systemd`]), and stops all of it with the drain. A SIGHUP never ends a server
//! started with signals. Nothing has to be spawned by hand. With [`Builder::upgrade`] a
//! SIGUSR2 replaces the process without refusing a connection: the [`upgrade`] module hands
//! every listening socket to the new executable and drains only once it reports ready.
//!
//! # Example
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use portcullis_server::Server;
//! use portcullis_shutdown::Shutdown;
//!
//! # async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
//! let service = tower::service_fn(|_request: Request<portcullis_server::RequestBody>| async {
//!     Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("hello\n"))))
//! });
//! let report = Server::builder()
//!     .listen("127.0.0.1:8080")?
//!     .admin("127.0.0.1:9090")? // /metrics /livez /readyz, Prometheus exporter installed
//!     .graceful(Shutdown::from_signals()?) // SIGTERM/SIGINT drain, a second one forces
//!     .systemd()
//!     .serve(service)
//!     .await?;
//! Ok(report.exit_code()) // 0 after a clean drain, 1 when connections were forced closed
//! # }
//! ```
//!
//! # Design
//!
//! hyper decides what a connection does; portcullis decides how long it may take. An I/O
//! wrapper sees the bytes read, a service wrapper sees each request start and each response
//! body end, and the connection's driver turns those edges into one deadline (see
//! [`HttpConfig`]): header timeout from the first byte of a request head to the service call,
//! idle timeout from the end of the last response to the next request. hyper's own header
//! timer is switched off because it would close idle keep-alive connections at the header
//! timeout. Every close is counted by reason (see [`metrics`]).
//!
//! After the head, minimum data rates take over (Kestrel's model; see [`MinRate`]): the
//! application reads a [`RequestBody`] that counts the bytes against the time it waited for
//! them, and the I/O wrapper gives each write the socket does not take at once a deadline
//! that grows with its size. A route can have rates of its own ([`MinRateLayer`]).
//!
//! The server's phase is portcullis-shutdown's [`Lifecycle`](portcullis_shutdown::Lifecycle):
//! one atomic that every connection reads on each poll, with a wake-up per phase. The
//! per-connection state shared with HTTP/2 stream tasks is checked with loom
//! (`RUSTFLAGS="--cfg portcullis_loom" cargo test -p portcullis-server --lib loom`), the
//! phase in portcullis-shutdown.
//!
//! hyper's HTTP/2 stream tasks run on a tracked executor: the drain waits for them, and a
//! forced drain stops them. Connections upgraded away from HTTP (`101 Switching Protocols`)
//! leave portcullis's tracking at the upgrade; the application owns them from there.
//!
//! The code reads in pipeline order: `builder` (what to serve), `serve` and `per_core`
//! (the lifecycle around one runtime or one per core), `accept` (accept loops and the
//! drain), `connection` (the stages of one connection), `driver` and `state` (its
//! deadlines), `rate` (the minimum data rates), `service` and `body` (the application's
//! side), `blocks` (their background work), `admin`.
//!
//! # Dependencies in the public API
//!
//! The other portcullis crates' types appear throughout (`Listener`, `ListenerConfig`,
//! `ConnLimiter`, `TlsAcceptor`, `Admin`, `Shutdown`...). Besides those and std's:
//!
//! - **hyper**: [`RequestBody`] wraps `hyper::body::Incoming`; [`BodyError::Hyper`] carries
//!   a `hyper::Error`.
//! - **http**, **http-body** and **bytes**: responses are `http::Response<B>` with
//!   `B: http_body::Body<Data = `[`Bytes`]`>` (`Bytes` re-exported); [`ResponseBody`]
//!   implements `Body`.
//! - **tower**: the application is a `tower::Service`.
//! - **tokio-util**: [`CancellationToken`] ([`Builder::shutdown_token`]) and [`TaskTracker`]
//!   ([`Builder::track_tasks`]), re-exported (they are portcullis-shutdown's re-exports).
//! - **tokio**: the server runs on tokio; [`Builder::serve_per_core`] starts its own
//!   runtimes.
//!
//! hyper-util is used inside and never appears in the API.
//!
//! # Crate features
//!
//! - `aws-lc-rs` (default) or `ring`: the crypto provider of portcullis-tls.
//! - `prometheus` (default): [`Builder::admin`] installs a Prometheus exporter.
//! - `axum`: every request from an internet socket also carries axum's
//!   `ConnectInfo<SocketAddr>` (the client's address, after a trusted PROXY header), so
//!   handlers with a `ConnectInfo<SocketAddr>` extractor work unchanged
//!   ([`Builder::peer_addr`]).
//!
//! HTTP/1.1 and HTTP/2 are always on.

#![forbid(unsafe_code)]

mod accept;
mod admin;
mod blocks;
mod body;
mod builder;
mod config;
mod connection;
mod driver;
mod error;
mod host;
mod info;
mod io;
mod loom;
pub mod metrics;
mod monitoring;
mod per_core;
mod policy;
mod rate;
mod report;
mod serve;
mod service;
mod state;
pub mod upgrade;

pub use admin::ADMIN_DRAIN_TIMEOUT;
pub use body::{BodyPanicked, RequestBodyTooSlow, ResponseBody};
pub use builder::{Builder, DEFAULT_DRAIN_TIMEOUT, Server};
pub use config::{DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, HttpConfig};
pub use error::Error;
pub use host::HostProblem;
pub use monitoring::LIVENESS_LAG_LIMIT;
pub use rate::{
    BodyError, DEFAULT_MIN_RATE, MinRate, MinRateFuture, MinRateLayer, MinRateService, RATE_TICK,
    RequestBody,
};

/// Internals public only for the fuzz targets (`fuzz/fuzz_targets/`): not part of the
/// API, no stability promise.
#[doc(hidden)]
pub mod internal {
    pub use crate::host::split as split_host;
    pub use crate::rate::{FrameScanner as H2FrameScanner, H2Event};
}
pub use info::ConnInfo;
pub use portcullis_shutdown::{DrainProgress, ShutdownPhase};
pub use report::ServeReport;
pub use upgrade::{Upgrade, UpgradeHandle};

/// The data of response bodies, from the `bytes` crate.
pub use bytes::Bytes;
/// The shutdown token and the tracked tasks' types, from tokio-util.
pub use portcullis_shutdown::{CancellationToken, TaskTracker};

/// The boxed error type of bodies and services, as in tower and hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
