//! Handler failures stay inside their request; any tower service is served as-is.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use common::{Running, TestServer};
use http_body_util::{Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::server::HttpConfig;
use tokio::net::TcpStream;

async fn http1(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    sender
}

async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    path: &str,
) -> (http::StatusCode, Bytes) {
    sender.ready().await.expect("connection still usable");
    let request = http::Request::get(path)
        .header("host", "test")
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    common::status_and_body(response).await
}

#[tokio::test]
async fn panicking_handler_answers_500_and_the_connection_and_server_live_on() {
    let server = TestServer::start(HttpConfig::default()).await;
    let mut sender = http1(server.addr).await;
    let (status, _) = get(&mut sender, "/panic").await;
    assert_eq!(status, 500);
    // Same connection, next request.
    let (status, body) = get(&mut sender, "/").await;
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"hello\n"[..]));
    // And a new connection.
    let mut other = http1(server.addr).await;
    let (status, _) = get(&mut other, "/").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn panicking_handler_over_http2_resets_nothing_but_its_request() {
    let server = TestServer::start(HttpConfig::default()).await;
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    for path in ["/panic", "/", "/panic", "/"] {
        let request = http::Request::get(format!("http://{}{path}", server.addr))
            .body(Empty::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("response");
        let expected = if path == "/panic" { 500 } else { 200 };
        assert_eq!(response.status(), expected, "{path}");
    }
}

#[tokio::test]
async fn a_plain_tower_service_and_its_errors() {
    // Not axum: a service_fn whose error becomes a 500 rather than a dropped connection.
    let service = tower::service_fn(
        |request: http::Request<portcullis::server::RequestBody>| async move {
            if request.uri().path() == "/fail" {
                return Err(std::io::Error::other("backend unavailable"));
            }
            let info = request
                .extensions()
                .get::<portcullis::server::ConnInfo>()
                .map(|info| info.peer.to_string())
                .unwrap_or_default();
            Ok(http::Response::new(Full::new(Bytes::from(info))))
        },
    );
    let server = Running::start(|b| b, service);
    let addr = server.addr();
    let mut sender = http1(addr).await;
    let (status, _) = get(&mut sender, "/fail").await;
    assert_eq!(status, 500);
    let (status, body) = get(&mut sender, "/").await;
    assert_eq!(status, 200);
    let peer: std::net::SocketAddr = std::str::from_utf8(&body)
        .expect("utf8")
        .parse()
        .expect("the peer address");
    assert!(peer.ip().is_loopback());
    drop(sender);
    let report = server.stop().await;
    assert!(report.is_clean());
}

/// Not ready for its first two readiness checks (per clone, so per request); each time it
/// wakes the waker it was given only later, from another task, as a real backpressured
/// service would. Fails readiness when asked to.
#[derive(Clone)]
struct Reluctant {
    checks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    not_ready_left: u8,
    fail: bool,
}

impl tower::Service<http::Request<portcullis::server::RequestBody>> for Reluctant {
    type Response = http::Response<Full<Bytes>>;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        if self.fail {
            return std::task::Poll::Ready(Err(std::io::Error::other("not today")));
        }
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.not_ready_left > 0 {
            self.not_ready_left -= 1;
            let waker = cx.waker().clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                waker.wake();
            });
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _request: http::Request<portcullis::server::RequestBody>) -> Self::Future {
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::from_static(
            b"ready\n",
        )))))
    }
}

#[tokio::test]
async fn services_that_are_not_ready_at_once_are_waited_for_and_readiness_errors_are_500() {
    for fail in [false, true] {
        let checks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let service = Reluctant {
            checks: checks.clone(),
            not_ready_left: 2,
            fail,
        };
        let server = Running::start(|b| b, service);
        let addr = server.addr();
        let mut sender = http1(addr).await;
        for _ in 0..3 {
            let (status, body) = get(&mut sender, "/").await;
            if fail {
                assert_eq!(status, 500);
            } else {
                assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"ready\n"[..]));
            }
        }
        if !fail {
            assert!(
                checks.load(std::sync::atomic::Ordering::SeqCst) >= 9,
                "readiness was checked again after Pending"
            );
        }
        drop(sender);
        server.stop().await;
    }
}

#[tokio::test]
async fn a_panic_while_calling_the_service_is_a_500_too() {
    // The closure itself panics when `call` runs it, before any future exists.
    let service = tower::service_fn(|request: http::Request<portcullis::server::RequestBody>| {
        assert_ne!(request.uri().path(), "/sync-panic", "panicking on purpose");
        std::future::ready(Ok::<_, Infallible>(http::Response::new(Full::new(
            Bytes::from_static(b"fine\n"),
        ))))
    });
    let server = Running::start(|b| b, service);
    let addr = server.addr();
    let mut sender = http1(addr).await;
    let (status, _) = get(&mut sender, "/sync-panic").await;
    assert_eq!(status, 500);
    let (status, body) = get(&mut sender, "/").await;
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"fine\n"[..]));
    drop(sender);
    server.stop().await;
}

#[tokio::test]
async fn conn_info_can_be_turned_off() {
    let service = tower::service_fn(
        |request: http::Request<portcullis::server::RequestBody>| async move {
            let seen = request
                .extensions()
                .get::<portcullis::server::ConnInfo>()
                .is_some();
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(
                seen.to_string(),
            ))))
        },
    );
    let server = Running::start(|b| b.conn_info(false), service);
    let addr = server.addr();
    let mut sender = http1(addr).await;
    let (status, body) = get(&mut sender, "/").await;
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"false"[..]));
    drop(sender);
    server.stop().await;
}
