//! What `HttpMetricsLayer` records, asserted with metrics-util's `DebuggingRecorder`: names,
//! units, labels and counts.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use metrics::Unit;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use portcullis_metrics::http::{
    ACTIVE_REQUESTS, METHOD, OTHER_METHOD, OTHER_ROUTE, REQUEST_DURATION, ROUTE, STATUS, UNMATCHED,
};
use portcullis_metrics::{HttpMetricsLayer, MetricsBody, Route};
use tower::{Layer, Service, ServiceExt};

/// Answers 200, or the status in `x-status`; names the route in `x-route` (in the response
/// extensions); fails when `x-fail` is present.
async fn app(request: Request<String>) -> Result<Response<Full<Bytes>>, &'static str> {
    if request.headers().contains_key("x-fail") {
        return Err("failed");
    }
    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
    if let Some(status) = request.headers().get("x-status") {
        *response.status_mut() = status
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
            .expect("x-status");
    }
    if let Some(route) = request.headers().get("x-route") {
        let route: &'static str = match route.to_str().expect("ascii") {
            "/users/{id}" => "/users/{id}",
            other => Box::leak(other.to_owned().into_boxed_str()),
        };
        response.extensions_mut().insert(Route::new(route));
    }
    Ok(response)
}

fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder()
        .method(Method::from_bytes(method.as_bytes()).expect("method"))
        .uri(path)
}

/// What the recorder saw so far. A snapshot of the `DebuggingRecorder` resets what it
/// returns (counters and gauges to zero, histograms emptied), so totals accumulate here.
struct Seen {
    snapshotter: Snapshotter,
    durations: HashMap<(String, String, String), usize>,
    active: HashMap<String, f64>,
}

impl Seen {
    fn new(snapshotter: Snapshotter) -> Self {
        Self {
            snapshotter,
            durations: HashMap::new(),
            active: HashMap::new(),
        }
    }

    fn update(&mut self) {
        for (key, unit, help, value) in self.snapshotter.snapshot().into_vec() {
            assert!(help.is_some(), "described: {key:?}");
            let label = |name: &str| {
                key.key()
                    .labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
                    .unwrap_or_else(|| panic!("label {name} on {key:?}"))
            };
            match (key.key().name(), value) {
                (REQUEST_DURATION, DebugValue::Histogram(samples)) => {
                    assert_eq!(key.kind(), MetricKind::Histogram);
                    assert_eq!(unit, Some(Unit::Seconds));
                    assert_eq!(key.key().labels().count(), 3, "{key:?}");
                    let series = (label(METHOD), label(STATUS), label(ROUTE));
                    // A series appears when first used: with its first sample.
                    assert!(
                        self.durations.contains_key(&series) || !samples.is_empty(),
                        "{series:?} registered without a sample"
                    );
                    *self.durations.entry(series).or_default() += samples.len();
                }
                (ACTIVE_REQUESTS, DebugValue::Gauge(delta)) => {
                    assert_eq!(unit, Some(Unit::Count));
                    assert_eq!(key.key().labels().count(), 1, "{key:?}");
                    *self.active.entry(label(METHOD)).or_default() += delta.into_inner();
                }
                (name, value) => panic!("unexpected metric {name}: {value:?}"),
            }
        }
    }

    /// Histogram sample counts by (method, status, route).
    fn durations(&mut self) -> HashMap<(String, String, String), usize> {
        self.update();
        self.durations.clone()
    }

    fn active(&mut self, method: &str) -> f64 {
        self.update();
        self.active
            .get(method)
            .copied()
            .unwrap_or_else(|| panic!("no {ACTIVE_REQUESTS} for {method}"))
    }
}

fn key(method: &str, status: &str, route: &str) -> (String, String, String) {
    (method.to_owned(), status.to_owned(), route.to_owned())
}

