//! Server metrics for portcullis: a catalogue with bounded labels, an HTTP RED tower layer,
//! Prometheus exposition, and an admin service answering `/metrics`, `/livez` and `/readyz`.
//!
//! - [`http`]: the HTTP server metrics of the OpenTelemetry semantic conventions
//!   (`http_server_request_duration_seconds`, `http_server_active_requests`), recorded by
//!   [`HttpMetricsLayer`]. Labels come only from closed sets: the method (unknown methods are
//!   `_OTHER`), the status code, and the route *template* the router names through a [`Route`]
//!   extension (or axum's `MatchedPath`), `unmatched` otherwise. A scanner requesting a million
//!   distinct paths adds no series.
//! - [`PrometheusExporter`] (feature `prometheus`): installs portcullis's recorder
//!   ([`PrometheusRecorder`], built for servers: counters and gauges one atomic each,
//!   histograms pre-bucketed, no per-sample timestamp or buffer, nothing to run between
//!   scrapes), with histogram buckets for portcullis's metrics. Only an executable installs
//!   it; a second install is an error, never a panic.
//! - [`Admin`]: a tower service for the admin listener, with the regular
//!   [upkeep](Admin::upkeep) a recorder of the application's may need.
//!   `portcullis-server` serves it on its own listener, outside every limit, and runs that
//!   upkeep every [`UPKEEP_INTERVAL`] for as long as it serves. Its `/metrics`
//!   ends with the process's metrics ([`process`]: descriptors against their limit, memory,
//!   CPU, threads, read from `/proc` at each scrape) and the tokio runtime's ([`runtime`]:
//!   workers, live tasks, global queue depth, parks, busy time and ratio).
//!
//! Every other portcullis crate owns its metric names and a `describe()`; `docs/metrics.md`
//! gathers the whole catalogue. This crate does not serve the admin listener (portcullis-server
//! does) and never installs a recorder by itself.
//!
//! # Example
//!
//! With portcullis-server, `Builder::admin("127.0.0.1:9090")?` does the installing,
//! describing and serving below in one call. By hand:
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
//!
//! let app = ServiceBuilder::new()
//!     .layer(HttpMetricsLayer::new())
//!     .service_fn(|request: Request<String>| async move {
//!         let mut response = Response::new(http_body_util::Full::new(bytes::Bytes::from("hi")));
//!         // A router names the template it matched; a raw path never becomes a label.
//!         response.extensions_mut().insert(Route::new("/users/{id}"));
//!         Ok::<_, Infallible>(response)
//!     });
//!
//! // portcullis-server's `Builder::admin_listener(listener, admin)` serves it on its own
//! // listener. The exporter needs nothing between scrapes, with the server or without it.
//! let admin = Admin::new().prometheus(&exporter);
//! # let _ = (app, admin); Ok(()) }
//! ```
//!
//! # Design
//!
//! The HTTP layer has tower's shape: [`HttpMetricsLayer`] (cheap, `Clone + Debug`, an `Arc`
//! over the layer's series) builds [`HttpMetrics<S>`](HttpMetrics), whose future
//! ([`http::ResponseFuture`]) wraps the response body in a [`MetricsBody`] that stops the
//! clock when the body ends or is dropped. Each series' handle is resolved once. Series of
//! static templates ([`Route::new`], [`HttpMetricsLayer::route_fn`]) are then found by the
//! template's address in a fixed table of set-once slots: no lock, no hashing of text, no
//! reference count. Templates built at run time go through a copy-on-write map that requests
//! read without a lock. Requests are timed in the clock's raw ticks (the invariant
//! time-stamp counter where there is one), scaled once, at the end. The number of route
//! templates per layer is capped ([`HttpMetricsLayer::max_routes`]).
//!
//! The admin service is configuration and closures only (the checks, the renderer, the
//! upkeep): whoever serves it owns the timer, so a block never needs a task of its own that
//! a user must remember to spawn.
//!
//! # Metrics and the recorder
//!
//! Emitted through the [`metrics`](https://docs.rs/metrics) facade only. Handles are resolved
//! lazily: the active-requests gauges at a layer's first request, each duration histogram at
//! the first request of its series. Building the layer before or after the executable
//! installs its recorder makes no difference; install the recorder before serving.
//!
//! # Dependencies in the public API
//!
//! - **http** 1.x: requests and responses, and the `Method` and `Uri` given to
//!   [`HttpMetricsLayer::route_fn`]; the same `http` every tower HTTP crate uses.
//! - **bytes**: [`Bytes`] (re-exported), the data of [`AdminBody`] and [`MetricsBody`].
//! - **metrics** 0.24: [`PrometheusRecorder`] implements its `Recorder`.
//! - the traits this crate implements: tower's `Layer` and `Service`, and `http_body::Body`.
//!
//! # Crate features
//!
//! - `prometheus` (default): [`PrometheusExporter`], [`PrometheusRecorder`] and
//!   [`Admin::prometheus`].
//! - `axum`: the route label also comes from axum's `MatchedPath` extension, and
//!   `MatchedRouteLayer` carries it to an [`HttpMetricsLayer`] placed outside the router.

#![forbid(unsafe_code)]

mod admin;
#[cfg(feature = "prometheus")]
mod exporter;
pub mod http;
pub mod process;
#[cfg(feature = "prometheus")]
mod recorder;
pub mod runtime;

pub use admin::{Admin, AdminBody, UPKEEP_INTERVAL};
#[cfg(feature = "prometheus")]
pub use exporter::{
    CALL_BUCKETS, CALL_DURATION_SUFFIX, DEFAULT_BUCKETS, ExporterBuilder, InstallError,
    LAG_BUCKETS, LAG_SUFFIX, PrometheusExporter,
};
#[cfg(feature = "axum")]
pub use http::MatchedRouteLayer;
pub use http::{HttpMetrics, HttpMetricsLayer, MetricsBody, Route, describe};
pub use process::ProcessStats;
#[cfg(feature = "prometheus")]
pub use recorder::PrometheusRecorder;

/// The bytes of the bodies this crate produces, from the `bytes` crate.
pub use bytes::Bytes;
