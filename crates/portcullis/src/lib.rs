//! portcullis: hardened production servers for the tokio / hyper / tower ecosystem.
//!
//! portcullis is a set of small crates that an application composes into its own server. This
//! umbrella crate re-exports them behind one feature each:
//!
//! | feature | module | crate | what it does |
//! |---|---|---|---|
//! | `listen` | `listen` | `portcullis-listen` | socket tuning, reuseport acceptors, socket activation, an accept loop that survives descriptor exhaustion |
//! | `limit` | `limit` | `portcullis-limit` | rate limits with unspoofable client identity and bounded memory, connection caps, load shedding |
//! | `server` | `server` | `portcullis-server` | HTTP/1.1 + HTTP/2 over hyper for any tower service, every connection phase under a deadline, graceful drain |
//! | `shutdown` | `shutdown` | `portcullis-shutdown` | the graceful-shutdown configuration and handles, signals, readiness, systemd notify and watchdog |
//! | `tls` | `tls` | `portcullis-tls` | rustls with secure defaults, PEM loading with clear errors, SNI, mTLS, certificate hot reload, a handshake acceptor with a deadline |
//! | `metrics` | `metrics` | `portcullis-metrics` | the HTTP metrics layer with bounded labels, the admin service (`/metrics`, `/livez`, `/readyz`), the Prometheus exporter |
//!
//!
//! # Example
//!
//! ```no_run
//! use portcullis::prelude::*;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let service = tower::service_fn(|_request: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(
//!         http_body_util::Full::new(bytes::Bytes::from_static(b"hello\n")),
//!     ))
//! });
//! let report = Server::builder()
//!     .listeners(ListenerConfig::default().bind("127.0.0.1:8080".parse()?)?)
//!     .http(HttpConfig::default().header_timeout(std::time::Duration::from_secs(5)))
//!     .shutdown(async { tokio::signal::ctrl_c().await.ok(); })
//!     .serve(service)
//!     .await?;
//! assert!(report.is_clean());
//! # Ok(())
//! # }
//! ```
//!
//! # Crate features
//!
//! - `server` (default): `server`, and `listen`, `limit`, `tls` and `shutdown` with it.
//! - `limit`: `limit` alone.
//! - `tls`: `tls` alone, with the aws-lc-rs crypto provider (for ring, depend on `portcullis-tls`
//!   with its `ring` feature instead).
//! - `listen`: `listen` alone.
//! - `shutdown`: `shutdown`.
//! - `metrics`: `metrics`, with the Prometheus exporter.
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

#[cfg(feature = "tls")]
#[doc(inline)]
pub use portcullis_tls as tls;

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
