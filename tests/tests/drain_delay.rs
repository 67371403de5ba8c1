//! Readiness goes off at the first moment of a shutdown; during the drain delay the server
//! still accepts and serves; after it, new connections are refused.

mod common;

use std::time::Duration;

use common::{Running, app};
use portcullis::shutdown::Health;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Polls `condition` until it holds, for at most `limit`.
async fn until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn readiness_off_first_then_serving_through_the_delay_then_refusing() {
    let delay = Duration::from_millis(800);
    let health = Health::new();
    let mut server = Running::start(
        |b| b.health(health.clone()).drain_delay(delay),
        app(Default::default()),
    );
    let addr = server.addr();
    until(Duration::from_secs(5), "ready", || health.is_ready()).await;

    let started = Instant::now();
    server.begin_shutdown();
    until(Duration::from_secs(1), "readiness off", || {
        !health.is_ready()
    })
    .await;

    // Still accepting and serving new connections during the delay.
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("accepted during the delay");
    common::get_hello(&mut stream).await;
    assert!(started.elapsed() < delay, "served within the delay");

    // Then the listener closes: new connections are refused, not left hanging.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still open 10 s later");
        tokio::task::yield_now().await;
    }
    assert!(
        started.elapsed() >= delay - Duration::from_millis(50),
        "closed after {:?}, before the {delay:?} delay",
        started.elapsed()
    );
    drop(stream);
    let report = server.stop().await;
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.delay_duration >= delay - Duration::from_millis(50),
        "{report:?}"
    );
    assert!(!health.is_ready());
}

#[tokio::test]
async fn force_ends_the_delay_at_once() {
    let health = Health::new();
    let mut server = Running::start(
        |b| {
            b.health(health.clone())
                .drain_delay(Duration::from_secs(60))
        },
        app(Default::default()),
    );
    until(Duration::from_secs(5), "ready", || health.is_ready()).await;
    server.begin_shutdown();
    until(Duration::from_secs(1), "readiness off", || {
        !health.is_ready()
    })
    .await;
    let started = Instant::now();
    server.force();
    let report = server.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(report.forced, 0, "nothing was open");
}
