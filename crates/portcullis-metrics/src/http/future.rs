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
    /// The clock's raw reading at the start.
    started: u64,
}

impl InFlight {
    pub(crate) fn start(series: Arc<Series>, method: u8, route: Option<Route>) -> Self {
        let started = series.start(method);
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
        self.series
            .end(self.method, self.status, self.route.as_ref(), self.started);
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Written so that the response is moved as few times as possible: a response is
        // larger than what the compiler copies in registers, and every move of it is a call
        // to `memcpy` that reads what was just written.
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(response)) => {
                let mut in_flight = this.in_flight.take();
                if let Some(in_flight) = &mut in_flight {
                    in_flight.status = Some(response.status().as_u16());
                    if in_flight.route.is_none() {
                        in_flight.route = route_of(response.extensions());
                    }
                }
                let (parts, inner) = response.into_parts();
                Poll::Ready(Ok(Response::from_parts(
                    parts,
                    MetricsBody { inner, in_flight },
                )))
            }
            Poll::Ready(Err(error)) => {
                // portcullis-server answers a service error with 500; measured now.
                if let Some(mut in_flight) = this.in_flight.take() {
                    in_flight.status = Some(500);
                }
                Poll::Ready(Err(error))
            }
        }
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

    #[inline]
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
