//! Shared by `install_before.rs` and `install_after.rs`: blocks report to the process's
//! Prometheus exporter whether they were built before or after it was installed.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use portcullis::limit::{ConnLimits, RateLimitLayer};
use portcullis::listen::Listener;
use portcullis::metrics::{Admin, HttpMetricsLayer, PrometheusExporter};
use tower::ServiceBuilder;

use crate::common::{Running, http_get};

async fn hello(
    _: Request<portcullis::server::RequestBody>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

/// Builds a rate limit, the HTTP metrics layer and connection caps before (`before`) or
/// after installing the exporter, serves two requests (the second a 429) and checks the
/// scrape for the series of all three.
pub(crate) async fn blocks_report_to_the_exporter(before: bool) {
    let build = || {
        let quota = "1/m".parse().expect("quota");
        (
            RateLimitLayer::per_client(quota)
                .name("install-order")
                .layer(),
            HttpMetricsLayer::new(),
            ConnLimits::new(100).build(),
        )
    };
    let built = before.then(build);
    let exporter = PrometheusExporter::install().expect("the first recorder of this process");
    let (limit, metrics, caps) = built.unwrap_or_else(build);
    let admin = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind admin");
    let admin_addr = admin.local_addr().as_inet().expect("inet");
    let service = ServiceBuilder::new()
        .layer(metrics)
        .layer(limit)
        .service_fn(hello);
    let server = Running::start(
        move |b| {
            b.connection_limits(caps)
                .admin_listener(admin, Admin::new().prometheus(&exporter))
        },
        service,
    );
    assert!(
        http_get(server.addr(), "/")
            .await
            .starts_with("HTTP/1.1 200")
    );
    assert!(
        http_get(server.addr(), "/")
            .await
            .starts_with("HTTP/1.1 429")
    );
    let scrape = http_get(admin_addr, "/metrics").await;
    for series in [
        "portcullis_limit_requests_total{limiter=\"install-order\",result=\"allowed\"} 1",
        "portcullis_limit_requests_total{limiter=\"install-order\",result=\"limited\"} 1",
        "http_server_active_requests{http_request_method=\"GET\"} 0",
        "portcullis_connections_closed_total{reason=\"complete\"}",
    ] {
        assert!(
            scrape.contains(series),
            "no `{series}` in the scrape:\n{scrape}"
        );
    }
    assert!(
        scrape.contains("http_server_request_duration_seconds_count{")
            && scrape.contains("http_response_status_code=\"429\""),
        "the 429 counted in the request histogram:\n{scrape}"
    );
    server.stop().await;
}
