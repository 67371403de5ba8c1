//! The overload manager in a running server: memory pressure against a small configured
//! limit (first ending keep-alive, then shedding), and event-loop lag injected by a handler
//! that blocks its thread, each start shedding requests (503 with `Retry-After`, readiness off, the admin listener still
//! served) and stop it once the pressure is gone. Each server records into a local
//! Prometheus recorder on its own single thread, so that its metrics are its own.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use common::Running;
use portcullis::health::{Action, Monitor, Overload, Trigger};
use portcullis::listen::Listener;
use portcullis::metrics::{Admin, PrometheusExporter};
use tokio::time::Instant;

/// What the memory test allocates and touches: the limit is set so that it brings the
/// pressure to about 0.82, between the shedding threshold (0.75) and stopping accepting (0.9).
/// (One memory test only: the tests of a binary share its resident memory.)
const HOG: usize = 160 << 20;
/// What the lag test's handler blocks its thread for: twice the lag limit.
const BLOCK: Duration = Duration::from_secs(2);
const LAG_LIMIT: Duration = Duration::from_secs(1);
/// How long shedding stays on at least, once it fired.
const HOLD: Duration = Duration::from_millis(500);

/// One `GET path` on a fresh connection: the status and the whole response.
async fn get_status(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = common::try_http_get(addr, path)
        .await
        .unwrap_or_else(|error| panic!("GET {path} from {addr}: {error}"));
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    (status, response)
}

/// One keep-alive `GET /` on a fresh connection: the status and the response head and body,
/// lower-cased (read until the body, which ends with a newline).
async fn get_keep_alive(addr: SocketAddr) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|error| panic!("connect to {addr}: {error}"));
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"\n\r\n") && !response.ends_with(b"hello\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .expect("read");
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {response:?}"));
    (status, response)
}

/// Polls keep-alive `GET /`s (bounded: 15 s), each answered 200, until the response keeps
/// the connection alive (`kept`) or carries `Connection: close` (`!kept`).
async fn until_kept_alive(addr: SocketAddr, kept: bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, response) = get_keep_alive(addr).await;
        assert_eq!(status, 200, "served, kept alive or not: {response}");
        if response.contains("\r\nconnection: close\r\n") != kept {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "kept alive is still {}, not {kept}, after 15 s: {response}",
            !kept
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `path` until it answers `status` (bounded: 15 s); returns that response.
async fn until_status(addr: SocketAddr, path: &str, status: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (got, response) = get_status(addr, path).await;
        if got == status {
            return response;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still answers {got}, not {status}, after 15 s:\n{response}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the series `series` (name and labels as rendered) in a scrape of `admin`.
async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let (status, scrape) = get_status(admin, "/metrics").await;
    assert_eq!(status, 200, "/metrics is served: {scrape}");
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{scrape}"))
}

/// This process's resident memory, from `/proc/self/status`.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_ascii_whitespace().next()?.parse().ok())
        .expect("a VmRSS line");
    kib * 1024
}

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello\n" })).route(
        "/block",
        get(|| async {
            // Blocks the server's only thread: its event loop lags by BLOCK.
            std::thread::sleep(BLOCK);
            "blocked\n"
        }),
    )
}

/// Asserts that a shed response is a 503 that says when to come back.
fn assert_shed(response: &str) {
    let head = response.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 503"), "{response}");
    assert!(head.contains("\r\nretry-after: 1\r\n"), "{response}");
}

/// Asserts what readiness and the metrics say while requests are shed.
async fn assert_shedding(admin: SocketAddr, monitor: Monitor) {
    let readiness = until_status(admin, "/readyz?verbose", 503).await;
    assert!(readiness.contains("overloaded"), "{readiness}");
    assert!(
        readiness.contains(&format!("overload {}: ", monitor.as_str())),
        "{readiness}"
    );
    let action = format!(
        "portcullis_overload_action{{action=\"{}\"}}",
        Action::ShedRequests.as_str()
    );
    assert_eq!(metric(admin, &action).await, 1.0);
    let activations = format!(
        "portcullis_overload_activations_total{{action=\"{}\"}}",
        Action::ShedRequests.as_str()
    );
    assert_eq!(metric(admin, &activations).await, 1.0);
    assert!(metric(admin, "portcullis_requests_shed_total").await >= 1.0);
}