#[tokio::test]
async fn requests_are_counted_by_method_status_and_route() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);
    portcullis_metrics::describe();
    let layer = HttpMetricsLayer::new();
    let mut service = layer.layer(tower::service_fn(app));

    let send = |request: Request<String>| {
        let mut service = service.clone();
        async move {
            let response = service.ready().await?.call(request).await?;
            let status = response.status();
            response.into_body().collect().await.expect("body");
            Ok::<_, &'static str>(status)
        }
    };
    for _ in 0..3 {
        send(
            request("GET", "/users/1")
                .header("x-route", "/users/{id}")
                .body(String::new())
                .expect("request"),
        )
        .await
        .expect("ok");
    }
    // The route named on the request wins (a layer inside the router sees it there).
    let mut named = request("POST", "/users/2")
        .body(String::new())
        .expect("request");
    named.extensions_mut().insert(Route::new("/users/{id}"));
    send(named).await.expect("ok");
    send(
        request("GET", "/nope")
            .header("x-status", "404")
            .body(String::new())
            .expect("request"),
    )
    .await
    .expect("ok");
    send(
        request("BREW", "/pot")
            .body(String::new())
            .expect("request"),
    )
    .await
    .expect("ok");
    assert_eq!(
        send(
            request("GET", "/x")
                .header("x-fail", "1")
                .body(String::new())
                .expect("request")
        )
        .await,
        Err("failed")
    );
    let _ = service.ready().await;

    let found = seen.durations();
    let expected = HashMap::from([
        (key("GET", "200", "/users/{id}"), 3),
        (key("POST", "200", "/users/{id}"), 1),
        (key("GET", "404", UNMATCHED), 1),
        (key(OTHER_METHOD, "200", UNMATCHED), 1),
        (key("GET", "500", UNMATCHED), 1),
    ]);
    assert_eq!(found, expected);
    for method in ["GET", "POST", OTHER_METHOD] {
        assert_eq!(seen.active(method), 0.0, "{method}");
    }
}

/// A body that yields one chunk, then waits until `release` is sent.
struct Held {
    first: Option<Bytes>,
    release: tokio::sync::oneshot::Receiver<()>,
}

impl Body for Held {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(first) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        Pin::new(&mut self.release).poll(cx).map(|_| None)
    }
}

/// The layer over a service whose one response has a [`Held`] body (yielding `first`, if
/// given), and the sender that ends that body.
fn held(
    first: Option<Bytes>,
) -> (
    impl Service<Request<()>, Response = Response<MetricsBody<Held>>, Error = Infallible>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (release, released) = tokio::sync::oneshot::channel();
    let released = std::sync::Mutex::new(Some(released));
    let mut first = Some(first);
    let service = HttpMetricsLayer::new().layer(tower::service_fn(move |_: Request<()>| {
        let release = released.lock().expect("lock").take().expect("one request");
        let first = first.take().flatten();
        async move { Ok::<_, Infallible>(Response::new(Held { first, release })) }
    }));
    (service, release)
}

#[tokio::test]
async fn a_streamed_response_is_in_flight_until_its_body_ends() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);
    portcullis_metrics::describe();
    let (service, release) = held(Some(Bytes::from_static(b"chunk")));
    let response = service.oneshot(Request::new(())).await.expect("response");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a frame").expect("ok");
    assert_eq!(first.into_data().ok(), Some(Bytes::from_static(b"chunk")));
    assert_eq!(seen.active("GET"), 1.0, "still streaming");
    assert!(seen.durations().is_empty(), "not measured before the end");
    release.send(()).expect("release");
    assert!(body.frame().await.is_none());
    assert_eq!(seen.active("GET"), 0.0);
    assert_eq!(
        seen.durations(),
        HashMap::from([(key("GET", "200", UNMATCHED), 1)])
    );
    drop(body);
    assert_eq!(
        seen.durations(),
        HashMap::from([(key("GET", "200", UNMATCHED), 1)]),
        "counted once"
    );
}

