//! Clients choose paths and methods; they must not choose series. Scraped through the real
//! Prometheus exporter.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use portcullis_metrics::{HttpMetricsLayer, PrometheusExporter, Route};
use tower::{Layer, Service, ServiceExt};

/// Series lines of a scrape (comments and blank lines left out).
fn series(scrape: &str) -> std::collections::BTreeSet<String> {
    scrape
        .lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            line.rsplit_once(' ')
                .map_or(line, |(series, _)| series)
                .to_owned()
        })
        .collect()
}

/// A small xorshift generator: distinct, unpredictable paths without a dependency.
fn paths(count: usize) -> impl Iterator<Item = String> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..count).map(move |i| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        format!("/{state:016x}/{i}?q={}", state.rotate_left(17))
    })
}

#[tokio::test]
async fn ten_thousand_distinct_paths_add_no_series() {
    let recorder = PrometheusExporter::builder().build_recorder();
    let exporter = PrometheusExporter::for_recorder(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    portcullis_metrics::describe();
    // A router that names `/items/{id}` for paths under /items and nothing otherwise.
    let app = HttpMetricsLayer::new().layer(tower::service_fn(|request: Request<()>| async move {
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        if request.uri().path().starts_with("/items/") {
            response.extensions_mut().insert(Route::new("/items/{id}"));
        } else {
            *response.status_mut() = http::StatusCode::NOT_FOUND;
        }
        Ok::<_, Infallible>(response)
    }));
    let send = |method: &str, path: &str| {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request");
        let app = app.clone();
        async move {
            let response = app.oneshot(request).await.expect("infallible");
            response.into_body().collect().await.expect("body");
        }
    };
    // Warm up every series the test can reach.
    send("GET", "/items/1").await;
    send("GET", "/warm").await;
    send("FOO", "/warm").await;
    send("FOO", "/items/1").await;
    let before = series(&exporter.render());
    assert!(
        before
            .iter()
            .any(|s| s.contains("http_route=\"/items/{id}\""))
    );

    let mut app = app.clone();
    for (i, path) in paths(10_000).enumerate() {
        let path = if i % 2 == 0 {
            format!("/items{path}")
        } else {
            path
        };
        // Invented methods too: every one of them is `_OTHER`.
        let method = if i % 3 == 0 {
            format!("X{i}")
        } else {
            "GET".to_owned()
        };
        let request = Request::builder()
            .method(method.as_str())
            .uri(path)
            .body(())
            .expect("request");
        let response = app
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("ok");
        response.into_body().collect().await.expect("body");
    }
    let after = series(&exporter.render());
    assert_eq!(
        after.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "no new series, whatever the paths"
    );
    assert_eq!(before.len(), after.len());
    assert!(
        after
            .iter()
            .any(|s| s.contains("http_server_request_duration_seconds_count")
                && s.contains("http_request_method=\"_OTHER\"")),
        "invented methods are counted as _OTHER"
    );
}
