//! A request id: generated for every request, put in the request (`x-request-id` header and a
//! [`RequestId`] extension, for handlers and logs) and set on every answer.
//!
//! The id is generated here and never taken from the client: a client that could choose it
//! could make its requests look like somebody else's in the logs. (Behind a proxy of yours that
//! sets one already, keep the proxy's instead.)

use std::fmt;
use std::future::Future;
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// The header that carries the id, on the request and on the answer.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled, as a request extension.
#[derive(Clone, Debug)]
pub(crate) struct RequestId(HeaderValue);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Always hex digits (see `Ids::next`), so always text.
        f.write_str(self.0.to_str().unwrap_or("?"))
    }
}

/// Makes ids: a random prefix per process, then a counter. Unique within the process and, with
/// overwhelming probability, across restarts and instances; 32 hex digits. (Any scheme works
/// here: a UUID v4 or v7 from the `uuid` crate, a ULID.)
#[derive(Debug)]
struct Ids {
    prefix: u64,
    next: AtomicU64,
}

impl Ids {
    fn new() -> Self {
        // std's `RandomState` is seeded from the operating system's random source.
        let prefix = std::collections::hash_map::RandomState::new().hash_one(std::process::id());
        Ids {
            prefix,
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> HeaderValue {
        // Relaxed: only uniqueness matters, and `fetch_add` gives it under any ordering.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::try_from(format!("{:016x}{n:016x}", self.prefix))
            .expect("hex digits are a valid header value")
    }
}

/// Gives every request an id and sets it on the answer; builds [`SetRequestId`].
///
/// Cheap to clone: every clone (axum clones a layer for each route) shares one id sequence.
#[derive(Clone, Debug)]
pub(crate) struct RequestIdLayer {
    ids: Arc<Ids>,
}

impl RequestIdLayer {
    pub(crate) fn new() -> Self {
        RequestIdLayer {
            ids: Arc::new(Ids::new()),
        }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = SetRequestId<S>;

    fn layer(&self, inner: S) -> SetRequestId<S> {
        SetRequestId {
            inner,
            ids: Arc::clone(&self.ids),
        }
    }
}

/// The service of [`RequestIdLayer`].
#[derive(Clone, Debug)]
pub(crate) struct SetRequestId<S> {
    inner: S,
    ids: Arc<Ids>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SetRequestId<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let id = self.ids.next();
        // `insert` replaces whatever id the client sent.
        request.headers_mut().insert(X_REQUEST_ID, id.clone());
        request.extensions_mut().insert(RequestId(id.clone()));
        ResponseFuture {
            inner: self.inner.call(request),
            id: Some(id),
        }
    }
}

pin_project! {
    /// The future of [`SetRequestId`]: the inner answer with `x-request-id` set.
    #[derive(Debug)]
    pub(crate) struct ResponseFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = std::task::ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        Poll::Ready(Ok(response))
    }
}
