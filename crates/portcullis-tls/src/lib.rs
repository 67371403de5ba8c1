//! rustls for portcullis servers: secure defaults, certificates from PEM with clear errors, SNI,
//! client certificates, hot reload, and a handshake acceptor with a deadline.
//!
//! - [`TlsConfig`] builds a [`TlsAcceptor`] from a default certificate/key pair
//!   ([`CertKeyPair`], PEM files or memory), more pairs chosen by server name
//!   ([`TlsConfig::sni`], wildcards included), optional client authentication
//!   ([`ClientAuth`]), ALPN, and the crypto provider. Every default is secure and documented
//!   with its reason: TLS 1.3 and 1.2 only, AEAD suites only, ALPN `h2` and `http/1.1`,
//!   session tickets with rotating keys, a bounded session cache, no 0-RTT.
//! - [`TlsAcceptor::accept`] runs a handshake under a deadline and sorts failures into a few
//!   reasons ([`HandshakeFailure`]) for the metrics.
//! - Certificates reload while connections keep running: when their files change
//!   ([`TlsAcceptor::watch`], symlink swaps of Kubernetes secrets included), on SIGHUP
//!   ([`TlsAcceptor::reload_on_sighup`]), or on request ([`TlsAcceptor::reload`]). A new pair
//!   is validated before it is served; a bad one leaves the last good pair in service. The
//!   rustls `ServerConfig` is never rebuilt, so sessions keep resuming across reloads.
//!   The watcher needs nobody to start it: an acceptor built (or first used) inside a tokio
//!   runtime runs it there until its last clone is dropped. portcullis-server takes it over
//!   for every acceptor it is given, with the SIGHUP reloads, and stops both with its drain;
//!   without the server, only SIGHUP is yours to wire, as below.
//! - [`ClientCertificates`] carries a verified client chain to request handlers.
//!
//! It does not accept TCP connections (portcullis-listen does), cap concurrent handshakes (the caller
//! does, with portcullis-limit's `HandshakeLimiter`), speak HTTP (portcullis-server does), nor install a
//! crypto provider or a metrics recorder for the process.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use portcullis_tls::{CancellationToken, ClientAuth, CertKeyPair, TlsConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let acceptor = TlsConfig::from_pem_files("/etc/tls/tls.crt", "/etc/tls/tls.key")?
//!     .sni("api.example.com", CertKeyPair::from_pem_files("api.crt", "api.key")?)
//!     .client_auth(ClientAuth::optional("/etc/tls/clients-ca.pem"))
//!     .handshake_timeout(Duration::from_secs(5))
//!     .build()?;
//!
//! // The acceptor watches its files by itself. Without portcullis-server (which reloads on
//! // SIGHUP itself), reload on SIGHUP too:
//! let stop = CancellationToken::new();
//! tokio::spawn(acceptor.reload_on_sighup(stop.clone())?);
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8443").await?;
//! loop {
//!     let (tcp, _peer) = listener.accept().await?;
//!     let acceptor = acceptor.clone();
//!     // The handshake runs in the connection's task, never in the accept loop.
//!     tokio::spawn(async move {
//!         let Ok(tls) = acceptor.accept(tcp).await else {
//!             return; // counted in portcullis_tls_handshake_failures_total{reason=...}
//!         };
//!         let _client = portcullis_tls::ClientCertificates::from_stream(&tls);
//!         let _h2 = portcullis_tls::negotiated_alpn(&tls) == Some(b"h2");
//!         // serve HTTP over `tls` ...
//!     });
//! }
//! # }
//! ```
//!
//! # Design
//!
//! The acceptor holds one `rustls::ServerConfig` whose certificate resolver reads the pairs in
//! service from an [`arc_swap`](https://docs.rs/arc-swap) snapshot: handshakes never wait
//! for a lock, and a reload builds and validates a new snapshot aside, then swaps it in one
//! atomic store. Connections already established keep the pair they started with. The
//! configured server names are fixed when the acceptor is built; reloads change only the
//! certificates and keys behind them.
//!
//! The file watcher polls: it reads the files (following symlinks) every 500 ms and compares
//! their contents with what is served. Polling sees every way certificates get replaced,
//! including the Kubernetes `..data` symlink flip that defeats watches on the file itself,
//! needs no platform-specific notification API, and costs two small reads per pair per poll.
//!
//! # Metrics
//!
//! Emitted through the [`metrics`](https://docs.rs/metrics) facade only; [`metrics`] lists
//! every name, [`metrics::describe`] registers units and help, and [`metrics::register`]
//! exports the series of the closed label sets (as 0) from the start. An acceptor's counters
//! are resolved at its first handshake or reload, not when it is built, so building it before
//! or after the executable installs its recorder makes no difference
//! ([`TlsAcceptor::resolve_metrics`] resolves them at once, for tests with a local recorder).
//!
//! # Dependencies in the public API
//!
//! - **rustls** (re-exported as [`rustls`]): `ServerConfig`, `CryptoProvider`,
//!   `rustls::Error`, and `CertificateDer` (from `rustls::pki_types`).
//! - **tokio-rustls** (re-exported as [`tokio_rustls`]): [`TlsAcceptor::accept`] returns its
//!   `server::TlsStream`.
//! - **tokio**: `AsyncRead`/`AsyncWrite` streams to accept on; [`TlsAcceptor::reload_status`]
//!   returns a `tokio::sync::watch::Receiver`. The watcher and the SIGHUP reloads need a
//!   tokio runtime.
//! - **tokio-util**: [`CancellationToken`] (re-exported), which stops the watcher and the
//!   SIGHUP reloads.
//!
//! x509-parser and arc-swap are used inside and never appear in the API.
//!
//! # Crate features
//!
//! - `aws-lc-rs` (default): rustls' aws-lc-rs crypto provider. Building it needs a C compiler
//!   (and, for some targets or its FIPS variant, CMake).
//! - `ring`: rustls' ring crypto provider.
//!
//! Exactly one should be enabled, or the provider given with [`TlsConfig::provider`]. With
//! both enabled and no provider given, [`TlsConfig::build`] fails with
//! [`TlsErrorKind::AmbiguousProvider`]; with neither, [`TlsErrorKind::NoProvider`]. Session
//! tickets use the enabled feature's `Ticketer` (aws-lc-rs when both are enabled); with
//! neither feature, TLS 1.3 resumption works through the session cache alone.

mod acceptor;
mod client;
mod config;
mod error;
pub mod metrics;
mod pair;
mod provider;
mod reload;
mod resolver;

pub use acceptor::{ReloadStatus, TlsAcceptor};
pub use client::{ClientCertificates, negotiated_alpn};
pub use config::{
    ClientAuth, DEFAULT_ALPN, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SESSION_CACHE_SIZE,
    DEFAULT_WATCH_INTERVAL, TlsConfig,
};
pub use error::{HandshakeError, HandshakeFailure, TlsError, TlsErrorKind};
pub use pair::{CertKeyPair, NOT_BEFORE_LEEWAY_SECS};
pub use provider::{ALLOWED_CIPHER_SUITES, PROTOCOL_VERSIONS};

/// The rustls this crate is built with, so applications name the same types.
pub use rustls;
/// The tokio-rustls this crate is built with; [`TlsAcceptor::accept`] returns its
/// `server::TlsStream`.
pub use tokio_rustls;
/// Stops [`TlsAcceptor::watch`] and [`TlsAcceptor::reload_on_sighup`], from tokio-util.
pub use tokio_util::sync::CancellationToken;
