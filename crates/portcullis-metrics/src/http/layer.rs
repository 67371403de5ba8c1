use std::sync::Arc;

use tower::Layer;

use super::series::{RouteFn, Series};
use super::service::HttpMetrics;

/// Default of [`HttpMetricsLayer::max_routes`]: far more templates than any router has, far
/// fewer series than hurt a Prometheus server.
pub const DEFAULT_MAX_ROUTES: usize = 512;

/// A tower layer recording the HTTP server metrics of [`crate::http`] for every request: the
/// duration histogram (whose `_count` is the request count) and the in-flight gauge.
///
/// Every clone records into the same series, and the handles are resolved at the first
/// request (the gauges) or the first request of a series (the histograms), never per request
/// and never when the layer is built: building it before or after the executable installs
/// its recorder makes no difference.
///
/// Where the route template comes from depends on where it is placed (feature `axum` for
/// axum's `MatchedPath`):
///
/// - inside an axum `Router` (`Router::layer`, after the routes): from the `MatchedPath`
///   axum put in the request;
/// - outside the router (around it with `tower::ServiceBuilder`, or `.layer(..)` on the
///   finished router's service): the request has no `MatchedPath` yet (axum inserts it while
///   routing, after this layer ran), so the router must hand the template back in the
///   response: `Router::route_layer(MatchedRouteLayer::new())` after the routes does that
///   for axum; another router inserts a [`Route`](super::Route) into its responses;
/// - anywhere: [`route_fn`](Self::route_fn) names templates from method and URI.
///
/// Requests nobody named a route for (axum's fallback, a 404 for a path no route matches)
/// count as `unmatched`.
#[derive(Clone, Debug)]
pub struct HttpMetricsLayer {
    series: Arc<Series>,
    max_routes: usize,
    route_fn: Option<RouteFn>,
    enabled: bool,
}

impl HttpMetricsLayer {
    /// A layer recording through the recorder in effect at its first request (see the
    /// type's docs: building it before the recorder is installed is fine).
    #[must_use]
    pub fn new() -> Self {
        Self {
            series: Arc::new(Series::new(DEFAULT_MAX_ROUTES, None)),
            max_routes: DEFAULT_MAX_ROUTES,
            route_fn: None,
            enabled: true,
        }
    }

    /// A layer that records nothing, for a server whose metrics are switched off (no recorder
    /// installed): requests pass through without being timed or counted, at the cost of one
    /// branch, and the service keeps the same type as with metrics on.
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::new()
        }
    }

    /// Caps the distinct route templates this layer labels series with (default
    /// [`DEFAULT_MAX_ROUTES`]); templates past the cap are counted as
    /// [`OTHER_ROUTE`](super::OTHER_ROUTE). Starts a fresh set of handles: call it before
    /// cloning the layer.
    #[must_use]
    pub fn max_routes(self, max_routes: usize) -> Self {
        Self {
            series: Arc::new(Series::new(max_routes, self.route_fn)),
            max_routes,
            ..self
        }
    }

    /// Names the route template of requests that carry no [`Route`](super::Route) extension,
    /// from their method and URI: for a router whose routes are fixed paths, this is the
    /// cheapest way (no extension is allocated per request). Return `None` for a request no
    /// route matches (`unmatched`); return templates, never the path itself. Starts a fresh
    /// set of handles: call it before cloning the layer.
    ///
    /// ```
    /// let layer = portcullis_metrics::HttpMetricsLayer::new().route_fn(|_method, uri| match uri.path() {
    ///     "/" => Some("/"),
    ///     "/health" => Some("/health"),
    ///     _ => None,
    /// });
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn route_fn(self, route_fn: fn(&http::Method, &http::Uri) -> Option<&'static str>) -> Self {
        Self {
            series: Arc::new(Series::new(self.max_routes, Some(route_fn))),
            route_fn: Some(route_fn),
            ..self
        }
    }
}

impl Default for HttpMetricsLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetrics::new(inner, Arc::clone(&self.series), self.enabled)
    }
}
