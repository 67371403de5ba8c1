//! An authentication check: requests without `Authorization: Bearer <token>` (the right token)
//! get `401 Unauthorized` with `WWW-Authenticate: Bearer`, and never reach the application.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Lets through only requests that carry the bearer token; builds [`BearerAuth`].
#[derive(Clone)]
pub(crate) struct BearerAuthLayer {
    token: Arc<[u8]>,
}

impl BearerAuthLayer {
    /// Requests must carry `Authorization: Bearer {token}`. Load a real token from a secret
    /// (a file, the environment), never from the source.
    pub(crate) fn new(token: &str) -> Self {
        BearerAuthLayer {
            token: token.as_bytes().into(),
        }
    }
}

impl fmt::Debug for BearerAuthLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token itself: Debug output ends up in logs.
        f.debug_struct("BearerAuthLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> BearerAuth<S> {
        BearerAuth {
            inner,
            token: Arc::clone(&self.token),
        }
    }
}

/// The service of [`BearerAuthLayer`].
#[derive(Clone)]
pub(crate) struct BearerAuth<S> {
    inner: S,
    token: Arc<[u8]>,
}

impl<S: fmt::Debug> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> BearerAuth<S> {
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return false;
        };
        // `Bearer <token>`; the scheme is case-insensitive (RFC 9110, section 11.1).
        let value = value.as_bytes();
        let Some(space) = value.iter().position(|&b| b == b' ') else {
            return false;
        };
        let (scheme, token) = value.split_at(space);
        scheme.eq_ignore_ascii_case(b"bearer")
            && constant_time_eq(token.trim_ascii_start(), &self.token)
    }
}

/// Compares without stopping at the first difference, so the answer time does not tell an
/// attacker how much of a guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized<B: From<&'static str>>() -> Response<B> {
    let mut response = Response::new(B::from("unauthorized\n"));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    let headers = response.headers_mut();
    headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BearerAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        // Ready when the application is: a refused request then leaves the readiness it
        // reserved unused, which is harmless for an axum router (always ready).
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if self.authorized(request.headers()) {
            ResponseFuture::Inner {
                future: self.inner.call(request),
            }
        } else {
            ResponseFuture::Refused {
                response: Some(unauthorized()),
            }
        }
    }
}

pin_project! {
    /// The future of [`BearerAuth`]: the application's answer, or the 401.
    #[project = ResponseFutureProj]
    #[derive(Debug)]
    pub(crate) enum ResponseFuture<F, B> {
        /// Authorized: the application answers.
        Inner { #[pin] future: F },
        /// Refused: the 401, taken at the first poll.
        Refused { response: Option<Response<B>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ResponseFutureProj::Inner { future } => future.poll(cx),
            ResponseFutureProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after it completed"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_str(authorization).expect("a header value"),
        );
        headers
    }

    #[test]
    fn only_the_bearer_token_is_authorized() {
        let auth = BearerAuthLayer::new("let-me-in").layer(());
        assert!(auth.authorized(&headers("Bearer let-me-in")));
        assert!(auth.authorized(&headers("bearer let-me-in")));
        assert!(!auth.authorized(&headers("Bearer let-me-i")));
        assert!(!auth.authorized(&headers("Bearer let-me-inn")));
        assert!(!auth.authorized(&headers("Basic let-me-in")));
        assert!(!auth.authorized(&headers("let-me-in")));
        assert!(!auth.authorized(&HeaderMap::new()));
    }
}
