//! `HttpMetricsLayer` labels requests with axum's matched route template (portcullis-metrics
//! feature `axum`), never the raw path, over a real portcullis server, wherever the docs place
//! it: inside the `Router`, or outside it with `MatchedRouteLayer` on the router's routes.
//! `unmatched` is only for requests that matched no route.

mod common;

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::get;
use common::Running;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use portcullis::metrics::http::{METHOD, REQUEST_DURATION, ROUTE, STATUS};
use portcullis::metrics::{HttpMetricsLayer, MatchedRouteLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Series = BTreeMap<(String, String, String), usize>;

fn routes() -> Router {
    Router::new()
        .route("/users/{id}", get(|| async { "user\n" }))
        .route("/", get(|| async { "hello\n" }))
}

/// Serves `app`, sends `requests` (method and path, each on its own connection), and returns
/// the duration histogram's sample count per (method, status, route).
fn requests_by_series<S, B>(app: S, requests: &[(&str, &str)]) -> Series
where
    S: tower::Service<http::Request<portcullis::server::RequestBody>, Response = http::Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<portcullis::server::BoxError>,
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<portcullis::server::BoxError>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let server = Running::start(|b| b, app);
            for (method, path) in requests {
                let mut stream = tokio::net::TcpStream::connect(server.addr())
                    .await
                    .expect("connect");
                let request = format!(
                    "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                stream.write_all(request.as_bytes()).await.expect("write");
                let mut response = Vec::new();
                stream.read_to_end(&mut response).await.expect("read");
                assert!(response.starts_with(b"HTTP/1.1 "), "{response:?}");
            }
            let report = server.stop().await;
            assert!(report.is_clean(), "{report:?}");
        });
    });
    let mut found = BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if key.key().name() != REQUEST_DURATION {
            continue;
        }
        let label = |name: &str| {
            key.key()
                .labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .expect("label")
        };
        let DebugValue::Histogram(samples) = value else {
            panic!("a histogram");
        };
        found.insert((label(METHOD), label(STATUS), label(ROUTE)), samples.len());
    }
    found
}

fn series(method: &str, status: &str, route: &str) -> (String, String, String) {
    (method.to_owned(), status.to_owned(), route.to_owned())
}

const REQUESTS: &[(&str, &str)] = &[
    ("GET", "/users/1"),
    ("GET", "/users/2"),
    ("GET", "/users/3"),
    ("GET", "/"),
    ("GET", "/nope/1"),
    ("GET", "/nope/2"),
    // Matched a route, not a method: labelled by the template it matched.
    ("POST", "/users/4"),
];

fn expected() -> Series {
    BTreeMap::from([
        (series("GET", "200", "/users/{id}"), 3),
        (series("GET", "200", "/"), 1),
        (series("POST", "405", "/users/{id}"), 1),
        // axum's fallback: no route matched, no template.
        (series("GET", "404", "unmatched"), 2),
    ])
}

#[test]
fn inside_the_router_the_matched_route_template_is_the_label() {
    let app = routes().layer(HttpMetricsLayer::new());
    assert_eq!(requests_by_series(app, REQUESTS), expected());
}

#[test]
fn outside_the_router_matched_route_layer_carries_the_template_out() {
    let router = routes().route_layer(MatchedRouteLayer::new());
    let app = tower::ServiceBuilder::new()
        .layer(HttpMetricsLayer::new())
        .service(router);
    assert_eq!(requests_by_series(app, REQUESTS), expected());
}

#[test]
fn outside_the_router_alone_it_cannot_see_the_template() {
    // Why the docs never show this placement: axum inserts `MatchedPath` into the request
    // while routing, after the outer layer has seen it, and never into the response.
    let app = tower::ServiceBuilder::new()
        .layer(HttpMetricsLayer::new())
        .service(routes());
    let found = requests_by_series(app, REQUESTS);
    assert!(
        found.keys().all(|(_, _, route)| route == "unmatched"),
        "{found:?}"
    );
}
