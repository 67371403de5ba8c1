use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

use super::future::{InFlight, MetricsBody, ResponseFuture};
use super::labels::{Route, method_index, route_of};
use super::series::Series;

/// The service of [`HttpMetricsLayer`](super::HttpMetricsLayer).
#[derive(Clone, Debug)]
pub struct HttpMetrics<S> {
    inner: S,
    series: Arc<Series>,
    enabled: bool,
}

impl<S> HttpMetrics<S> {
    pub(crate) fn new(inner: S, series: Arc<Series>, enabled: bool) -> Self {
        Self {
            inner,
            series,
            enabled,
        }
    }

    /// The wrapped service.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, unwrapped.
    #[must_use]
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for HttpMetrics<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if !self.enabled {
            return ResponseFuture::new(self.inner.call(request), None);
        }
        let method = method_index(request.method());
        let route = route_of(request.extensions()).or_else(|| {
            let route_fn = self.series.route_fn?;
            route_fn(request.method(), request.uri()).map(Route::new)
        });
        let in_flight = InFlight::start(Arc::clone(&self.series), method, route);
        ResponseFuture::new(self.inner.call(request), Some(in_flight))
    }
}
