//! Upgrades started through an `UpgradeHandle`, in-process: one refused because too many
//! older generations are draining, one whose new executable exits at once; either way the
//! server serves on, and the outcome is counted.

mod common;

use std::time::Duration;

use common::Running;
use portcullis::listen::Listener;
use portcullis::metrics::{Admin, PrometheusExporter};
use portcullis::server::Upgrade;
use tokio::time::Instant;

/// The value of `series` in a scrape of `admin`.
async fn metric(admin: std::net::SocketAddr, series: &str) -> f64 {
    let scrape = common::try_http_get(admin, "/metrics")
        .await
        .expect("scrape");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{scrape}"))
}

/// Polls (bounded: 15 s) until `series` is `value`.
async fn metric_is(admin: std::net::SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = metric(admin, series).await;
        if now == value {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {now}, not {value}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server with `upgrade` (no SIGUSR2: this test process has other tests) and an admin
/// listener whose metrics are this test's; its address and admin address.
fn upgrading(upgrade: Upgrade, exporter: PrometheusExporter) -> (Running, std::net::SocketAddr) {
    let admin = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind admin");
    let admin_addr = admin.local_addr().as_inet().expect("inet");
    let server = Running::start(
        move |b| {
            b.upgrade(upgrade.on_signal(false))
                .admin_listener(admin, Admin::new().prometheus(&exporter))
        },
        tower::service_fn(|_| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                bytes::Bytes::from_static(b"hello\n"),
            )))
        }),
    );
    (server, admin_addr)
}

#[tokio::test(flavor = "current_thread")]
async fn an_upgrade_past_the_draining_bound_is_refused_and_the_server_serves_on() {
    let upgrade = Upgrade::new().max_draining(0);
    let handle = upgrade.handle();
    // One thread: every task of the server records into this test's recorder.
    let recorder = PrometheusExporter::builder().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (server, admin) = upgrading(upgrade, PrometheusExporter::for_recorder(&recorder));
    metric_is(admin, "portcullis_upgrade_generation", 1.0).await;
    handle.upgrade();
    metric_is(admin, "portcullis_upgrades_total{outcome=\"refused\"}", 1.0).await;
    assert_eq!(
        metric(admin, "portcullis_upgrades_total{outcome=\"ready\"}").await,
        0.0
    );
    let hello = common::try_http_get(server.addr(), "/")
        .await
        .expect("served");
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    server.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_new_executable_that_exits_is_counted_and_the_server_serves_on() {
    let upgrade = Upgrade::new().exec("/bin/false").args(["--unused"]);
    let handle = upgrade.handle();
    // One thread: every task of the server records into this test's recorder.
    let recorder = PrometheusExporter::builder().build_recorder();
    let _local = metrics::set_default_local_recorder(&recorder);
    let (server, admin) = upgrading(upgrade, PrometheusExporter::for_recorder(&recorder));
    handle.upgrade();
    metric_is(admin, "portcullis_upgrades_total{outcome=\"exited\"}", 1.0).await;
    let hello = common::try_http_get(server.addr(), "/")
        .await
        .expect("served");
    assert!(hello.starts_with("HTTP/1.1 200"), "{hello}");
    server.stop().await;
}
