//! Minimum data rates after the request head, over real loopback sockets: trickled request
//! bodies get 408 and their connection closed (HTTP/1) or their stream reset (HTTP/2); clients
//! that stop reading a response are closed, or on HTTP/2 have their stalled stream reset;
//! steady slow links and routes with rates of their own are never cut; the HTTP/2 connection
//! window being used up by another stream does not count against a body. Each close and
//! reset is counted by reason.
//!
//! Every server runs on the test's own thread (a current-thread runtime), so that the
//! Prometheus exporter can be the test's local recorder and its text shows the counts.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use bytes::Bytes;
use common::Running;
use portcullis::metrics::PrometheusExporter;
use portcullis::server::{HttpConfig, MinRate, MinRateLayer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;

/// Size of the `/big` responses: far more than the kernel buffers of a client that does not
/// read can hold.
const BIG: usize = 8 * 1024 * 1024;
const CHUNK: usize = 16 * 1024;

/// Rates that act within a couple of seconds: a grace of 1 s, and responses at 64 KiB/s (a
/// write hyper presents is at most 64 KiB, so its allowance is about a second).
fn quick() -> HttpConfig {
    HttpConfig::default()
        .min_body_rate(MinRate::new(1000, Duration::from_secs(1)))
        .min_response_rate(MinRate::new(64 * 1024, Duration::from_secs(1)))
}

fn big_body() -> Body {
    let chunks = futures_util::stream::iter(
        (0..BIG / CHUNK).map(|_| Ok::<_, Infallible>(Bytes::from(vec![b'x'; CHUNK]))),
    );
    Body::from_stream(chunks)
}

/// The application: `/` hello, `/echo` echoes a collected body, `/big` streams 8 MiB; the
/// `-free` routes have the rates off; `/hold` keeps its body unread until `release`.
fn app(release: Arc<Notify>) -> Router {
    let off = MinRateLayer::new()
        .body(MinRate::OFF)
        .response(MinRate::OFF);
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/echo",
            post(|body: Bytes| async move { body })
                .layer(axum::extract::DefaultBodyLimit::max(16 * 1024 * 1024)),
        )
        .route("/big", get(|| async { big_body() }))
        .route(
            "/whole",
            get(|| async { Bytes::from(vec![b'w'; 256 * 1024]) }),
        )
        .route(
            "/echo-free",
            post(|body: Bytes| async move { body }).layer(off),
        )
        .route("/big-free", get(|| async { big_body() }).layer(off))
        .route("/upgrade", get(upgrade))
        .route(
            "/hold",
            post(move |body: Body| async move {
                release.notified().await;
                let body = axum::body::to_bytes(body, usize::MAX)
                    .await
                    .unwrap_or_default();
                body.len().to_string()
            }),
        )
}

/// Answers `101 Switching Protocols`, then writes 8 MiB into the upgraded connection.
async fn upgrade(mut request: axum::extract::Request) -> http::Response<Body> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            for _ in 0..BIG / CHUNK {
                if io.write_all(&[b'u'; CHUNK]).await.is_err() {
                    return;
                }
            }
        }
    });
    http::Response::builder()
        .status(http::StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, "bytes")
        .header(http::header::CONNECTION, "upgrade")
        .body(Body::empty())
        .expect("response")
}

struct Server {
    running: Running,
    exporter: PrometheusExporter,
    release: Arc<Notify>,
    _local: metrics::LocalRecorderGuard<'static>,
}

