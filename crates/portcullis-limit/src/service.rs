//! [`RateLimit`], the service of a [`RateLimitLayer`](crate::RateLimitLayer).

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use governor::clock::{Clock, DefaultClock};
use http::{Request, Response};

use crate::body::LimitBody;
use crate::future::ResponseFuture;
use crate::housekeeping;
use crate::state::Shared;

/// Enforces a rate limit on the requests to `S`; made by
/// [`RateLimitLayer`](crate::RateLimitLayer), whose clones and services all share one limit.
///
/// A request within the limit goes to `S`; one over it is answered `429 Too Many Requests`
/// at once (see [`RateLimitLayer`](crate::RateLimitLayer) for the fields) and `S` never sees
/// it.
pub struct RateLimit<S, C: Clock = DefaultClock> {
    inner: S,
    shared: Arc<Shared<C>>,
}

impl<S, C: Clock> RateLimit<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C>>) -> Self {
        Self { inner, shared }
    }

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

impl<S: Clone, C: Clock> Clone for RateLimit<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, C: Clock> fmt::Debug for RateLimit<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.shared.config.name)
            .finish()
    }
}

impl<S, C, ReqB, ResB> tower_service::Service<Request<ReqB>> for RateLimit<S, C>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>>,
    C: Clock + Send + Sync + 'static,
{
    type Response = Response<LimitBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        housekeeping::ensure_started(&self.shared);
        match self.shared.check(&request) {
            Ok(()) => ResponseFuture::inner(self.inner.call(request)),
            Err(rejection) => ResponseFuture::refused(self.shared.response(&rejection)),
        }
    }
}
