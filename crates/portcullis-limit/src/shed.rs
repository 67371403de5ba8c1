//! [`LoadShedLayer`]: a global in-flight request limit that answers 503 instead of queueing.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tokio::sync::Semaphore;

use crate::body::LimitBody;
use crate::future::LoadShedFuture;
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
    /// Resolved on the first shed request, against the recorder installed then.
    shed: OnceLock<metrics::Counter>,
}

impl Shared {
    fn count_shed(&self) {
        self.shed
            .get_or_init(|| metrics::counter!(REQUESTS_SHED_TOTAL))
            .increment(1);
    }
}

impl LoadShedLayer {
    /// At most `max` requests in flight (values above tokio's `Semaphore::MAX_PERMITS` are
    /// capped there).
    #[must_use]
    pub fn new(max: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                semaphore: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
                max: max.min(Semaphore::MAX_PERMITS),
                shed: OnceLock::new(),
            }),
        }
    }

    /// Requests in flight now.
    #[must_use]
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

/// The service of a [`LoadShedLayer`]: passes a request on to `S` if a place is free, answers
/// 503 otherwise.
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> LoadShed<S> {
    /// The inner service.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    #[must_use]
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; the limit is left to the other clones.
    #[must_use]
    pub fn into_inner(self) -> S {
        self.inner
    }
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
    type Future = LoadShedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match Arc::clone(&self.shared.semaphore).try_acquire_owned() {
            Ok(permit) => LoadShedFuture::admitted(self.inner.call(request), permit),
            Err(_) => {
                self.shared.count_shed();
                let mut response = Response::new(Bytes::from_static(b"overloaded\n"));
                *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                let headers = response.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                LoadShedFuture::shed(response)
            }
        }
    }
}
