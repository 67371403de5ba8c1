//! Criterion benchmarks of portcullis-metrics (docs/performance.md records the figures):
//!
//! - `layer/bare` vs `layer/metrics`: one request through a ready service and its body to the
//!   end, without and with `HttpMetricsLayer`, recording into the installed Prometheus
//!   exporter, as a server does. The difference is the layer's cost per request.
//!   `layer/metrics-exporter-prometheus`: the same layer recording into the facade's
//!   general-purpose exporter (metrics-exporter-prometheus, same buckets), for comparison.
//! - `render/catalogue`: one scrape of every metric portcullis emits (all series of every crate
//!   touched once, plus the HTTP series of a dozen routes).
//! - `render/process`: what the admin service adds to every scrape on Linux: the process
//!   metrics read from `/proc`; `render/runtime`: the tokio runtime's, for a two-worker runtime.
//!
//! `cargo bench -p portcullis-benches --bench metrics`

#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use portcullis_benches::{drain, get_root, hello, now};
use portcullis_metrics::{Admin, HttpMetricsLayer, PrometheusExporter, Route};
use tower::{Layer, Service};

fn bench(c: &mut Criterion) {
    let exporter = PrometheusExporter::install().unwrap_or_else(|e| panic!("{e}"));
    portcullis_metrics::describe();
    portcullis_server::metrics::describe_all();

    let mut group = c.benchmark_group("layer");
    let mut bare = tower::service_fn(hello);
    group.bench_function("bare", |b| {
        b.iter(|| {
            let response = now(bare.call(black_box(get_root()))).unwrap_or_else(|e| match e {});
            drain(response.into_body());
        });
    });
    let mut measured = HttpMetricsLayer::new().layer(tower::service_fn(hello));
    group.bench_function("metrics", |b| {
        b.iter(|| {
            let response = now(measured.call(black_box(get_root()))).unwrap_or_else(|e| match e {});
            drain(response.into_body());
        });
    });
    let upstream = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(portcullis_metrics::http::REQUEST_DURATION_BUCKETS)
        .unwrap_or_else(|e| panic!("{e}"))
        .build_recorder();
    let handle = upstream.handle();
    metrics::with_local_recorder(&upstream, || {
        let mut measured = HttpMetricsLayer::new().layer(tower::service_fn(hello));
        group.bench_function("metrics-exporter-prometheus", |b| {
            b.iter(|| {
                let response =
                    now(measured.call(black_box(get_root()))).unwrap_or_else(|e| match e {});
                drain(response.into_body());
            });
            // Keep its sample buffers from growing across iterations, as its upkeep does.
            handle.run_upkeep();
        });
    });
    group.finish();

    // The whole catalogue: touch every series portcullis can emit, and a dozen routes.
    portcullis_server::metrics::register_all();
    let layer = HttpMetricsLayer::new();
    for route in [
        "/", "/a", "/b", "/c", "/d", "/e", "/f", "/g", "/h", "/i", "/j", "/k",
    ] {
        let mut service = layer.layer(tower::service_fn(move |_: Request<()>| async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            response.extensions_mut().insert(Route::new(route));
            Ok::<_, Infallible>(response)
        }));
        for method in ["GET", "POST"] {
            let request = Request::builder()
                .method(method)
                .body(())
                .unwrap_or_else(|_| unreachable!("a valid request"));
            drain(
                now(service.call(request))
                    .unwrap_or_else(|e| match e {})
                    .into_body(),
            );
        }
    }
    let scrape = exporter.render();
    println!(
        "render/catalogue: {} bytes, {} series lines",
        scrape.len(),
        scrape.lines().filter(|l| !l.starts_with('#')).count()
    );
    c.bench_function("render/catalogue", |b| {
        b.iter(|| black_box(exporter.render()))
    });

    // The sections the admin service appends to the exporter's text: an empty renderer, so
    // only they are measured.
    let metrics_of = |admin: &mut Admin| {
        let request = Request::get("/metrics")
            .body(())
            .unwrap_or_else(|_| unreachable!("a valid request"));
        let response = now(admin.call(request)).unwrap_or_else(|e| match e {});
        response.into_body().into_bytes()
    };
    let mut process = Admin::new().metrics(String::new);
    c.bench_function("render/process", |b| {
        b.iter(|| black_box(metrics_of(&mut process)))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut tokio = Admin::new()
        .metrics(String::new)
        .process_metrics(false)
        .runtime(runtime.handle().clone());
    c.bench_function("render/runtime", |b| {
        b.iter(|| black_box(metrics_of(&mut tokio)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
