//! HTTP server metrics after the OpenTelemetry semantic conventions, rendered Prometheus-style,
//! and the tower layer that records them.
//!
//! | name | type | unit | labels |
//! |---|---|---|---|
//! | [`REQUEST_DURATION`] `http_server_request_duration_seconds` | histogram | seconds | [`METHOD`], [`STATUS`], [`ROUTE`] |
//! | [`ACTIVE_REQUESTS`] `http_server_active_requests` | gauge | requests | [`METHOD`] |
//!
//! The request count is the histogram's `_count` series, so count and latency can never
//! disagree. A request is timed from the call of the service until its response body ends
//! (or is dropped, when the client goes away mid-response): for a streamed response that is
//! the whole stream. A request abandoned before its response head (the client went away, the
//! handler panicked) leaves the active gauge but is not in the histogram.
//!
//! # Cardinality
//!
//! Every label value comes from a closed set, whatever the client sends:
//!
//! - [`METHOD`]: the nine methods of RFC 9110 and RFC 5789; any other method is `_OTHER`.
//! - [`STATUS`]: the response's status code (at most 900 values, from 100 to 999); a service
//!   error is counted as `500`, the answer portcullis-server gives for it.
//! - [`ROUTE`]: the route template the router matched, named by a [`Route`] extension on the
//!   request or the response, axum's `MatchedPath` (feature `axum`; on the response when the
//!   layer is outside the router, carried there by `MatchedRouteLayer`), or the layer's
//!   [`route_fn`](HttpMetricsLayer::route_fn); [`UNMATCHED`] when there is none. Never the
//!   raw path. The number of distinct templates per layer is capped
//!   ([`HttpMetricsLayer::max_routes`], default [`DEFAULT_MAX_ROUTES`]); past the cap a new
//!   template is counted as [`OTHER_ROUTE`], so even a router that names raw paths by mistake
//!   cannot grow the series without bound.

mod future;
mod labels;
mod layer;
#[cfg(feature = "axum")]
mod matched;
mod series;
mod service;

use metrics::Unit;

pub use future::{MetricsBody, ResponseFuture};
pub use labels::Route;
pub use layer::{DEFAULT_MAX_ROUTES, HttpMetricsLayer};
#[cfg(feature = "axum")]
pub use matched::{MatchedRoute, MatchedRouteFuture, MatchedRouteLayer};
pub use service::HttpMetrics;

/// Histogram: duration of HTTP server requests, in seconds, from the service call until the
/// response body ended.
pub const REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// Gauge: HTTP server requests in progress (response body not finished yet).
pub const ACTIVE_REQUESTS: &str = "http_server_active_requests";

/// Label: the request method (OpenTelemetry `http.request.method`).
pub const METHOD: &str = "http_request_method";
/// Label: the response status code (OpenTelemetry `http.response.status_code`).
pub const STATUS: &str = "http_response_status_code";
/// Label: the matched route template (OpenTelemetry `http.route`).
pub const ROUTE: &str = "http_route";

/// The [`METHOD`] value of a method outside the standard set.
pub const OTHER_METHOD: &str = "_OTHER";
/// The [`ROUTE`] value of a request no router named a template for.
pub const UNMATCHED: &str = "unmatched";
/// The [`ROUTE`] value of templates beyond [`HttpMetricsLayer::max_routes`].
pub const OTHER_ROUTE: &str = "_OTHER";

/// Bucket upper bounds of [`REQUEST_DURATION`], in seconds: the OpenTelemetry recommendation
/// for HTTP server durations, 5 ms to 10 s. Fine below 100 ms where web latency objectives
/// sit (so `histogram_quantile` for a 50 ms or 100 ms p99 target is exact at the bound), and
/// coarse beyond the 10 s where clients and proxies give up.
pub const REQUEST_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// Registers unit and help text of the HTTP metrics with the installed recorder.
pub fn describe() {
    metrics::describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP server requests, until the response body ended."
    );
    metrics::describe_gauge!(
        ACTIVE_REQUESTS,
        Unit::Count,
        "HTTP server requests in progress."
    );
}
