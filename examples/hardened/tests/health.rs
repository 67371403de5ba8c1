//! Monitoring on the admin listener: `--ready-requires` dependency checks with their
//! hysteresis, probes that never wait on a dependency, liveness that never depends on one,
//! and the process, runtime and event-loop metrics of `/metrics`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Hardened, get};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

fn status(response: &str) -> u16 {
    response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(admin: SocketAddr) -> String {
    let response = get(admin, "/metrics").await;
    assert_eq!(status(&response), 200, "{response}");
    body(&response).to_owned()
}

/// Polls `path` until it answers `want`, for at most `limit`; returns how long that took.
async fn until_status(addr: SocketAddr, path: &str, want: u16, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let response = get(addr, path).await;
        if status(&response) == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "{path} still {response:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls the scrape until `series` reaches at least `at_least`, for at most 10 s.
async fn until_value(admin: SocketAddr, series: &str, at_least: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(admin).await;
        if value(&text, series).is_some_and(|v| v >= at_least) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} below {at_least} after 10 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Accepts and drops connections until the listener is dropped (the task is aborted).
fn accept_forever(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    })
}

#[tokio::test]
async fn readiness_follows_a_tcp_dependency_with_hysteresis_and_liveness_ignores_it() {
    // A port nothing listens on yet: the dependency is down at start.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--ready-requires",
            &url,
        ],
        1,
    )
    .await;
    let admin = server.admin();
    // Never succeeded: not ready, although the server itself serves.
    assert_eq!(body(&get(server.addr(), "/").await), "hello\n");
    let response = get(admin, "/readyz").await;
    assert_eq!(status(&response), 503, "{response}");
    let verbose = get(admin, "/readyz?verbose").await;
    assert_eq!(status(&verbose), 503);
    assert!(
        body(&verbose).contains(&format!("check {url}: pending")),
        "{verbose}"
    );
    assert!(body(&verbose).contains("connect to 127.0.0.1"), "{verbose}");
    assert_eq!(status(&get(admin, "/livez").await), 200);

    // The dependency comes up: ready after its first success.
    let acceptor = accept_forever(
        TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the dependency"),
    );
    until_status(admin, "/readyz", 200, Duration::from_secs(10)).await;
    let verbose = get(admin, "/readyz?verbose").await;
    assert!(body(&verbose).starts_with("ready\n"), "{verbose}");
    assert!(
        body(&verbose).contains(&format!("check {url}: up")),
        "{verbose}"
    );

    // Down: three failures in a row, a second apart, before readiness goes.
    acceptor.abort();
    let _ = acceptor.await;
    let took = until_status(admin, "/readyz", 503, Duration::from_secs(15)).await;
    assert!(
        took >= Duration::from_millis(1500),
        "down after {took:?}: one failure must not take the instance out"
    );
    // Liveness never depends on a dependency.
    assert_eq!(status(&get(admin, "/livez").await), 200);

    // Back: two successes in a row.
    let acceptor = accept_forever(
        TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind the dependency again"),
    );
    let took = until_status(admin, "/readyz", 200, Duration::from_secs(15)).await;
    assert!(took >= Duration::from_millis(500), "up after {took:?}");
    let text = scrape(admin).await;
    let series = |to: &str| {
        format!("portcullis_health_check_transitions_total{{check=\"{url}\",to=\"{to}\"}}")
    };
    assert_eq!(value(&text, &series("up")), Some(2.0), "{text}");
    assert_eq!(value(&text, &series("down")), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            &format!("portcullis_health_check_up{{check=\"{url}\"}}")
        ),
        Some(1.0)
    );
    acceptor.abort();
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_hanging_http_dependency_never_slows_a_probe() {
    // Accepts and never answers: each check waits its whole 1 s timeout.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/health", listener.local_addr().expect("addr"));
    let hang = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--ready-requires",
            &url,
        ],
        1,
    )
    .await;
    let admin = server.admin();
    // Probes spread over more than two check timeouts, each answered well within one.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < Duration::from_millis(2500) {
        let asked = Instant::now();
        assert_eq!(status(&get(admin, "/readyz").await), 503);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        slowest < Duration::from_millis(900),
        "a probe took {slowest:?}: probes must only read the cached state"
    );
    let verbose = body(&get(admin, "/readyz?verbose").await).to_owned();
    assert!(verbose.contains("no answer within 1s"), "{verbose}");
    assert_eq!(status(&get(admin, "/livez").await), 200);
    hang.abort();
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn metrics_report_descriptors_against_the_limit_memory_cpu_and_the_runtime() {
    let server = Hardened::start_via_shell(
        r#"ulimit -n 4096 && exec "$0" "$@""#,
        &["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"],
        1,
    )
    .await;
    let admin = server.admin();
    let text = scrape(admin).await;
    assert_eq!(value(&text, "process_max_fds"), Some(4096.0), "{text}");
    let before = value(&text, "process_open_fds").expect("process_open_fds");
    // 50 idle keep-alive connections of ours: 50 more descriptors in the server.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(server.addr()).await.expect("connect"));
    }
    let text = until_value(admin, "process_open_fds", before + 50.0).await;
    let open = value(&text, "process_open_fds").expect("open");
    let utilization = value(&text, "portcullis_process_fds_utilization").expect("utilization");
    assert!(
        (utilization - open / 4096.0).abs() < 0.01,
        "{utilization} for {open} of 4096"
    );
    drop(idle);
    assert!(value(&text, "process_resident_memory_bytes").is_some_and(|b| b > 1e6));
    assert!(
        value(&text, "process_virtual_memory_bytes")
            >= value(&text, "process_resident_memory_bytes")
    );
    assert!(value(&text, "process_threads").is_some_and(|t| t >= 2.0));
    assert!(value(&text, "process_cpu_seconds_total").is_some_and(|s| s >= 0.0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    let started = value(&text, "process_start_time_seconds").expect("start time");
    assert!(
        started <= now + 1.0 && started > now - 120.0,
        "{started} {now}"
    );
    assert!(value(&text, "tokio_workers").is_some_and(|w| w >= 1.0));
    assert!(value(&text, "tokio_live_tasks").is_some_and(|t| t >= 1.0));
    for name in [
        "tokio_global_queue_depth",
        "tokio_park_total",
        "tokio_busy_duration_seconds_total",
        "tokio_busy_ratio",
        "portcullis_event_loop_lag_current_seconds",
    ] {
        assert!(value(&text, name).is_some(), "{name} in\n{text}");
    }
    // The lag probe measures every 100 ms.
    until_value(admin, "portcullis_event_loop_lag_seconds_count", 3.0).await;
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}
