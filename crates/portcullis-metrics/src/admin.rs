//! The admin service: `/metrics`, `/livez`, `/readyz`.

use std::convert::Infallible;
use std::fmt;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower::Service;

/// Content type of the Prometheus text exposition format, version 0.0.4.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Check = Arc<dyn Fn() -> bool + Send + Sync>;
type Render = Arc<dyn Fn() -> String + Send + Sync>;
type Upkeep = Arc<dyn Fn() + Send + Sync>;

/// How often an installed `PrometheusExporter`'s own thread, a server running the admin
/// service's [upkeep](Admin::upkeep), and `PrometheusExporter::run_upkeep` drain histogram
/// samples into their buckets: the
/// Prometheus exporter's own default. Between upkeeps (and scrapes) samples wait in a buffer
/// that grows with traffic, so without upkeep a process nobody scrapes grows until it dies.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A tower service for an admin listener, answering `GET` and `HEAD`:
///
/// | path | answer |
/// |---|---|
/// | `/metrics` | 200, the Prometheus text format (`text/plain; version=0.0.4`); 404 when no exporter was given |
/// | `/livez` | 200 `ok` while live, 503 otherwise |
/// | `/readyz` | 200 `ok` while ready, 503 otherwise |
/// | anything else | 404; other methods on these paths 405 with `Allow: GET, HEAD` |
///
/// Without a readiness or liveness check the answer is 200: nothing said otherwise.
/// `portcullis-server` serves it on its own listener, outside every limit, and checks readiness
/// with the server's [`Health`](https://docs.rs/portcullis-shutdown) unless one is given here. Every
/// answer carries `Cache-Control: no-store`: a probe must never see a cached "ready".
///
/// ```
/// use portcullis_metrics::Admin;
///
/// let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
/// let admin = Admin::new()
///     .readiness({
///         let ready = ready.clone();
///         move || ready.load(std::sync::atomic::Ordering::Acquire)
///     })
///     .metrics(|| "# nothing yet\n".to_owned());
/// # let _ = admin;
/// ```
#[derive(Clone, Default)]
pub struct Admin {
    ready: Option<Check>,
    live: Option<Check>,
    metrics: Option<Render>,
    upkeep: Option<Upkeep>,
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.ready.is_some())
            .field("liveness", &self.live.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("upkeep", &self.upkeep.is_some())
            .finish()
    }
}

impl Admin {
    /// An admin service that answers 200 to both probes and 404 to `/metrics`.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// What `/readyz` reports.
    #[must_use]
    pub fn readiness(mut self, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.ready = Some(Arc::new(ready));
        self
    }

    /// What `/livez` reports.
    #[must_use]
    pub fn liveness(mut self, live: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.live = Some(Arc::new(live));
        self
    }

    /// Whether a readiness check was given.
    #[must_use]
    pub fn has_readiness(&self) -> bool {
        self.ready.is_some()
    }

    /// Whether a liveness check was given.
    #[must_use]
    pub fn has_liveness(&self) -> bool {
        self.live.is_some()
    }

    /// What `/metrics` answers: text in the Prometheus exposition format.
    #[must_use]
    pub fn metrics(mut self, render: impl Fn() -> String + Send + Sync + 'static) -> Self {
        self.metrics = Some(Arc::new(render));
        self
    }

    /// Work the metrics behind `/metrics` need done regularly whether or not anybody
    /// scrapes (an exporter folding histogram samples into buckets). A server that serves
    /// this admin service runs it every [`UPKEEP_INTERVAL`](crate::UPKEEP_INTERVAL) for as
    /// long as it serves.
    #[must_use]
    pub fn upkeep(mut self, upkeep: impl Fn() + Send + Sync + 'static) -> Self {
        self.upkeep = Some(Arc::new(upkeep));
        self
    }

    /// The upkeep given with [`upkeep`](Self::upkeep) or [`prometheus`](Self::prometheus),
    /// for the server that runs it.
    #[must_use]
    pub fn upkeep_fn(&self) -> Option<Arc<dyn Fn() + Send + Sync>> {
        self.upkeep.clone()
    }

    /// `/metrics` renders `exporter`. Its upkeep is run by the server that serves this,
    /// unless the exporter [runs its own](crate::PrometheusExporter::upkeeps_itself) (an
    /// installed one does).
    #[cfg(feature = "prometheus")]
    #[must_use]
    pub fn prometheus(self, exporter: &crate::PrometheusExporter) -> Self {
        let render = exporter.clone();
        let admin = self.metrics(move || render.render());
        if exporter.upkeeps_itself() {
            return admin;
        }
        let upkeep = exporter.clone();
        admin.upkeep(move || upkeep.upkeep())
    }

