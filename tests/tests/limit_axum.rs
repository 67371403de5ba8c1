//! portcullis-limit's layer inside an axum `Router`: layered onto two routes, it is one limit (the
//! state is shared by construction, however axum clones it); and outside portcullis-server it reads
//! the peer from axum's `ConnectInfo` (portcullis-limit feature `axum`).

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use common::Running;
use portcullis::limit::RateLimitLayer;

fn status(response: &str) -> &str {
    response.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn one_layer_on_two_routes_is_one_limit() {
    let limit = RateLimitLayer::per_client("2/m".parse().expect("quota")).layer();
    let app = Router::new()
        .route("/a", get(|| async { "a\n" }).layer(limit.clone()))
        .route("/b", get(|| async { "b\n" }).layer(limit.clone()))
        .route("/free", get(|| async { "free\n" }));
    let server = Running::start(|b| b, app);
    let addr = server.addr();
    assert_eq!(status(&common::http_get(addr, "/a").await), "200");
    assert_eq!(status(&common::http_get(addr, "/b").await), "200");
    // The third request is over the shared limit, whichever route it takes.
    assert_eq!(status(&common::http_get(addr, "/a").await), "429");
    assert_eq!(status(&common::http_get(addr, "/b").await), "429");
    assert_eq!(status(&common::http_get(addr, "/free").await), "200");
    assert_eq!(limit.keys(), 1);
    let report = server.stop().await;
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test]
async fn with_plain_axum_serve_the_peer_comes_from_connect_info() {
    let limit = RateLimitLayer::per_client("1/m".parse().expect("quota")).layer();
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(limit);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    assert_eq!(status(&common::http_get(addr, "/").await), "200");
    assert_eq!(status(&common::http_get(addr, "/").await), "429");
    // 127.0.0.2 is another client, known through ConnectInfo.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().expect("addr"))
        .expect("bind client");
    let mut stream = socket.connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    assert_eq!(status(&response), "200", "{response}");
    server.abort();
}
