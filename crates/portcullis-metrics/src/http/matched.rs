//! [`MatchedRouteLayer`]: hands axum's matched route template to an [`HttpMetricsLayer`]
//! placed outside the router.
//!
//! axum inserts `MatchedPath` into the *request* while it routes, which is after every layer
//! wrapped around the `Router` has already seen the request, and it never puts it in the
//! response. An outer [`HttpMetricsLayer`] therefore cannot learn the template by itself; a
//! layer the router runs for each matched route has to carry it out, in the response
//! extensions, where the outer layer looks once the response is back. What it carries is the
//! `MatchedPath` itself (reference-counted: shared, not copied), at the cost of one extension
//! insert per matched request.
//!
//! [`HttpMetricsLayer`]: super::HttpMetricsLayer

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::extract::MatchedPath;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// A layer for axum's `Router::route_layer` that copies the route template axum matched
/// (`MatchedPath`) into the response extensions, so that an [`HttpMetricsLayer`] placed
/// *outside* the router labels requests by template instead of `unmatched`.
///
/// Not needed when the metrics layer is inside the router (`Router::layer`): there it reads
/// `MatchedPath` from the request itself. Like every router layer, it covers the routes added
/// before it, so apply it after the last `route` (axum panics when a router has no route yet).
/// Requests that match no route never reach it and stay `unmatched`.
///
/// ```
/// use axum::{Router, routing::get};
/// use portcullis_metrics::{HttpMetricsLayer, MatchedRouteLayer};
/// use tower::Layer;
///
/// let router: Router = Router::new()
///     .route("/users/{id}", get(|| async { "user" }))
///     .route_layer(MatchedRouteLayer::new()); // after the routes
/// // Outside the router, with whatever else wraps it (tower::ServiceBuilder, say):
/// let app = HttpMetricsLayer::new().layer(router);
/// # let _ = app;
/// ```
///
/// [`HttpMetricsLayer`]: super::HttpMetricsLayer
#[derive(Clone, Copy, Debug, Default)]
pub struct MatchedRouteLayer {
    _private: (),
}

impl MatchedRouteLayer {
    /// The layer.
    #[must_use]
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

impl<S> Layer<S> for MatchedRouteLayer {
    type Service = MatchedRoute<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MatchedRoute { inner }
    }
}

/// The service of [`MatchedRouteLayer`].
#[derive(Clone, Debug)]
pub struct MatchedRoute<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MatchedRoute<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = MatchedRouteFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let matched = request.extensions().get::<MatchedPath>().cloned();
        MatchedRouteFuture {
            inner: self.inner.call(request),
            matched,
        }
    }
}

pin_project! {
    /// The future of [`MatchedRoute`].
    #[derive(Debug)]
    pub struct MatchedRouteFuture<F> {
        #[pin]
        inner: F,
        matched: Option<MatchedPath>,
    }
}

impl<F, B, E> Future for MatchedRouteFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(matched) = this.matched.take() {
            response.extensions_mut().insert(matched);
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    use super::*;

    async fn matched_in_response(router: Router, path: &str) -> Option<String> {
        let request = Request::get(path).body(Body::empty()).expect("request");
        let response = router
            .oneshot(request)
            .await
            .unwrap_or_else(|e: Infallible| match e {});
        response
            .extensions()
            .get::<MatchedPath>()
            .map(|matched| matched.as_str().to_owned())
    }

    #[tokio::test]
    async fn the_template_reaches_the_response_and_an_unmatched_path_carries_none() {
        let router = Router::new()
            .route("/users/{id}", get(|| async { "user" }))
            .nest(
                "/api",
                Router::new()
                    .route("/items/{item}", get(|| async { "item" }))
                    .route_layer(MatchedRouteLayer::new()),
            )
            .route_layer(MatchedRouteLayer::new());
        assert_eq!(
            matched_in_response(router.clone(), "/users/7")
                .await
                .as_deref(),
            Some("/users/{id}")
        );
        assert_eq!(
            matched_in_response(router.clone(), "/api/items/3")
                .await
                .as_deref(),
            Some("/api/items/{item}")
        );
        assert_eq!(matched_in_response(router, "/nope").await, None);
    }
}
