//! The shutdown hook: listeners close, idle connections close at once, in-flight requests
//! finish, and the drain deadline forces the rest.

mod common;

use std::time::Duration;

use common::{TestServer, get_hello, read_until_closed};
use portcullis::server::HttpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test]
async fn drain_finishes_in_flight_requests_closes_idle_ones_and_refuses_new_ones() {
    let mut server = TestServer::start(HttpConfig::default()).await;
    let addr = server.addr;

    let mut idle = TcpStream::connect(addr).await.expect("connect idle");
    get_hello(&mut idle).await;

    let mut busy = TcpStream::connect(addr).await.expect("connect busy");
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    // Wait until the slow request is in its handler.
    server.entered.notified().await;

    let started = Instant::now();
    server.begin_shutdown();

    // The idle keep-alive connection is closed at once, without waiting for the slow one.
    let (_, idle_closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;
    assert!(
        idle_closed - started < Duration::from_millis(700),
        "idle closed after {:?}",
        idle_closed - started
    );

    // The in-flight request completes, told that the connection closes.
    let (response, _) = read_until_closed(&mut busy, Duration::from_secs(10)).await;
    let response = String::from_utf8_lossy(&response).to_lowercase();
    assert!(response.starts_with("http/1.1 200 ok"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    assert!(response.ends_with("ok\n"), "{response}");

    let report = server.report().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.forced, 0);
    assert!(report.connections >= 2, "{report:?}");

    // The listener is closed: new connections are refused.
    let refused = TcpStream::connect(addr).await;
    assert!(
        refused.is_err(),
        "a connection after the drain must be refused"
    );
}

#[tokio::test]
async fn endless_stream_is_cut_at_the_drain_deadline() {
    let drain = Duration::from_millis(400);
    let mut server = TestServer::start_with(HttpConfig::default(), drain).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /forever HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).await.expect("first chunk");
    assert!(n > 0);
    let started = Instant::now();
    server.begin_shutdown();
    let (_, closed_at) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed_at - started >= drain - Duration::from_millis(50));
    let report = server.report().await;
    assert_eq!(report.forced, 1, "{report:?}");
    assert!(!report.is_clean());
}

#[tokio::test]
async fn force_trigger_cuts_the_drain_short() {
    let mut server = TestServer::start_with(HttpConfig::default(), Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"GET /forever HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    assert!(stream.read(&mut buf).await.expect("first chunk") > 0);
    server.begin_shutdown();
    let started = Instant::now();
    server.force();
    let (_, closed_at) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed_at - started < Duration::from_secs(5));
    let report = server.report().await;
    assert_eq!(report.forced, 1, "{report:?}");
}

#[tokio::test]
async fn idle_http2_peer_that_never_answers_is_closed_promptly_by_the_drain() {
    // The server's graceful HTTP/2 close waits for a PING answer; a dead peer never sends one.
    let mut server = TestServer::start_with(HttpConfig::default(), Duration::from_secs(10)).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .expect("preface");
    // The server's SETTINGS arrive once it has read the preface (protocol detection first).
    let mut frame = [0u8; 9];
    stream
        .read_exact(&mut frame)
        .await
        .expect("server settings");
    assert_eq!(frame[3], 0x4, "a SETTINGS frame");

    let started = Instant::now();
    server.begin_shutdown();
    // From here on the peer is dead: it reads (to see the close) but never answers.
    let (_, closed_at) = read_until_closed(&mut stream, Duration::from_secs(20)).await;
    assert!(
        closed_at - started < Duration::from_secs(4),
        "closed after {:?}, not at the 10 s drain deadline",
        closed_at - started
    );
    let report = server.report().await;
    assert!(report.is_clean(), "{report:?}");
}

/// An SSE-style endless stream that ends itself when the server's shutdown token fires.
fn ticking_app(token: tokio_util::sync::CancellationToken) -> axum::Router {
    axum::Router::new().route(
        "/events",
        axum::routing::get(move || {
            let token = token.clone();
            async move {
                let ticks = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Ok::<_, std::convert::Infallible>("data: tick\n\n"), ()))
                });
                axum::body::Body::from_stream(portcullis::shutdown::end_on_shutdown(
                    Box::pin(ticks),
                    &token,
                ))
            }
        }),
    )
}