/// Asserts that shedding has stopped, in readiness and in the metrics.
async fn assert_recovered(addr: SocketAddr, admin: SocketAddr) {
    until_status(addr, "/", 200).await;
    until_status(admin, "/readyz", 200).await;
    let action = format!(
        "portcullis_overload_action{{action=\"{}\"}}",
        Action::ShedRequests.as_str()
    );
    assert_eq!(metric(admin, &action).await, 0.0);
}

/// A server of `app()` with `overload` and an admin listener serving `exporter`, on the
/// current runtime; the server and the admin address.
fn overloaded(overload: Overload, exporter: PrometheusExporter) -> (Running, SocketAddr) {
    let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind admin");
    let admin = listener.local_addr().as_inet().expect("inet");
    let server = Running::start(
        move |b| {
            b.overload(overload)
                .admin_listener(listener, Admin::new().prometheus(&exporter))
        },
        app(),
    );
    (server, admin)
}

// One thread: every task of the server records into this test's recorder.
#[tokio::test(flavor = "current_thread")]
async fn memory_pressure_ends_keep_alive_then_sheds_requests_until_the_memory_is_freed() {
    let recorder = PrometheusExporter::builder().build_recorder();
    let exporter = PrometheusExporter::for_recorder(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    // The memory ladder at 0.5: no keep-alive from 0.5, requests shed from 0.75, accepting
    // stops at 0.9. The limit puts the whole hog at 0.82 and its first part at 0.62.
    let resident = resident_bytes();
    let limit = (resident + HOG as u64) * 100 / 82;
    let first = usize::try_from(limit * 62 / 100 - resident).expect("fits");
    let overload = Overload::off()
        .memory_at(0.5)
        .memory_limit(limit)
        .hold(HOLD);
    let (server, admin) = overloaded(overload, exporter);
    let addr = server.addr();
    until_status(admin, "/readyz", 200).await;
    let (status, response) = get_keep_alive(addr).await;
    assert_eq!(status, 200);
    assert!(!response.contains("connection: close"), "{response}");

    // Allocated and touched (resident): past reclaiming, short of shedding. Requests are
    // served, and no connection is kept alive.
    let hog = std::hint::black_box(vec![1u8; first]);
    until_kept_alive(addr, false).await;
    assert_eq!(
        get_status(admin, "/readyz").await.0,
        200,
        "ready: not refusing"
    );

    // The rest of the hog: requests are shed.
    let more = std::hint::black_box(vec![1u8; HOG - first]);
    assert_shed(&until_status(addr, "/", 503).await);
    assert_shedding(admin, Monitor::Memory).await;
    assert!(metric(admin, "portcullis_overload_pressure{monitor=\"memory\"}").await >= 0.75);
    // Shedding is not stopping: new connections are still accepted, and answered.
    assert_shed(&get_status(addr, "/").await.1);

    drop((hog, more));
    assert_recovered(addr, admin).await;
    assert!(metric(admin, "portcullis_overload_pressure{monitor=\"memory\"}").await < 0.5);
    until_kept_alive(addr, true).await;
    server.stop().await;
}

#[tokio::test]
async fn event_loop_lag_sheds_requests_until_the_loop_catches_up() {
    // The server on a single-threaded runtime of its own, which its handler can block.
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let recorder = PrometheusExporter::builder().build_recorder();
        let exporter = PrometheusExporter::for_recorder(&recorder);
        let _local = metrics::set_default_local_recorder(&recorder);
        runtime.block_on(async move {
            let overload = Overload::off()
                .trigger(
                    Action::ShedRequests,
                    Monitor::EventLoopLag,
                    Trigger::Threshold(1.0),
                )
                .lag_limit(LAG_LIMIT)
                .hold(HOLD);
            let (server, admin) = overloaded(overload, exporter);
            ready_tx
                .send((server.addr(), admin))
                .expect("the test waits");
            let _ = stop_rx.await;
            server.stop().await;
        });
    });
    let (addr, admin) = ready_rx.await.expect("the server starts");
    until_status(admin, "/readyz", 200).await;
    assert_eq!(get_status(addr, "/").await.0, 200);

    // The loop lags by BLOCK (twice the lag limit) while the handler blocks it.
    let (status, _) = get_status(addr, "/block").await;
    assert_eq!(status, 200);
    assert_shed(&until_status(addr, "/", 503).await);
    assert_shedding(admin, Monitor::EventLoopLag).await;

    // The loop runs freely again: shedding ends once the hold has passed.
    assert_recovered(addr, admin).await;
    stop_tx.send(()).expect("the server waits");
    tokio::task::spawn_blocking(move || thread.join().expect("the server thread"))
        .await
        .expect("join");
}
