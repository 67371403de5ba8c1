//! A hardened HTTP/1.1 + HTTP/2 server for any tower service, composed from portcullis's building
//! blocks over hyper.
//!
//! `portcullis-server` takes [`portcullis_listen`] listeners and an application service — an axum
//! `Router` or any `tower::Service<http::Request<hyper::body::Incoming>>` — and serves it with
//! every connection phase under a deadline:
//!
//! ```text
//! Listener::accept()        portcullis-listen: socket options, EMFILE-proof backoff, never exits
//!  -> spawn connection task (the accept loop never awaits anything per connection)
//!  -> hyper-util auto       HTTP/1.1 or HTTP/2 (h2c prior knowledge), timer installed
//!  -> portcullis deadlines        greeting / request head: header timeout; between requests: idle timeout
//!  -> application service   panics and errors become a 500 for that request only
//! shutdown future           listeners close -> connections drain gracefully -> deadline -> force
//! ```
//!
//! An admin listener ([`Builder::admin`]) serves portcullis-metrics' admin service (`/metrics`,
//! `/livez`, `/readyz`) outside the application's listeners, up until the drain has ended.
//! What it does not do (yet): TLS and connection and rate limits live in their own portcullis crates
//! and are composed in as they land.
//!
//! # Example
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use portcullis_listen::Listener;
//! use portcullis_server::Server;
//!
//! # async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
//! let listener = Listener::bind("127.0.0.1:8080".parse()?)?;
//! let service = tower::service_fn(|_request: Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(Response::new(http_body_util::Full::new(bytes::Bytes::from("hello\n"))))
//! });
//! let report = Server::builder()
//!     .listener(listener)
//!     .shutdown(async { tokio::signal::ctrl_c().await.ok(); })
//!     .serve(service)
//!     .await?;
//! Ok(report.exit_code()) // 0 after a clean drain, 1 when connections were forced closed
//! # }
//! ```
//!
//! # Design
//!
//! hyper decides what a connection does; portcullis decides how long it may take. An I/O wrapper
//! sees the bytes read, a service wrapper sees each request start and each response body end,
//! and the connection's driver turns those edges into one deadline (see [`HttpConfig`]):
//! header timeout from the first byte of a request head to the service call, idle timeout from
//! the end of the last response to the next request. hyper's own header timer is switched off
//! because it would close idle keep-alive connections at the header timeout. Every close is
//! counted by reason (see [`metrics`]).
//!
//! The server's phase (running, draining, forced) is one atomic that every connection reads
//! on each poll; a `Notify` per stage wakes them when it moves. The phase and the
//! per-connection state shared with HTTP/2 stream tasks are checked with loom
//! (`RUSTFLAGS="--cfg portcullis_loom" cargo test -p portcullis-server --lib loom`).
//!
//! hyper's HTTP/2 stream tasks run on a tracked executor: the drain waits for them, and a
//! forced drain stops them. Connections upgraded away from HTTP (`101 Switching Protocols`)
//! leave portcullis's tracking at the upgrade; the application owns them from there.
//!
//! # Crate features
//!
//! None yet; HTTP/1.1 and HTTP/2 are always on.

#![forbid(unsafe_code)]

mod body;
mod config;
mod driver;
mod error;
mod io;
mod loom;
pub mod metrics;
mod phase;
mod report;
mod server;
mod service;
mod state;

pub use body::{BodyPanicked, ResponseBody};
pub use config::{DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, HttpConfig};
pub use error::Error;
pub use metrics::ShutdownPhase;
pub use report::ServeReport;
pub use server::{
    ADMIN_DRAIN_TIMEOUT, Builder, ConnInfo, DEFAULT_DRAIN_TIMEOUT, DrainProgress, Server,
};

/// The boxed error type of bodies and services, as in tower and hyper.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