#[tokio::test]
async fn streams_that_watch_the_shutdown_token_end_by_themselves() {
    let token = tokio_util::sync::CancellationToken::new();
    let mut server = common::Running::start(
        |b| {
            b.shutdown_token(token.clone())
                .drain_timeout(Duration::from_secs(30))
        },
        ticking_app(token.clone()),
    );
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 256];
    assert!(stream.read(&mut buf).await.expect("first event") > 0);
    let started = Instant::now();
    server.begin_shutdown();
    // The stream ends, the response completes, the connection drains: no 30 s wait.
    let (rest, closed_at) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(closed_at - started < Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&rest).ends_with("0\r\n\r\n"),
        "the chunked response ended properly"
    );
    let report = server.stop().await;
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.forced, 0);
}

#[tokio::test]
async fn tracked_background_tasks_are_waited_for_under_the_drain_deadline() {
    // A task that needs 300 ms to wind down once told: the drain waits for it.
    let token = tokio_util::sync::CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let finished = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let token = token.clone();
        let finished = finished.clone();
        tasks.spawn(async move {
            token.cancelled().await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            finished.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let server = common::Running::start(
        |b| b.shutdown_token(token.clone()).track_tasks(tasks.clone()),
        common::app(Default::default()),
    );
    let report = server.stop().await;
    assert!(
        finished.load(std::sync::atomic::Ordering::SeqCst),
        "waited for the task"
    );
    assert_eq!(report.tasks_left, 0);
    assert!(report.is_clean());

    // A task that never ends: reported at the deadline, the run is not clean.
    let tasks = tokio_util::task::TaskTracker::new();
    tasks.spawn(std::future::pending::<()>());
    let server = common::Running::start(
        |b| {
            b.track_tasks(tasks.clone())
                .drain_timeout(Duration::from_millis(300))
        },
        common::app(Default::default()),
    );
    let started = Instant::now();
    let report = server.stop().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(report.tasks_left, 1, "{report:?}");
    assert!(!report.is_clean());
}

#[tokio::test]
async fn a_panicking_phase_hook_does_not_stop_the_shutdown() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let server = {
        let seen = seen.clone();
        common::Running::start(
            move |b| {
                b.on_phase(move |phase| {
                    seen.lock().expect("lock").push(phase);
                    panic!("hook panics on purpose");
                })
            },
            common::app(Default::default()),
        )
    };
    let report = server.stop().await;
    assert!(report.is_clean());
    use portcullis::server::ShutdownPhase;
    assert_eq!(
        *seen.lock().expect("lock"),
        [
            ShutdownPhase::Running,
            ShutdownPhase::Drain,
            ShutdownPhase::Done
        ]
    );
}

#[tokio::test]
async fn one_shutdown_value_configures_the_whole_sequence() {
    use portcullis::shutdown::Shutdown;
    let shutdown = Shutdown::new().drain_delay(Duration::from_millis(300));
    let (handle, health, token, tasks) = (
        shutdown.handle(),
        shutdown.health(),
        shutdown.token(),
        shutdown.tasks(),
    );
    let wound_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (token, wound_down) = (token.clone(), wound_down.clone());
        tasks.spawn(async move {
            token.cancelled().await;
            wound_down.store(true, std::sync::atomic::Ordering::SeqCst);
        });
    }
    let listener =
        portcullis::listen::Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().as_inet().expect("inet");
    let server = tokio::spawn(
        portcullis::server::Server::builder()
            .listener(listener)
            .graceful(shutdown)
            .serve(common::app(Default::default())),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !health.is_ready() {
        assert!(Instant::now() < deadline, "ready within 5 s");
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    handle.shutdown();
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("drained")
        .expect("task")
        .expect("serve");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "the drain delay applied"
    );
    assert!(!health.is_ready() && token.is_cancelled());
    assert!(
        wound_down.load(std::sync::atomic::Ordering::SeqCst),
        "tasks were waited for"
    );
    assert!(report.is_clean(), "{report:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
}
