//! Real signals to the reference server: a graceful drain exits 0, a forced one exits 1.

mod common;

use std::time::{Duration, Instant};

use common::Hardened;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts `GET /stream?n=2&ms=..` and returns once its first chunk arrived: the request is
/// then provably in flight.
async fn stream_in_flight(addr: std::net::SocketAddr, pause_ms: u64) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET /stream?n=2&ms={pause_ms} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("chunk 0") {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("first chunk within 10 s")
            .expect("read");
        assert!(n > 0, "closed before the first chunk");
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--acceptors", "1"], 1).await;
    let addr = server.addr();
    let mut in_flight = Vec::new();
    for _ in 0..10 {
        in_flight.push(stream_in_flight(addr, 700).await);
    }
    // Idle keep-alive connections must not hold the exit up.
    let mut idle = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = stream.read(&mut buf).await.expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hello\n"));
        idle.push(stream);
    }

    server.signal("TERM");
    let mut last_done = Instant::now();
    for mut stream in in_flight {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
            .await
            .expect("finishes within 10 s")
            .expect("read");
        let rest = String::from_utf8_lossy(&rest);
        assert!(
            rest.contains("chunk 1"),
            "every in-flight response completes: {rest:?}"
        );
        last_done = Instant::now();
    }
    let code = server.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 0, "a clean drain exits 0");
    assert!(
        last_done.elapsed() < Duration::from_secs(2),
        "exits promptly after the last response"
    );
}

#[tokio::test]
async fn drain_deadline_forces_an_endless_stream_and_exits_one() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--acceptors",
            "1",
            "--drain-timeout",
            "500ms",
        ],
        1,
    )
    .await;
    let _stream = stream_in_flight(server.addr(), 60_000).await;
    let started = Instant::now();
    server.signal("TERM");
    let code = server.wait(Duration::from_secs(20)).await;
    assert_eq!(code, 1, "a forced drain exits 1");
    assert!(started.elapsed() >= Duration::from_millis(450));
}

#[tokio::test]
async fn second_signal_forces_at_once() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--acceptors", "1"], 1).await;
    let mut stream = stream_in_flight(server.addr(), 60_000).await;
    server.signal("TERM");
    // The drain has begun once the listener refuses new connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(server.addr()).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still open 10 s after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    server.signal("INT");
    let code = server.wait(Duration::from_secs(10)).await;
    assert_eq!(code, 1);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "forced at once, not after the 30 s deadline"
    );
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

#[tokio::test]
async fn per_core_mode_drains_on_sigterm_too() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--per-core"], 1).await;
    let mut in_flight = stream_in_flight(server.addr(), 300).await;
    server.signal("TERM");
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), in_flight.read_to_end(&mut rest))
        .await
        .expect("finishes within 10 s")
        .expect("read");
    assert!(String::from_utf8_lossy(&rest).contains("chunk 1"));
    assert_eq!(server.wait(Duration::from_secs(10)).await, 0);
}

#[tokio::test]
async fn drain_delay_keeps_serving_then_refuses() {
    let delay = Duration::from_millis(800);
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--acceptors",
            "1",
            "--drain-delay",
            "800ms",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let started = Instant::now();
    server.signal("TERM");
    // Within the delay, new connections are still served.
    let response = common::get(addr, "/").await;
    assert!(response.ends_with("hello\n"), "{response}");
    assert!(started.elapsed() < delay, "served within the delay");
    // Then they are refused.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "listener still open 10 s after SIGTERM"
        );
        tokio::task::yield_now().await;
    }
    assert!(started.elapsed() >= delay - Duration::from_millis(50));
    assert_eq!(server.wait(Duration::from_secs(10)).await, 0);
}

/// Sends `GET /` requests on one keep-alive connection until the server closes it; returns
/// how many complete responses arrived. Panics on a partial response. A request must get a
/// whole answer, or none at all with the connection closed: HTTP/1.1's signal that it was not
/// processed and may be retried (a request crossing the server's close on the wire can never
/// be answered; what matters is that it is never half-answered and never hangs).
async fn keep_asking(addr: std::net::SocketAddr) -> usize {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return 0; // the listener already closed
    };
    let mut complete = 0;
    loop {
        if stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .is_err()
        {
            return complete;
        }
        let mut response = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("never a hang: an answer or a close within 10 s")
                .unwrap_or_default();
            if n == 0 {
                assert!(
                    response.is_empty(),
                    "a response was cut short: {:?}",
                    String::from_utf8_lossy(&response)
                );
                return complete;
            }
            response.extend_from_slice(&buf[..n]);
            if response.ends_with(b"hello\n") {
                assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"));
                complete += 1;
                break;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signal_racing_responses_never_cuts_a_response_or_hangs() {
    let mut answered_in_all = 0;
    for round in 0..15u64 {
        let server = Hardened::start(&["--listen", "127.0.0.1:0", "--acceptors", "1"], 1).await;
        let addr = server.addr();
        let clients: Vec<_> = (0..8).map(|_| tokio::spawn(keep_asking(addr))).collect();
        // Let the clients get going, then signal at a different moment each round.
        let mut warm = TcpStream::connect(addr).await.expect("connect");
        warm.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let _ = warm.read(&mut buf).await;
        for _ in 0..round {
            tokio::task::yield_now().await;
        }
        server.signal("TERM");
        let mut answered = 0;
        for client in clients {
            answered += client.await.expect("client");
        }
        drop(warm);
        assert_eq!(
            server.wait(Duration::from_secs(10)).await,
            0,
            "round {round}"
        );
        answered_in_all += answered;
    }
    // The signal did land among requests being answered.
    assert!(answered_in_all > 0);
}
