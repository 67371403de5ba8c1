//! `HttpMetricsLayer` inside an axum `Router` labels requests with axum's matched route
//! template (portcullis-metrics feature `axum`), never the raw path, over a real portcullis server.

mod common;

use std::collections::BTreeMap;

use axum::Router;
use axum::routing::get;
use common::Running;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use portcullis::metrics::HttpMetricsLayer;
use portcullis::metrics::http::{METHOD, REQUEST_DURATION, ROUTE, STATUS};

#[test]
fn the_matched_route_template_is_the_label() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let app = Router::new()
                .route("/users/{id}", get(|| async { "user\n" }))
                .route("/", get(|| async { "hello\n" }))
                .layer(HttpMetricsLayer::new());
            let server = Running::start(|b| b, app);
            let addr = server.addr();
            for path in [
                "/users/1", "/users/2", "/users/3", "/", "/nope/1", "/nope/2",
            ] {
                common::http_get(addr, path).await;
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
    let series =
        |status: &str, route: &str| ("GET".to_owned(), status.to_owned(), route.to_owned());
    assert_eq!(
        found,
        BTreeMap::from([
            (series("200", "/users/{id}"), 3),
            (series("200", "/"), 1),
            // axum's fallback runs the layer too, with no matched path.
            (series("404", "unmatched"), 2),
        ])
    );
}
