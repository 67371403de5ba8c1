//! [`LoadShedLayer`]: a global in-flight request limit that answers 503 instead of queueing.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tokio::sync::Semaphore;

use crate::body::LimitBody;
use crate::layer::ResponseFuture;
use crate::metrics::REQUESTS_SHED_TOTAL;

/// At most `max` requests in flight; past it, requests are answered at once with
/// `503 Service Unavailable` and `Retry-After: 1`, never queued.
///
/// Queueing past capacity only adds latency until every request times out; shedding keeps the
/// requests that are admitted fast and tells the rest (and the load balancer) to go elsewhere.
/// A request holds its place until its response body has been sent, so streaming responses
/// count for as long as they stream. Clones share one limit.
#[derive(Clone)]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

struct Shared {
    semaphore: Arc<Semaphore>,
    max: usize,
    shed: metrics::Counter,
}

impl LoadShedLayer {
    /// At most `max` requests in flight.
    pub fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
                max: max.min(Semaphore::MAX_PERMITS),
                shed: metrics::counter!(REQUESTS_SHED_TOTAL),
            }),
        }
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.shared.max - self.shared.semaphore.available_permits()
    }
}

impl fmt::Debug for LoadShedLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShedLayer")
            .field("max", &self.shared.max)
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl<S> tower_layer::Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of a [`LoadShedLayer`].
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for LoadShed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadShed")
            .field("inner", &self.inner)
            .field("max", &self.shared.max)
            .finish()
    }
}

impl<S, ReqB, ResB> tower_service::Service<Request<ReqB>> for LoadShed<S>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<LimitBody<ResB>>;
    type Error = S::Error;
    type Future = ShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match Arc::clone(&self.shared.semaphore).try_acquire_owned() {
            Ok(permit) => ShedFuture {
                inner: ResponseFuture::inner(self.inner.call(request)),
                permit: Some(permit),
            },
            Err(_) => {
                self.shared.shed.increment(1);
                let mut response = Response::new(Bytes::from_static(b"overloaded\n"));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                let headers = response.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                ShedFuture {
                    inner: ResponseFuture::refused(response),
                    permit: None,
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`LoadShed`]: moves the request's place into the body.
    #[derive(Debug)]
    pub struct ShedFuture<F> {
        #[pin]
        inner: ResponseFuture<F>,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    }
}

impl<F, B, E> std::future::Future for ShedFuture<F>
where
    F: std::future::Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LimitBody<B>>, E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx));
        let permit = this.permit.take();
        Poll::Ready(response.map(|response| response.map(|body| body.hold(permit))))
    }
}
