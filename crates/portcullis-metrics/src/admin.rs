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

use crate::process::ProcessStats;
use crate::runtime::RuntimeStats;

/// Content type of the Prometheus text exposition format, version 0.0.4.
pub(crate) const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

type Check = Arc<dyn Fn() -> bool + Send + Sync>;
type Render = Arc<dyn Fn() -> String + Send + Sync>;
type Upkeep = Arc<dyn Fn() + Send + Sync>;

/// How often a server runs the admin service's [upkeep](Admin::upkeep), when it has one (a
/// recorder of the application's that buffers samples between scrapes; portcullis's own
/// needs none).
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// A tower service for an admin listener, answering `GET` and `HEAD`:
///
/// | path | answer |
/// |---|---|
/// | `/metrics` | 200, the Prometheus text format (`text/plain; version=0.0.4`); 404 when no exporter was given |
/// | `/livez` | 200 `ok` while live, 503 otherwise |
/// | `/readyz` | 200 `ok` while ready, 503 otherwise; with `?verbose`, the same status and the [details](Admin::readiness_details) |
/// | anything else | 404; other methods on these paths 405 with `Allow: GET, HEAD` |
///
/// Without a readiness or liveness check the answer is 200: nothing said otherwise.
/// `/metrics` ends with the process's metrics (descriptors, memory, CPU, threads, read from
/// `/proc` at the scrape; [`process_metrics`](Admin::process_metrics)) and, given a
/// [runtime](Admin::runtime), tokio's runtime metrics.
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
#[derive(Clone)]
pub struct Admin {
    ready: Option<Check>,
    ready_details: Option<Render>,
    live: Option<Check>,
    metrics: Option<Render>,
    upkeep: Option<Upkeep>,
    process: bool,
    runtime: Option<Arc<RuntimeStats>>,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            ready: None,
            ready_details: None,
            live: None,
            metrics: None,
            upkeep: None,
            process: true,
            runtime: None,
        }
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("readiness", &self.ready.is_some())
            .field("liveness", &self.live.is_some())
            .field("metrics", &self.metrics.is_some())
            .field("upkeep", &self.upkeep.is_some())
            .field("process", &self.process)
            .field("runtime", &self.runtime.is_some())
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

    /// The text of `/readyz?verbose` (each check and its state, say); its status stays that
    /// of [`readiness`](Self::readiness).
    #[must_use]
    pub fn readiness_details(
        mut self,
        details: impl Fn() -> String + Send + Sync + 'static,
    ) -> Self {
        self.ready_details = Some(Arc::new(details));
        self
    }

    /// Whether `/metrics` ends with the process metrics (`process_open_fds`,
    /// `process_max_fds`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`,
    /// `process_cpu_seconds_total`, `process_start_time_seconds`, `process_threads`,
    /// `portcullis_process_fds_utilization`), read at each scrape. Default `true`; turn it off
    /// when another exporter of the process already reports them under those names. Linux
    /// only: elsewhere there is nothing to read.
    #[must_use]
    pub fn process_metrics(mut self, enabled: bool) -> Self {
        self.process = enabled;
        self
    }

    /// `/metrics` ends with the metrics of the tokio runtime `handle` ([`crate::runtime`]'s
    /// names), read at each scrape. portcullis-server gives its own runtime unless one was
    /// given.
    #[must_use]
    pub fn runtime(mut self, handle: tokio::runtime::Handle) -> Self {
        self.runtime = Some(Arc::new(RuntimeStats::new(handle)));
        self
    }

    /// Whether a runtime was given.
    #[must_use]
    pub fn has_runtime(&self) -> bool {
        self.runtime.is_some()
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

    /// `/metrics` renders `exporter` (which needs no upkeep).
    #[cfg(feature = "prometheus")]
    #[must_use]
    pub fn prometheus(self, exporter: &crate::PrometheusExporter) -> Self {
        let render = exporter.clone();
        self.metrics(move || render.render())
    }

    /// The whole `/metrics` text: the renderer's, then the process's and the runtime's.
    fn render_metrics(&self, render: &Render) -> String {
        let mut out = render();
        if self.process {
            match ProcessStats::read() {
                Ok(stats) => stats.render(&mut out),
                Err(error) if error.kind() == std::io::ErrorKind::Unsupported => {}
                Err(error) => tracing::debug!(%error, "process metrics left out of this scrape"),
            }
        }
        if let Some(runtime) = &self.runtime {
            runtime.render(&mut out);
        }
        out
    }

    fn answer(&self, method: &Method, path: &str, query: Option<&str>) -> Response<AdminBody> {
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
                Some(render) => (
                    StatusCode::OK,
                    PROMETHEUS_TEXT,
                    Bytes::from(self.render_metrics(render)),
                ),
                None => (
                    StatusCode::NOT_FOUND,
                    TEXT,
                    Bytes::from_static(b"no metrics\n"),
                ),
            },
            "/livez" => probe(self.live.as_ref(), "not live\n"),
            "/readyz" => {
                let (status, content_type, body) = probe(self.ready.as_ref(), "not ready\n");
                match &self.ready_details {
                    Some(details) if query.is_some_and(wants_verbose) => {
                        (status, content_type, Bytes::from(details()))
                    }
                    _ => (status, content_type, body),
                }
            }
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

/// Whether a query string asks for `verbose` (`?verbose`, `?verbose=1`, among others).
fn wants_verbose(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair == "verbose" || pair.starts_with("verbose="))
}

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
        let uri = request.uri();
        ready(Ok(self.answer(request.method(), uri.path(), uri.query())))
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
        let (path, query) = path
            .split_once('?')
            .map_or((path, None), |(p, q)| (p, Some(q)));
        let response = admin.answer(&method, path, query);
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
        let admin = admin.metrics(|| "up 1\n".to_owned()).process_metrics(false);
        let (status, headers, body) = get(&admin, Method::GET, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], PROMETHEUS_TEXT);
        assert_eq!(body, "up 1\n");
        let (status, _, body) = get(&admin, Method::HEAD, "/metrics");
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn metrics_end_with_the_process_section_by_default() {
        let admin = Admin::new().metrics(|| "up 1\n".to_owned());
        let (_, _, body) = get(&admin, Method::GET, "/metrics");
        let body = std::str::from_utf8(&body).expect("utf-8");
        assert!(body.starts_with("up 1\n# HELP process_open_fds "), "{body}");
        for name in [
            "process_max_fds",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_cpu_seconds_total",
            "process_start_time_seconds",
            "process_threads",
            "portcullis_process_fds_utilization",
        ] {
            assert!(
                body.contains(&format!("\n{name} ")),
                "{name} missing: {body}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_end_with_the_runtime_section_when_given_one() {
        let admin = Admin::new()
            .metrics(String::new)
            .process_metrics(false)
            .runtime(tokio::runtime::Handle::current());
        let (_, _, body) = get(&admin, Method::GET, "/metrics");
        let body = std::str::from_utf8(&body).expect("utf-8");
        assert!(body.contains("\ntokio_workers 2\n"), "{body}");
        for name in [
            "tokio_live_tasks",
            "tokio_global_queue_depth",
            "tokio_park_total",
            "tokio_busy_duration_seconds_total",
            "tokio_busy_ratio",
        ] {
            assert!(
                body.contains(&format!("\n{name} ")),
                "{name} missing: {body}"
            );
        }
    }

    #[test]
    fn verbose_readiness_shows_the_details_with_the_same_status() {
        let admin = Admin::new()
            .readiness(|| false)
            .readiness_details(|| "db: down (critical)\n".to_owned());
        let (status, _, body) = get(&admin, Method::GET, "/readyz");
        assert_eq!(
            (status, &body[..]),
            (StatusCode::SERVICE_UNAVAILABLE, &b"not ready\n"[..])
        );
        for path in [
            "/readyz?verbose",
            "/readyz?verbose=1",
            "/readyz?x=1&verbose",
        ] {
            let (status, _, body) = get(&admin, Method::GET, path);
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert_eq!(body, "db: down (critical)\n", "{path}");
        }
        let (_, _, body) = get(&admin, Method::GET, "/readyz?verbosity");
        assert_eq!(body, "not ready\n");
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
