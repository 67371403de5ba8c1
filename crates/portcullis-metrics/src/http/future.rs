use quanta::Instant;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::labels::{Route, route_of};
use super::series::Series;

/// One request between the service call and the end of its response body: in the active
/// gauge while it lives, and in the duration histogram when it ends with a status.
#[derive(Debug)]
pub(crate) struct InFlight {
    series: Arc<Series>,
    method: u8,
    route: Option<Route>,
    status: Option<u16>,
    started: Instant,
}

impl InFlight {
    pub(crate) fn start(
        series: Arc<Series>,
        method: u8,
        route: Option<Route>,
        started: Instant,
    ) -> Self {
        series.active(method).increment(1.0);
        Self {
            series,
            method,
            route,
            status: None,
            started,
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.series.active(self.method).decrement(1.0);
        if let Some(status) = self.status {
            self.series.record(
                self.method,
                status,
                self.route.as_ref(),
                self.started.elapsed(),
            );
        }
    }
}

pin_project! {
    /// The future of [`HttpMetrics`](super::HttpMetrics).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn new(inner: F, in_flight: Option<InFlight>) -> Self {
        Self { inner, in_flight }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<MetricsBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut in_flight = this.in_flight.take();
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(in_flight) = &mut in_flight {
                    in_flight.status = Some(response.status().as_u16());
                    if in_flight.route.is_none() {
                        in_flight.route = route_of(response.extensions());
                    }
                }
                Ok(response.map(|inner| MetricsBody { inner, in_flight }))
            }
            Err(error) => {
                // portcullis-server answers a service error with 500.
                if let Some(in_flight) = &mut in_flight {
                    in_flight.status = Some(500);
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that ends its request's measurement when it ends (or is dropped).
    #[derive(Debug)]
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B> MetricsBody<B> {
    /// The wrapped body, unwrapped (the request is measured as ending now).
    #[must_use]
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> Body for MetricsBody<B>
where
    B: Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if !matches!(frame, Some(Ok(_))) {
            // The end, or an error that ends it: measure now rather than when the connection
            // gets around to dropping the body.
            this.in_flight.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