#[tokio::test]
async fn a_response_dropped_mid_body_is_still_measured_once() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);
    portcullis_metrics::describe();
    let (service, _release) = held(None);
    let response = service.oneshot(Request::new(())).await.expect("response");
    assert_eq!(seen.active("GET"), 1.0);
    drop(response); // the client went away
    assert_eq!(seen.active("GET"), 0.0);
    assert_eq!(
        seen.durations(),
        HashMap::from([(key("GET", "200", UNMATCHED), 1)])
    );
}

#[tokio::test]
async fn clones_of_the_layer_share_series_and_routes_past_the_cap_are_other() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);
    portcullis_metrics::describe();
    let layer = HttpMetricsLayer::new().max_routes(2);
    let first = layer.layer(tower::service_fn(app));
    let second = layer.clone().layer(tower::service_fn(app));
    for (i, route) in ["/a", "/b", "/c", "/d", "/a"].into_iter().enumerate() {
        let service = if i % 2 == 0 {
            first.clone()
        } else {
            second.clone()
        };
        let response = service
            .oneshot(
                request("GET", route)
                    .header("x-route", route)
                    .body(String::new())
                    .expect("request"),
            )
            .await
            .expect("ok");
        drop(response);
    }
    assert_eq!(
        seen.durations(),
        HashMap::from([
            (key("GET", "200", "/a"), 2),
            (key("GET", "200", "/b"), 1),
            (key("GET", "200", OTHER_ROUTE), 2),
        ])
    );
}

#[tokio::test]
async fn a_route_fn_names_requests_without_an_extension() {
    let recorder = DebuggingRecorder::new();
    let mut seen = Seen::new(recorder.snapshotter());
    let _local = metrics::set_default_local_recorder(&recorder);
    portcullis_metrics::describe();
    let layer = HttpMetricsLayer::new().route_fn(|method, uri| {
        (method == Method::GET && uri.path().starts_with("/users/")).then_some("/users/{id}")
    });
    for path in ["/users/1", "/users/2", "/elsewhere"] {
        let service = layer.layer(tower::service_fn(app));
        let response = service
            .oneshot(request("GET", path).body(String::new()).expect("request"))
            .await
            .expect("ok");
        drop(response);
    }
    // An extension still wins over the function.
    let mut named = request("GET", "/users/3")
        .body(String::new())
        .expect("request");
    named.extensions_mut().insert(Route::new("/explicit"));
    drop(
        layer
            .layer(tower::service_fn(app))
            .oneshot(named)
            .await
            .expect("ok"),
    );
    assert_eq!(
        seen.durations(),
        HashMap::from([
            (key("GET", "200", "/users/{id}"), 2),
            (key("GET", "200", UNMATCHED), 1),
            (key("GET", "200", "/explicit"), 1),
        ])
    );
}

#[tokio::test]
async fn a_disabled_layer_records_nothing() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let service = HttpMetricsLayer::disabled().layer(tower::service_fn(app));
    let response = service
        .oneshot(
            request("GET", "/")
                .header("x-route", "/")
                .body(String::new())
                .expect("request"),
        )
        .await
        .expect("ok");
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.expect("body");
    let recorded: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == REQUEST_DURATION)
        .collect();
    assert!(recorded.is_empty(), "{recorded:?}");
}

#[tokio::test]
async fn the_duration_recorded_is_the_time_from_the_call_to_the_end_of_the_body() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (service, release) = held(None);
    let outer = std::time::Instant::now();
    let response = service.oneshot(Request::new(())).await.expect("response");
    let inner = std::time::Instant::now();
    // The span being measured: the body stays open this long.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let held = inner.elapsed();
    release.send(()).expect("release");
    assert!(response.into_body().frame().await.is_none());
    let whole = outer.elapsed();
    let samples: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Histogram(samples) if key.key().name() == REQUEST_DURATION => {
                Some(samples.into_iter().map(|s| s.into_inner()))
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(samples.len(), 1, "{samples:?}");
    assert!(
        samples[0] >= held.as_secs_f64() && samples[0] <= whole.as_secs_f64(),
        "{} s recorded for a body held {held:?} within {whole:?}",
        samples[0]
    );
}
