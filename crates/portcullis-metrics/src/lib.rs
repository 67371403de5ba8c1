//! Server metrics for portcullis: a catalogue with bounded labels, an HTTP RED tower layer,
//! Prometheus exposition, and an admin service answering `/metrics`, `/livez` and `/readyz`.
//!
//! - [`http`]: the HTTP server metrics of the OpenTelemetry semantic conventions
//!   (`http_server_request_duration_seconds`, `http_server_active_requests`), recorded by
//!   [`HttpMetricsLayer`]. Labels come only from closed sets: the method (unknown methods are
//!   `_OTHER`), the status code, and the route *template* the router names through a [`Route`]
//!   extension (or axum's `MatchedPath`), `unmatched` otherwise. A scanner requesting a million
//!   distinct paths adds no series.
//! - [`PrometheusExporter`] (feature `prometheus`): installs the Prometheus recorder, with
//!   histogram buckets for portcullis's metrics, and runs its upkeep on a task that a shutdown
//!   token stops. Only an executable installs it; a second install is an error.
//! - [`Admin`]: a tower service for the admin listener (`portcullis-server` serves it on its own
//!   listener, outside every limit).
//!
//! Every other portcullis crate owns its metric names and a `describe()`; `docs/metrics.md` gathers
//! the whole catalogue.
//!
//! # Example
//!
//! ```no_run
//! use portcullis_metrics::{Admin, HttpMetricsLayer, PrometheusExporter, Route};
//! use tower::ServiceBuilder;
//! # use std::convert::Infallible;
//! # use http::{Request, Response};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // In main, once: the executable owns the process-global recorder.
//! let exporter = PrometheusExporter::install()?;
//! portcullis_metrics::describe();
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! tokio::spawn(exporter.clone().run_upkeep(shutdown.clone()));
//!
//! let app = ServiceBuilder::new()
//!     .layer(HttpMetricsLayer::new())
//!     .service_fn(|request: Request<String>| async move {
//!         let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from("hi")));
//!         // A router names the template it matched; a raw path never becomes a label.
//!         response.extensions_mut().insert(Route::new("/users/{id}"));
//!         Ok::<_, Infallible>(response)
//!     });
//! let admin = Admin::new().prometheus(&exporter); // serve on its own listener
//! # let _ = (app, admin); Ok(()) }
//! ```
//!
//! # Crate features
//!
//! - `prometheus` (default): [`PrometheusExporter`] and `/metrics` on the admin service.
//! - `axum`: the route label also comes from axum's `MatchedPath` extension.

#![forbid(unsafe_code)]

mod admin;
#[cfg(feature = "prometheus")]
mod exporter;
pub mod http;

pub use admin::{Admin, AdminBody, UPKEEP_INTERVAL};
#[cfg(feature = "prometheus")]
pub use exporter::{DEFAULT_BUCKETS, InstallError, PrometheusExporter};
pub use http::{HttpMetrics, HttpMetricsLayer, MetricsBody, Route, describe};
