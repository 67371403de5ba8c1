//! The admin listener: `/metrics`, `/livez`, `/readyz` on a listener of its own, up from the
//! start until the drain has ended, reporting the server's readiness.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Running, app};
use portcullis::listen::Listener;
use portcullis::metrics::Admin;
use portcullis::shutdown::Health;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// One `GET path` on a fresh connection: status and body.
async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let response = common::try_http_get(addr, path).await?;
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `path` on `addr` until it answers `status`, for at most 10 s.
async fn until_status(addr: std::net::SocketAddr, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get(addr, path).await.ok().map(|(s, _)| s) == Some(status) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never answered {status}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn probes_follow_the_shutdown_and_the_admin_listener_outlives_the_drain() {
    let admin_listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let admin = admin_listener.local_addr().as_inet().expect("inet");
    let health = Health::new();
    let entered = Arc::new(Notify::new());
    let mut server = Running::start(
        |b| {
            b.health(health.clone())
                .drain_delay(Duration::from_millis(500))
                .admin_listener(admin_listener, Admin::new().metrics(|| "up 1\n".to_owned()))
        },
        app(Arc::clone(&entered)),
    );
    let addr = server.addr();
    until_status(admin, "/readyz", 200).await;
    assert_eq!(
        get(admin, "/livez").await.expect("livez"),
        (200, "ok\n".to_owned())
    );
    // The renderer's text, then the process and runtime sections the admin service adds.
    let (status, scrape) = get(admin, "/metrics").await.expect("metrics");
    assert_eq!(status, 200);
    assert!(scrape.starts_with("up 1\n"), "{scrape}");
    assert!(scrape.contains("\ntokio_workers "), "{scrape}");

    // A slow request in flight keeps the drain going.
    let mut slow = TcpStream::connect(addr).await.expect("connect");
    slow.write_all(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    entered.notified().await;

    server.begin_shutdown();
    // Readiness off at once, while the application is still served (the drain delay).
    until_status(admin, "/readyz", 503).await;
    let (status, _) = get(addr, "/").await.expect("served during the delay");
    assert_eq!(status, 200);
    // Then the application's listener closes; the admin listener still answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "application listener still open");
        tokio::task::yield_now().await;
    }
    assert_eq!(
        get(admin, "/readyz")
            .await
            .expect("admin up during the drain")
            .0,
        503
    );
    assert_eq!(
        get(admin, "/livez").await.expect("livez").0,
        200,
        "still live"
    );

    // The slow request completes; the drain ends; the admin listener closes after it.
    let mut response = Vec::new();
    slow.read_to_end(&mut response).await.expect("read");
    assert!(
        response.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&response)
    );
    let report = server.stop().await;
    assert!(report.is_clean(), "{report:?}");
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "the admin listener is closed once serve returns"
    );
}

#[tokio::test]
async fn without_a_health_of_its_own_the_server_reports_its_readiness() {
    let admin_listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let admin = admin_listener.local_addr().as_inet().expect("inet");
    let mut server = Running::start(
        |b| {
            b.admin_listener(admin_listener, Admin::new())
                .drain_delay(Duration::from_secs(30))
        },
        app(Default::default()),
    );
    until_status(admin, "/readyz", 200).await;
    // No exporter given: no metrics.
    assert_eq!(get(admin, "/metrics").await.expect("metrics").0, 404);
    server.begin_shutdown();
    until_status(admin, "/readyz", 503).await;
    server.force();
    let report = server.stop().await;
    assert_eq!(report.forced, 0, "{report:?}");
}
