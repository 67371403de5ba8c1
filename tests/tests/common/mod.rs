//! Helpers shared by the end-to-end tests: an in-process portcullis server on loopback with a small
//! axum application, and raw-socket clients.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use portcullis::listen::Listener;
use portcullis::server::{Error, HttpConfig, ServeReport, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The application every test server runs. `/slow` notifies `entered` when it starts.
pub fn app(entered: Arc<Notify>) -> Router {
    Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route(
            "/slow",
            get(move || async move {
                entered.notify_one();
                tokio::time::sleep(Duration::from_millis(800)).await;
                "ok\n"
            }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler panicked on purpose");
                }
                "unreachable\n"
            }),
        )
        .route(
            "/forever",
            get(|| async {
                let stream = futures_util::stream::unfold((), |()| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Ok::<_, std::convert::Infallible>("tick\n"), ()))
                });
                axum::body::Body::from_stream(stream)
            }),
        )
}

/// A portcullis server running in this process on 127.0.0.1 with a free port.
pub struct TestServer {
    pub addr: SocketAddr,
    /// Notified each time a `/slow` request reaches its handler.
    pub entered: Arc<Notify>,
    shutdown: Option<oneshot::Sender<()>>,
    force: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<ServeReport, Error>>,
}

impl TestServer {
    pub async fn start(http: HttpConfig) -> Self {
        Self::start_with(http, Duration::from_secs(30)).await
    }

    pub async fn start_with(http: HttpConfig, drain_timeout: Duration) -> Self {
        let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener
            .local_addr()
            .as_inet()
            .expect("an internet address");
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let (force, force_rx) = oneshot::channel::<()>();
        let server = Server::builder()
            .listener(listener)
            .http(http)
            .drain_timeout(drain_timeout)
            .shutdown(async {
                let _ = shutdown_rx.await;
            })
            .force(async {
                if force_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
        let entered = Arc::new(Notify::new());
        let handle = tokio::spawn(server.serve(app(Arc::clone(&entered))));
        Self {
            addr,
            entered,
            shutdown: Some(shutdown),
            force: Some(force),
            handle,
        }
    }

    /// Starts the shutdown and returns the server's report once it has drained.
    pub async fn shutdown(mut self) -> ServeReport {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("server drains within 20 s")
            .expect("server task")
            .expect("server result")
    }

    /// Starts the shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Cuts the drain short.
    pub fn force(&mut self) {
        if let Some(tx) = self.force.take() {
            let _ = tx.send(());
        }
    }

    pub async fn report(self) -> ServeReport {
        tokio::time::timeout(Duration::from_secs(20), self.handle)
            .await
            .expect("server finishes within 20 s")
            .expect("server task")
            .expect("server result")
    }
}

/// Reads until the peer closes the connection (EOF or reset); returns everything read and
/// when the close was seen. Panics if it stays open longer than `limit`.
pub async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!("connection still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (data, Instant::now()),
            Ok(Ok(n)) => data.extend_from_slice(&buf[..n]),
        }
    }
}

/// Sends one complete HTTP/1.1 request and reads its response head and body (`hello\n`).
pub async fn get_hello(stream: &mut TcpStream) {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .expect("write request");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.ends_with(b"hello\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("response within 5 s")
            .expect("read response");
        assert!(n > 0, "connection closed before the response");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200 OK\r\n"), "{response:?}");
}

/// Writes `bytes` one at a time, `pause` apart, until the peer closes or they run out.
pub fn dribble(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    bytes: &'static [u8],
    pause: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for byte in bytes {
            if writer.write_all(std::slice::from_ref(byte)).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
    })
}

/// Asserts `elapsed` is at least `min` and well below `max`.
pub fn assert_between(elapsed: Duration, min: Duration, max: Duration, what: &str) {
    assert!(
        elapsed >= min && elapsed <= max,
        "{what}: took {elapsed:?}, expected between {min:?} and {max:?}"
    );
}

/// A portcullis server running any service on 127.0.0.1 with a free port (or on the given
/// listener), stopped with [`Running::stop`].
pub struct Running {
    pub addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    force: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<ServeReport, Error>>,
}

impl Running {
    /// Serves `service` on a fresh loopback listener with `configure` applied to the builder.
    pub fn start<S, B>(
        configure: impl FnOnce(portcullis::server::Builder) -> portcullis::server::Builder,
        service: S,
    ) -> Self
    where
        S: tower::Service<
                http::Request<portcullis::server::RequestBody>,
                Response = http::Response<B>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<portcullis::server::BoxError>,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<portcullis::server::BoxError>,
    {
        let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
        Self::start_on(listener, configure, service)
    }

    /// Serves `service` on `listener`.
    pub fn start_on<S, B>(
        listener: Listener,
        configure: impl FnOnce(portcullis::server::Builder) -> portcullis::server::Builder,
        service: S,
    ) -> Self
    where
        S: tower::Service<
                http::Request<portcullis::server::RequestBody>,
                Response = http::Response<B>,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<portcullis::server::BoxError>,
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<portcullis::server::BoxError>,
    {
        let addr = listener.local_addr().as_inet();
        let (shutdown, rx) = oneshot::channel::<()>();
        let (force, force_rx) = oneshot::channel::<()>();
        let builder = configure(Server::builder().listener(listener))
            .shutdown(async {
                let _ = rx.await;
            })
            .force(async {
                if force_rx.await.is_err() {
                    std::future::pending::<()>().await;
                }
            });
        let handle = tokio::spawn(builder.serve(service));
        Self {
            addr,
            shutdown: Some(shutdown),
            force: Some(force),
            handle,
        }
    }

    /// Starts the shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Fires the force trigger.
    pub fn force(&mut self) {
        if let Some(tx) = self.force.take() {
            let _ = tx.send(());
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("an internet listener")
    }

    /// Shuts down and returns the report once drained.
    pub async fn stop(mut self) -> ServeReport {
        self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("drained within 10 s")
            .expect("server task")
            .expect("serve")
    }
}

/// A client response's status and whole body.
pub async fn status_and_body(
    response: http::Response<hyper::body::Incoming>,
) -> (http::StatusCode, bytes::Bytes) {
    use http_body_util::BodyExt;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, body)
}

/// `GET path` on a new connection with `Connection: close`; the raw response.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    try_http_get(addr, path).await.expect("GET")
}

/// [`http_get`], failing instead of panicking (a closed listener refuses the connection).
pub async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| std::io::Error::other("no answer within 10 s"))??;
    Ok(String::from_utf8_lossy(&response).into_owned())
}
