//! `--admin`: Prometheus metrics, liveness and readiness on their own listener, through a
//! real shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Hardened, get};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
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

/// The series of a scrape (name and labels), without values and comments.
fn series(scrape: &str) -> std::collections::BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').map_or(l, |(s, _)| s).to_owned())
        .collect()
}

fn value(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `path` until it answers `status`, for at most 10 s. (`/readyz` turns 200 once the
/// server runs its listeners, a moment after the lines are printed.)
async fn until_status(addr: SocketAddr, path: &str, status: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = get(addr, path).await;
        if self::status(&response) == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still {response:?} after 10 s"
        );
        tokio::task::yield_now().await;
    }
}

async fn scrape(admin: SocketAddr) -> String {
    let response = get(admin, "/metrics").await;
    assert_eq!(status(&response), 200, "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
        "the Prometheus text content type: {response}"
    );
    body(&response).to_owned()
}

#[tokio::test]
async fn the_admin_listener_serves_a_valid_catalogue_with_bounded_series() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--acceptors",
            "1",
        ],
        1,
    )
    .await;
    let (addr, admin) = (server.addr(), server.admin());
    assert_eq!(status(&get(admin, "/livez").await), 200);
    until_status(admin, "/readyz", 200).await;

    for path in ["/", "/", "/nope", "/slow?ms=1"] {
        get(addr, path).await;
    }
    let text = scrape(admin).await;
    let route = |method: &str, status: &str, route: &str| {
        format!(
            "http_server_request_duration_seconds_count{{http_request_method=\"{method}\",http_response_status_code=\"{status}\",http_route=\"{route}\"}}"
        )
    };
    assert_eq!(value(&text, &route("GET", "200", "/")), Some(2.0), "{text}");
    assert_eq!(value(&text, &route("GET", "404", "unmatched")), Some(1.0));
    assert_eq!(value(&text, &route("GET", "200", "/slow")), Some(1.0));
    // The connection and shutdown catalogue is there from the start.
    for name in [
        "portcullis_listen_connections_accepted_total",
        "portcullis_connections_closed_total{reason=\"drain_forced\"}",
        "portcullis_shutdown_phase{phase=\"running\"}",
        "portcullis_listen_accept_errors_total{kind=\"emfile\"}",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} in\n{text}"
        );
    }
    assert_eq!(
        value(&text, "portcullis_shutdown_phase{phase=\"running\"}"),
        Some(1.0)
    );

    // The scrape passes promtool's checks (metadata, naming, histogram shape).
    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    let mut stdin = promtool.stdin.take().expect("stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("write to promtool");
    drop(stdin);
    let checked = promtool.wait_with_output().await.expect("promtool runs");
    assert!(
        checked.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Distinct paths add no series.
    let before = series(&text);
    for i in 0..300 {
        get(addr, &format!("/scan/{i:x}/{}", i * 7919)).await;
    }
    let after = series(&scrape(admin).await);
    assert_eq!(
        after.difference(&before).collect::<Vec<_>>(),
        Vec::<&String>::new()
    );
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn during_the_drain_delay_readyz_is_503_while_requests_are_served_then_refused() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--acceptors",
            "1",
            "--drain-delay",
            "1s",
        ],
        1,
    )
    .await;
    let (addr, admin) = (server.addr(), server.admin());
    until_status(admin, "/readyz", 200).await;
    // A request in flight across the whole shutdown keeps the drain (and the admin
    // listener) up until it is answered.
    let slow = tokio::spawn(async move { get(addr, "/slow?ms=3000").await });

    server.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&get(admin, "/readyz").await) != 503 {
        assert!(
            Instant::now() < deadline,
            "/readyz still 200 10 s after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    // Not ready, still serving: the delay is for load balancers to catch up.
    let during = get(addr, "/").await;
    assert_eq!(status(&during), 200, "{during}");
    assert_eq!(body(&during), "hello\n");
    // After the delay new connections are refused, while the admin listener still answers.
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still open 10 s after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    assert_eq!(status(&get(admin, "/readyz").await), 503);
    let text = scrape(admin).await;
    assert_eq!(
        value(&text, "portcullis_shutdown_phase{phase=\"drain\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "portcullis_shutdown_signals_total{signal=\"term\"}"),
        Some(1.0)
    );

    let slow = slow.await.expect("task");
    assert_eq!(status(&slow), 200, "{slow}");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}