    fn answer(&self, method: &Method, path: &str) -> Response<AdminBody> {
        let (status, content_type, body) = match path {
            "/metrics" | "/livez" | "/readyz"
                if *method != Method::GET && *method != Method::HEAD =>
            {
                let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                response
                    .headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
                return response;
            }
            "/metrics" => match &self.metrics {
                Some(render) => (StatusCode::OK, PROMETHEUS_TEXT, Bytes::from(render())),
                None => (
                    StatusCode::NOT_FOUND,
                    TEXT,
                    Bytes::from_static(b"no metrics\n"),
                ),
            },
            "/livez" => probe(self.live.as_ref(), "not live\n"),
            "/readyz" => probe(self.ready.as_ref(), "not ready\n"),
            _ => (
                StatusCode::NOT_FOUND,
                TEXT,
                Bytes::from_static(b"not found\n"),
            ),
        };
        let body = if *method == Method::HEAD {
            Bytes::new()
        } else {
            body
        };
        let mut response = Response::new(AdminBody(Some(body).filter(|b| !b.is_empty())));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}

const TEXT: &str = "text/plain; charset=utf-8";

fn probe(check: Option<&Check>, failing: &'static str) -> (StatusCode, &'static str, Bytes) {
    if check.is_none_or(|check| check()) {
        (StatusCode::OK, TEXT, Bytes::from_static(b"ok\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            Bytes::from_static(failing.as_bytes()),
        )
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<AdminBody> {
    let mut response = Response::new(AdminBody(Some(Bytes::from_static(body.as_bytes()))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(TEXT));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl<B> Service<Request<B>> for Admin {
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<AdminBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.answer(request.method(), request.uri().path())))
    }
}

/// The body of an [`Admin`] answer: one chunk of bytes, known length.
#[derive(Debug, Default)]
pub struct AdminBody(Option<Bytes>);

impl AdminBody {
    /// The bytes of the body.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.0.unwrap_or_default()
    }
}

impl From<Bytes> for AdminBody {
    /// A body of `bytes` (an answer written by another service on the admin listener).
    fn from(bytes: Bytes) -> Self {
        AdminBody(Some(bytes).filter(|bytes| !bytes.is_empty()))
    }
}

impl Body for AdminBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.take().map(|data| Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.0.as_ref().map_or(0, |data| data.len() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn get(admin: &Admin, method: Method, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        let response = admin.answer(&method, path);
        let (parts, body) = response.into_parts();
        (parts.status, parts.headers, body.into_bytes())
    }

    #[test]
    fn probes_follow_their_checks() {
        let ready = Arc::new(AtomicBool::new(false));
        let admin = Admin::new().readiness({
            let ready = Arc::clone(&ready);
            move || ready.load(Ordering::Acquire)
        });
        let (status, headers, body) = get(&admin, Method::GET, "/readyz");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not ready\n");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        ready.store(true, Ordering::Release);
        assert_eq!(get(&admin, Method::GET, "/readyz").0, StatusCode::OK);
        // No liveness check: live.
        assert_eq!(get(&admin, Method::GET, "/livez").0, StatusCode::OK);
        let admin = admin.liveness(|| false);
        assert_eq!(
            get(&admin, Method::GET, "/livez").0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn metrics_has_the_exposition_content_type_and_head_has_no_body() {
        let admin = Admin::new();
        assert_eq!(
            get(&admin, Method::GET, "/metrics").0,
            StatusCode::NOT_FOUND
        );
        let admin = admin.metrics(|| "up 1\n".to_owned());
        let (status, headers, body) = get(&admin, Method::GET, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], PROMETHEUS_TEXT);
        assert_eq!(body, "up 1\n");
        let (status, _, body) = get(&admin, Method::HEAD, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
    }

    #[test]
    fn other_paths_and_methods_are_refused() {
        let admin = Admin::new();
        assert_eq!(get(&admin, Method::GET, "/").0, StatusCode::NOT_FOUND);
        assert_eq!(
            get(&admin, Method::GET, "/readyz/x").0,
            StatusCode::NOT_FOUND
        );
        let (status, headers, _) = get(&admin, Method::POST, "/readyz");
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(headers[ALLOW], "GET, HEAD");
    }
}
