//! Every connection phase is under a deadline, and each setting does exactly what it says.

mod common;

use std::time::Duration;

use common::{TestServer, assert_between, dribble, get_hello, read_until_closed};
use portcullis::server::HttpConfig;
use tokio::net::TcpStream;
use tokio::time::Instant;

const SHORT: Duration = Duration::from_millis(500);
const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn dribbled_first_request_head_is_closed_at_the_header_timeout() {
    let server = TestServer::start(
        HttpConfig::default()
            .header_timeout(SHORT)
            .idle_timeout(LONG),
    )
    .await;
    let stream = TcpStream::connect(server.addr).await.expect("connect");
    let (mut read, write) = stream.into_split();
    let started = Instant::now();
    let writer = dribble(write, b"GET / HTTP/1.1\r\nHost: slowloris\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Duration::from_millis(50));
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut read, &mut buf),
    )
    .await
    .expect("closed within 10 s");
    assert!(
        matches!(closed, Ok(0) | Err(_)),
        "no response is sent to a slowloris: {closed:?}"
    );
    assert_between(
        started.elapsed(),
        SHORT - Duration::from_millis(50),
        SHORT * 6,
        "slowloris close",
    );
    writer.abort();
}

#[tokio::test]
async fn silent_connection_is_closed_at_the_header_timeout() {
    let server = TestServer::start(
        HttpConfig::default()
            .header_timeout(SHORT)
            .idle_timeout(LONG),
    )
    .await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let (data, closed_at) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(data.is_empty());
    assert_between(
        closed_at - started,
        SHORT - Duration::from_millis(50),
        SHORT * 6,
        "silent close",
    );
}

#[tokio::test]
async fn dribbled_second_request_on_keep_alive_is_closed_at_the_header_timeout() {
    let server = TestServer::start(
        HttpConfig::default()
            .header_timeout(SHORT)
            .idle_timeout(LONG),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    get_hello(&mut stream).await;
    let (mut read, write) = stream.into_split();
    let started = Instant::now();
    let writer = dribble(write, b"GET / HTTP/1.1\r\nHost: slowloris\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", Duration::from_millis(50));
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::io::AsyncReadExt::read(&mut read, &mut buf),
    )
    .await
    .expect("closed within 10 s");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // Closed at the header timeout, long before the 30 s idle timeout.
    assert_between(
        started.elapsed(),
        SHORT - Duration::from_millis(50),
        SHORT * 6,
        "second-request slowloris close",
    );
    writer.abort();
}

#[tokio::test]
async fn idle_http1_connection_is_closed_at_the_idle_timeout() {
    let server = TestServer::start(
        HttpConfig::default()
            .header_timeout(LONG)
            .idle_timeout(SHORT),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    get_hello(&mut stream).await;
    let idle_from = Instant::now();
    let (data, closed_at) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(data.is_empty());
    assert_between(
        closed_at - idle_from,
        SHORT - Duration::from_millis(50),
        SHORT * 6,
        "idle close",
    );
}

#[tokio::test]
async fn idle_timeout_longer_than_header_timeout_is_honoured() {
    // hyper on its own would close this idle keep-alive connection at the header timeout.
    let header = Duration::from_millis(300);
    let idle = Duration::from_millis(1500);
    let server = TestServer::start(
        HttpConfig::default()
            .header_timeout(header)
            .idle_timeout(idle),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    get_hello(&mut stream).await;
    let idle_from = Instant::now();
    let (_, closed_at) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert_between(
        closed_at - idle_from,
        idle - Duration::from_millis(50),
        idle * 4,
        "idle close",
    );
}

#[tokio::test]
async fn keep_alive_connection_serves_many_requests_within_the_idle_timeout() {
    let server = TestServer::start(
        HttpConfig::default()
            .header_timeout(SHORT)
            .idle_timeout(SHORT),
    )
    .await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // Requests spread over several header timeouts: each request gets its own deadline.
    for _ in 0..8 {
        get_hello(&mut stream).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // Still open and serving after all of that.
    get_hello(&mut stream).await;
}

#[tokio::test]
async fn idle_http2_connection_is_closed_at_the_idle_timeout_but_not_while_a_stream_is_open() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let idle = SHORT;
    let server = TestServer::start(
        HttpConfig::default()
            .header_timeout(LONG)
            .idle_timeout(idle),
    )
    .await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);

    // A stream open for longer than the idle timeout keeps the connection.
    let request = http::Request::get(format!("http://{}/slow", server.addr))
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let (status, body) = common::status_and_body(response).await;
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"ok\n");

    let idle_from = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the server ends the idle HTTP/2 connection within 10 s");
    assert!(
        matches!(result, Ok(Ok(()))),
        "a graceful close (GOAWAY), not an error: {result:?}"
    );
    assert_between(
        idle_from.elapsed(),
        idle - Duration::from_millis(50),
        idle * 6,
        "h2 idle close",
    );
}

#[tokio::test]
async fn silent_connections_do_not_hold_up_the_accept_loop() {
    let server = TestServer::start(HttpConfig::default()).await;
    // Many connections that never send a byte, each waiting out its 10 s greeting deadline.
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // A real client behind them is served at once, long before any of them times out.
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    get_hello(&mut stream).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served after {:?}",
        started.elapsed()
    );
    drop(silent);
}
