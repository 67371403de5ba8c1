//! portcullis: hardened production servers for the tokio / hyper / tower ecosystem.
//!
//! portcullis is a set of small crates that an application composes into its own server. This
//! umbrella crate re-exports them behind one feature each:
//!
//! | feature | module | crate | what it does |
//! |---|---|---|---|
//! | `listen` | `listen` | `portcullis-listen` | socket tuning, reuseport acceptors, socket activation, an accept loop that survives descriptor exhaustion |
//! | `limit` | `limit` | `portcullis-limit` | rate limits with unspoofable client identity and bounded memory, connection caps, load shedding |
//! | `server` | `server` | `portcullis-server` | HTTP/1.1 + HTTP/2 over hyper for any tower service, every connection phase under a deadline, graceful drain, the blocks' background work |
//! | `shutdown` | `shutdown` | `portcullis-shutdown` | the shutdown lifecycle (running, delay, drain, forced, done), signals, readiness, systemd notify and watchdog |
//! | `tls` | `tls` | `portcullis-tls` | rustls with secure defaults, PEM loading with clear errors, SNI, mTLS, certificate hot reload, a handshake acceptor with a deadline |
//! | `metrics` | `metrics` | `portcullis-metrics` | the HTTP metrics layer with bounded labels, the admin service (`/metrics`, `/livez`, `/readyz`), the Prometheus exporter |
//! | `config` | `config` | (this crate) | every setting of the composed server from one TOML file, checked for errors and dangerous combinations, applied to a builder |
//!
//! The server owns the lifecycle of everything it is handed: certificate watching and SIGHUP
//! reloads, the exporter's upkeep, the limiters' housekeeping, systemd notifications. Nothing
//! has to be spawned by hand to keep a block working. Each leaf crate also stands alone, for
//! an application with its own hyper loop.
//!
//! New here? The `tour` module (documented with the `full` and `axum` features) walks from an
//! axum router to a production server one block at a time.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use portcullis::prelude::*;
//!
//! # async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
//! let app = tower::ServiceBuilder::new()
//!     .layer(HttpMetricsLayer::new()) // bounded labels: method, status, route template
//!     .layer(
//!         RateLimitLayer::per_client("100/s burst 20".parse::<Quota>()?)
//!             .trusted_proxies(["10.0.0.0/8".parse()?])
//!             .layer(), // 429 + Retry-After + RateLimit fields
//!     )
//!     .service_fn(|_request: http::Request<portcullis::server::RequestBody>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(
//!             http_body_util::Full::new(bytes::Bytes::from_static(b"hello\n")),
//!         ))
//!     });
//!
//! let report: ServeReport = Server::builder()
//!     .listen("0.0.0.0:8443")? // default socket options
//!     .tls(TlsConfig::from_pem_files("cert.pem", "key.pem")?.build()?) // watched + SIGHUP, by the server
//!     .connection_limits(ConnLimits::new(10_000).per_client(100.try_into()?))
//!     .http(HttpConfig::default().header_timeout(Duration::from_secs(5)))
//!     .admin("127.0.0.1:9090")? // /metrics /livez /readyz, Prometheus exporter installed
//!     .graceful(Shutdown::from_signals()?.drain_delay(Duration::from_secs(5)))
//!     .systemd() // READY/STOPPING/STATUS/WATCHDOG when under systemd
//!     .serve(app) // runs every background task until the drain ends
//!     .await?;
//! Ok(report.exit_code()) // 0 clean, 1 forced
//! # }
//! ```
//!
//! # Metrics
//!
//! [`Builder::admin`](server::Builder::admin) installs the Prometheus exporter, describes
//! every portcullis metric and registers the series of their closed label sets (as 0), so
//! alerts see counters that exist from the start. An executable that installs its own
//! recorder calls [`server::metrics::describe_all`] and [`server::metrics::register_all`]
//! itself, and hands its [`Admin`](metrics::Admin) to
//! [`Builder::admin_listener`](server::Builder::admin_listener). Every handle is resolved
//! lazily, so blocks built before the recorder was installed still report to it.
//!
//! # Crate features
//!
//! - `server` (default): `server`, and `listen`, `limit`, `tls`, `shutdown`, `metrics` and
//!   `health` with it.
//! - `health`: `health`, dependency checks run in the background that `/readyz` only reads,
//!   and the event-loop lag probe behind `/livez`.
//! - `limit`: `limit` alone.
//! - `tls`: `tls` alone, with the aws-lc-rs crypto provider (for ring, depend on `portcullis-tls`
//!   with its `ring` feature instead).
//! - `listen`: `listen` alone.
//! - `shutdown`: `shutdown`.
//! - `metrics`: `metrics`, with the Prometheus exporter.
//! - `axum`: route templates from axum's `MatchedPath` in the HTTP metrics (with
//!   `metrics::MatchedRouteLayer` for a metrics layer outside the router), axum's
//!   `ConnectInfo` for the rate limit's client address, and `ConnectInfo<SocketAddr>` in every
//!   request the server serves, for handlers that extract it.
//! - `config`: `config`, one TOML file for every setting of the composed server
//!   (`config::ServerConfig`: read, check, apply to a builder); implies `server`.
//! - `redis`: fleet-wide rate limits kept in Redis (`limit::fleet`, the `redis` keys of
//!   `config`); implies `limit`.
//! - `full`: everything.
#![forbid(unsafe_code)]

#[cfg(feature = "listen")]
#[doc(inline)]
pub use portcullis_listen as listen;

#[cfg(feature = "limit")]
#[doc(inline)]
pub use portcullis_limit as limit;

#[cfg(feature = "server")]
#[doc(inline)]
pub use portcullis_server as server;

#[cfg(feature = "shutdown")]
#[doc(inline)]
pub use portcullis_shutdown as shutdown;

#[cfg(feature = "metrics")]
#[doc(inline)]
pub use portcullis_metrics as metrics;

#[cfg(feature = "health")]
#[doc(inline)]
pub use portcullis_health as health;

#[cfg(feature = "tls")]
#[doc(inline)]
pub use portcullis_tls as tls;

#[cfg(feature = "config")]
pub mod config;

#[cfg(all(feature = "full", feature = "axum"))]
pub mod tour;

/// The types most servers need, for a glob import.
pub mod prelude {
    #[cfg(feature = "limit")]
    pub use portcullis_limit::{ConnLimiter, ConnLimits, LoadShedLayer, Quota, RateLimitLayer};
    #[cfg(feature = "listen")]
    pub use portcullis_listen::proxy::ProxyProtocol;
    #[cfg(feature = "listen")]
    pub use portcullis_listen::{Listener, ListenerConfig};
    #[cfg(feature = "metrics")]
    pub use portcullis_metrics::{Admin, HttpMetricsLayer, PrometheusExporter, Route};
    #[cfg(feature = "server")]
    pub use portcullis_server::{HttpConfig, ServeReport, Server};
    #[cfg(feature = "shutdown")]
    pub use portcullis_shutdown::{Health, Shutdown};
    #[cfg(feature = "tls")]
    pub use portcullis_tls::{TlsAcceptor, TlsConfig};
}
