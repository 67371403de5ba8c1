//! [`MinRateLayer`]: a route's own minimum data rates.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{BodyShared, MinRate};

/// The handle a request with a body carries to its rate (an extension, for [`MinRateLayer`]).
#[derive(Clone, Debug)]
pub(crate) struct BodyRate(pub(crate) Arc<BodyShared>);

/// The response rate a route asked for (an extension of its responses).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ResponseRate(pub(crate) MinRate);

/// Sets the minimum data rates of the requests it wraps, instead of the server's
/// ([`HttpConfig::min_body_rate`](crate::HttpConfig::min_body_rate),
/// [`HttpConfig::min_response_rate`](crate::HttpConfig::min_response_rate)): a lower rate or
/// a longer grace for an upload route or a download for slow links, [`MinRate::OFF`] for a
/// route that streams at its own pace.
///
/// The body rate applies from the moment the request passes the layer. The response rate
/// applies to the response it answers with: on HTTP/1 to the connection's writes until that
/// response is written, on HTTP/2 to its stream (the connection's writes carry other streams
/// and keep the server's rate).
/// Outside a portcullis server the layer does nothing.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response};
/// use portcullis_server::{MinRate, MinRateLayer, RequestBody};
///
/// // An upload service for slow links: 32 B/s is enough, after 30 s.
/// let upload = tower::ServiceBuilder::new()
///     .layer(MinRateLayer::new().body(MinRate::new(32, Duration::from_secs(30))))
///     .service_fn(|_request: Request<RequestBody>| async {
///         Ok::<_, Infallible>(Response::new(String::from("stored\n")))
///     });
/// # let _ = upload;
/// ```
///
/// With axum, put it on the route: `post(upload).layer(MinRateLayer::new().body(..))`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct MinRateLayer {
    body: Option<MinRate>,
    response: Option<MinRate>,
}

impl MinRateLayer {
    /// A layer that changes nothing until told.
    pub fn new() -> Self {
        Self::default()
    }

    /// The minimum rate of these requests' bodies.
    pub fn body(mut self, rate: MinRate) -> Self {
        self.body = Some(rate);
        self
    }

    /// The minimum rate at which clients must take these requests' responses.
    pub fn response(mut self, rate: MinRate) -> Self {
        self.response = Some(rate);
        self
    }
}

impl<S> Layer<S> for MinRateLayer {
    type Service = MinRateService<S>;

    fn layer(&self, inner: S) -> MinRateService<S> {
        MinRateService {
            inner,
            rates: *self,
        }
    }
}

/// The service [`MinRateLayer`] builds.
#[derive(Clone, Debug)]
pub struct MinRateService<S> {
    inner: S,
    rates: MinRateLayer,
}

impl<S, B, R> Service<Request<B>> for MinRateService<S>
where
    S: Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = MinRateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let (Some(rate), Some(BodyRate(shared))) =
            (self.rates.body, request.extensions().get::<BodyRate>())
        {
            shared.set_rate(rate);
        }
        MinRateFuture {
            inner: self.inner.call(request),
            response: self.rates.response,
        }
    }
}

pin_project! {
    /// The future of [`MinRateService`]: the inner service's, its response marked with the
    /// route's response rate.
    #[derive(Debug)]
    pub struct MinRateFuture<F> {
        #[pin]
        inner: F,
        response: Option<MinRate>,
    }
}

impl<F, R, E> Future for MinRateFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(rate) = *this.response {
            response.extensions_mut().insert(ResponseRate(rate));
        }
        Poll::Ready(Ok(response))
    }
}