impl Server {
    fn start(http: HttpConfig) -> Self {
        // Leaked: the guard borrows the recorder for the whole test.
        let recorder = Box::leak(Box::new(PrometheusExporter::builder().build_recorder()));
        let exporter = PrometheusExporter::for_recorder(recorder);
        let local = metrics::set_default_local_recorder(recorder);
        portcullis::server::metrics::register();
        let release = Arc::new(Notify::new());
        let running = Running::start(move |b| b.http(http), app(Arc::clone(&release)));
        Self {
            running,
            exporter,
            release,
            _local: local,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.addr()
    }

    /// The value of one series in the exporter's text, 0 when absent.
    fn metric(&self, series: &str) -> f64 {
        self.exporter
            .render()
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (up to 20 s) for `series` to reach `value`.
    async fn metric_reaches(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.metric(series) < value {
            assert!(
                Instant::now() < deadline,
                "{series} stayed at {} (expected {value})",
                self.metric(series)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const CLOSED_BODY: &str = r#"portcullis_connections_closed_total{reason="min_body_rate"}"#;
const CLOSED_RESPONSE: &str = r#"portcullis_connections_closed_total{reason="min_response_rate"}"#;
const RESET_BODY: &str = r#"portcullis_streams_reset_total{reason="min_body_rate"}"#;
const RESET_RESPONSE: &str = r#"portcullis_streams_reset_total{reason="min_response_rate"}"#;

/// A client socket whose receive buffer is small, so that not reading fills it quickly.
async fn small_window_client(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Sends a POST head announcing `length` bytes to `path`, then trickles two bytes every
/// 250 ms (at most 120 times) until the server answers; returns the answer and how long the
/// connection took to close after the head.
async fn trickle(addr: SocketAddr, path: &str, length: usize) -> (String, Duration) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..120 {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return (String::from_utf8_lossy(&answer).into(), started.elapsed()),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(250)) => {
                let _ = stream.write_all(b"ab").await;
            }
        }
    }
    panic!("still open after 30 s of trickling: {answer:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn trickled_bodies_get_408_and_are_closed_while_a_legitimate_client_is_served() {
    let server = Server::start(quick());
    let addr = server.addr();
    let trickles: Vec<_> = (0..100)
        .map(|_| tokio::spawn(trickle(addr, "/echo", 1_000_000)))
        .collect();
    // Meanwhile a legitimate client is served: keep-alive GETs and an upload at full speed.
    let mut legit = TcpStream::connect(addr).await.expect("connect");
    for _ in 0..20 {
        common::get_hello(&mut legit).await;
    }
    let length = 64 * 1024;
    let head = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n");
    legit.write_all(head.as_bytes()).await.expect("head");
    legit.write_all(&vec![b'y'; length]).await.expect("body");
    let echoed = read_response(&mut legit, length).await;
    assert!(echoed.starts_with(b"HTTP/1.1 200"), "{:?}", &echoed[..40]);
    for trickle in trickles {
        let (answer, closed_after) = trickle.await.expect("trickler");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("connection: close"), "{answer:?}");
        // A grace of 1 s, then a check per 1 s tick: cut at the second tick.
        assert!(
            closed_after < Duration::from_secs(8),
            "closed after {closed_after:?}"
        );
    }
    server.metric_reaches(CLOSED_BODY, 100.0).await;
    common::get_hello(&mut legit).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_steady_slow_upload_and_a_slow_download_complete_under_the_defaults() {
    let server = Server::start(HttpConfig::default());
    let addr = server.addr();
    // A 64 KiB upload at 16 KiB/s: 1 KiB every 62.5 ms, for 4 s.
    let mut upload = TcpStream::connect(addr).await.expect("connect");
    let length = 64 * 1024;
    let head = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n");
    upload.write_all(head.as_bytes()).await.expect("head");
    let mut ticks = tokio::time::interval(Duration::from_micros(62_500));
    for _ in 0..64 {
        ticks.tick().await;
        upload.write_all(&[b'u'; 1024]).await.expect("upload");
    }
    let answer = read_response(&mut upload, length).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", &answer[..40]);

    // A download read at 32 KiB/s through a small receive buffer: 2 KiB every 62.5 ms.
    let mut download = small_window_client(addr).await;
    download
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let mut received = 0;
    let mut buf = vec![0u8; 2048];
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        ticks.tick().await;
        let n = download.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "closed after {received} bytes of a slow but steady download"
        );
        received += n;
    }
    assert!(received > 128 * 1024, "{received} bytes in 8 s");
    assert_eq!(server.metric(CLOSED_RESPONSE), 0.0);
    assert_eq!(server.metric(CLOSED_BODY), 0.0);
}

/// Reads a response with a `content-length` body of `length` bytes.
async fn read_response(stream: &mut TcpStream, length: usize) -> Vec<u8> {
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n")
            && answer.len() >= end + 4 + length
        {
            return answer;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("response within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "closed mid-response: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn http1_clients_that_stop_reading_are_closed() {
    // 1 MiB/s: the echo's single write of 6 MiB gets 6 s once the kernel buffers are full.
    let server =
        Server::start(quick().min_response_rate(MinRate::new(1024 * 1024, Duration::from_secs(1))));
    let addr = server.addr();
    // A large streamed response, and a large echo, neither read.
    let mut stream = small_window_client(addr).await;
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let mut echo = small_window_client(addr).await;
    // More than loopback's send buffer can take (it grows to a few MiB).
    let length = 6 * 1024 * 1024;
    let head = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n");
    echo.write_all(head.as_bytes()).await.expect("head");
    echo.write_all(&vec![b'e'; length]).await.expect("body");
    server.metric_reaches(CLOSED_RESPONSE, 2.0).await;
    // Closed: what is left in the buffers, then the end.
    let (data, _) = common::read_until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(
        data.len() < BIG,
        "the whole response went out: {}",
        data.len()
    );
    let mut legit = TcpStream::connect(addr).await.expect("connect");
    common::get_hello(&mut legit).await;
}

#[tokio::test(flavor = "current_thread")]
async fn routes_with_their_own_rates_are_not_cut() {
    let server = Server::start(quick());
    let addr = server.addr();
    // A body trickled at 8 B/s for 3 s (well below 1000 B/s, past the 1 s grace), then the
    // rest at once: the route's body rate is off.
    let mut upload = TcpStream::connect(addr).await.expect("connect");
    let length = 4096;
    let head = format!("POST /echo-free HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n");
    upload.write_all(head.as_bytes()).await.expect("head");
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        upload.write_all(b"ab").await.expect("trickle");
    }
    upload.write_all(&[b'z'; 4096 - 24]).await.expect("rest");
    let answer = read_response(&mut upload, length).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{:?}", &answer[..40]);

    // A response not read for 3 s, then read whole: the route's response rate is off.
    let mut download = small_window_client(addr).await;
    download
        .write_all(b"GET /big-free HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while received < BIG {
        let n = tokio::time::timeout(Duration::from_secs(10), download.read(&mut buf))
            .await
            .expect("data within 10 s")
            .expect("read");
        assert!(n > 0, "cut after {received} bytes");
        received += n;
    }
    assert_eq!(server.metric(CLOSED_RESPONSE), 0.0);
    assert_eq!(server.metric(CLOSED_BODY), 0.0);
}

/// A client I/O that stops reading once `shut` is set (the client's own connection task then
/// never sees the server's data again, as a client that stopped reading its socket).
struct Gate {
    inner: TcpStream,
    shut: Arc<AtomicBool>,
}

impl AsyncRead for Gate {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.shut.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type H2Client = h2::client::SendRequest<Bytes>;

/// An HTTP/2 client (prior knowledge) with a stream window of `stream_window` and a large
/// connection window; its connection runs on a task of its own.
async fn h2_client(
    addr: SocketAddr,
    stream_window: u32,
    shut: Arc<AtomicBool>,
) -> (H2Client, tokio::task::JoinHandle<()>) {
    let inner = small_window_client(addr).await;
    let (client, connection) = h2::client::Builder::new()
        .max_send_buffer_size(4 * 1024 * 1024)
        .initial_window_size(stream_window)
        .initial_connection_window_size(64 * 1024 * 1024)
        .handshake::<_, Bytes>(Gate { inner, shut })
        .await
        .expect("h2 handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

fn request(method: &str, path: &str) -> http::Request<()> {
    http::Request::builder()
        .method(method)
        .uri(format!("http://t{path}"))
        .body(())
        .expect("request")
}

async fn h2_hello(client: &mut H2Client) {
    let (response, _) = client
        .send_request(request("GET", "/"), true)
        .expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let data = body.data().await.expect("data").expect("chunk");
    assert_eq!(&data[..], b"hello\n");
}

#[tokio::test(flavor = "current_thread")]
async fn http2_clients_that_stop_reading_are_closed() {
    // 1 MiB/s: the echo's writes of its 6 MiB get a few seconds once the buffers are full.
    let server =
        Server::start(quick().min_response_rate(MinRate::new(1024 * 1024, Duration::from_secs(1))));
    let shut = Arc::new(AtomicBool::new(false));
    let (mut client, connection) =
        h2_client(server.addr(), 16 * 1024 * 1024, Arc::clone(&shut)).await;
    let (response, _) = client
        .send_request(request("GET", "/big"), true)
        .expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    shut.store(true, Ordering::SeqCst);
    server.metric_reaches(CLOSED_RESPONSE, 1.0).await;
    connection.abort();

    // A large echo over HTTP/2, its answer never read.
    let shut = Arc::new(AtomicBool::new(false));
    let (mut client, connection) =
        h2_client(server.addr(), 16 * 1024 * 1024, Arc::clone(&shut)).await;
    let (response, mut send) = client
        .send_request(request("POST", "/echo"), false)
        .expect("send");
    send.reserve_capacity(ECHO);
    send.send_data(Bytes::from(vec![b'e'; ECHO]), true)
        .expect("data");
    let response = tokio::time::timeout(Duration::from_secs(20), response)
        .await
        .expect("answered within 20 s")
        .expect("response");
    assert_eq!(response.status(), 200);
    shut.store(true, Ordering::SeqCst);
    server.metric_reaches(CLOSED_RESPONSE, 2.0).await;
    connection.abort();
}

/// The HTTP/2 echo: more than loopback's socket buffers hold.
const ECHO: usize = 6 * 1024 * 1024;

#[tokio::test(flavor = "current_thread")]
async fn an_http2_stream_stalled_on_its_window_is_reset_and_its_connection_lives_on() {
    let server = Server::start(quick());
    let shut = Arc::new(AtomicBool::new(false));
    // A stream window of 1 KiB that this client never opens further.
    let (mut client, _connection) = h2_client(server.addr(), 1024, shut).await;
    let (response, _) = client
        .send_request(request("GET", "/big"), true)
        .expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut received = 0;
    let error = loop {
        match tokio::time::timeout(Duration::from_secs(20), body.data())
            .await
            .expect("reset within 20 s")
        {
            Some(Ok(data)) => received += data.len(),
            Some(Err(error)) => break error,
            None => panic!("the stalled response ended normally"),
        }
    };
    assert!(received <= 1024, "{received} bytes through a 1 KiB window");
    assert!(error.is_reset(), "{error}");
    server.metric_reaches(RESET_RESPONSE, 1.0).await;
    // The connection is still serving.
    h2_hello(&mut client).await;
    assert_eq!(server.metric(CLOSED_RESPONSE), 0.0);
}

#[tokio::test(flavor = "current_thread")]
async fn an_http2_response_stuck_whole_behind_a_shut_window_closes_its_connection() {
    let server = Server::start(quick());
    let shut = Arc::new(AtomicBool::new(false));
    // `/whole` is one 256 KiB frame: hyper hands it to h2 at once and its stream task ends,
    // so nothing but the connection's backlog sees it wait for a window kept at 1 KiB.
    let (mut client, _connection) = h2_client(server.addr(), 1024, shut).await;
    let (response, _) = client
        .send_request(request("GET", "/whole"), true)
        .expect("send");
    let response = response.await.expect("response");
    assert_eq!(response.status(), 200);
    server.metric_reaches(CLOSED_RESPONSE, 1.0).await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_trickled_http2_body_gets_408_and_its_stream_is_reset() {
    let server = Server::start(quick());
    let (mut client, _connection) =
        h2_client(server.addr(), 1024 * 1024, Arc::new(AtomicBool::new(false))).await;
    let (response, mut send) = client
        .send_request(request("POST", "/echo"), false)
        .expect("send");
    send.send_data(Bytes::from_static(b"only this"), false)
        .expect("data");
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("answered within 10 s")
        .expect("response");
    assert_eq!(response.status(), 408);
    server.metric_reaches(RESET_BODY, 1.0).await;
    // The server stops the request stream once it answered (RST_STREAM).
    let stopped = std::future::poll_fn(|cx| send.poll_reset(cx));
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("stream reset within 10 s")
        .expect("a reset reason");
    h2_hello(&mut client).await;
    assert_eq!(server.metric(CLOSED_BODY), 0.0);
}

/// hyper's connection window (and stream window) for HTTP/2: 1 MiB.
const WINDOW: usize = 1024 * 1024;

#[tokio::test(flavor = "current_thread")]
async fn an_http2_body_is_not_timed_while_the_connection_window_is_used_up() {
    let server = Server::start(quick());
    let (mut client, _connection) =
        h2_client(server.addr(), 1024 * 1024, Arc::new(AtomicBool::new(false))).await;
    // `/hold` does not read its body: a megabyte sent to it fills the connection window
    // the server advertised.
    let (held, mut hold) = client
        .send_request(request("POST", "/hold"), false)
        .expect("send");
    // All of the window goes to `/hold` before `/echo` asks for any.
    hold.reserve_capacity(WINDOW);
    let claimed = async {
        while hold.capacity() < WINDOW {
            std::future::poll_fn(|cx| hold.poll_capacity(cx))
                .await
                .expect("capacity")
                .expect("capacity");
        }
    };
    tokio::time::timeout(Duration::from_secs(10), claimed)
        .await
        .expect("the whole window within 10 s");
    hold.send_data(Bytes::from(vec![b'h'; WINDOW]), true)
        .expect("data");
    // `/echo` waits for a body its client may not send: its time must not count.
    let (mut echoed, mut echo) = client
        .send_request(request("POST", "/echo"), false)
        .expect("send");
    echo.send_data(Bytes::from(vec![b'e'; 4096]), true)
        .expect("data");
    // Well past the grace and two ticks, the body is still not cut.
    let cut = tokio::time::timeout(Duration::from_secs(4), &mut echoed).await;
    assert!(
        cut.is_err(),
        "answered while its client could not send: {cut:?}"
    );
    // `/hold` reads its body: the window opens, both bodies arrive.
    server.release.notify_one();
    let held = held.await.expect("hold response");
    assert_eq!(held.status(), 200);
    let echoed = echoed.await.expect("echo response");
    assert_eq!(echoed.status(), 200);
    assert_eq!(server.metric(RESET_BODY), 0.0);
}

#[tokio::test(flavor = "current_thread")]
async fn an_upgraded_connection_is_not_held_to_the_rates() {
    let server = Server::start(quick());
    let mut upgraded = small_window_client(server.addr()).await;
    upgraded
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: bytes\r\n\r\n",
        )
        .await
        .expect("request");
    // Not read for 3 s (past the grace and any write's allowance), then read whole: the
    // application owns an upgraded connection, rates included.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut head = Vec::new();
    let mut written = 0;
    let mut buf = vec![0u8; 64 * 1024];
    while written < BIG {
        let n = tokio::time::timeout(Duration::from_secs(10), upgraded.read(&mut buf))
            .await
            .expect("data within 10 s")
            .expect("read");
        assert!(n > 0, "cut after {written} bytes");
        written += buf[..n].iter().filter(|&&b| b == b'u').count();
        if head.len() < 12 {
            head.extend_from_slice(&buf[..n.min(12)]);
        }
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
    assert_eq!(server.metric(CLOSED_RESPONSE), 0.0);
}
