//! axum handlers written for `axum::serve(.., into_make_service_with_connect_info::<SocketAddr>())`
//! keep working under portcullis-server (feature `axum`): every request carries
//! `ConnectInfo<SocketAddr>`, the client's address, which a trusted PROXY header names.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use common::Running;
use portcullis::listen::proxy::ProxyProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn app() -> Router {
    Router::new().route(
        "/whoami",
        get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move { format!("{client}\n") }),
    )
}

/// Sends `prefix` (a PROXY header, or nothing) and one `GET /whoami` on a new connection;
/// the raw response.
async fn whoami(addr: SocketAddr, prefix: &[u8]) -> (String, SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    let mut request = prefix.to_vec();
    request.extend_from_slice(b"GET /whoami HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("answer within 10 s")
        .expect("read");
    (String::from_utf8_lossy(&response).into_owned(), local)
}

#[tokio::test]
async fn a_connect_info_handler_gets_the_peer_address() {
    let server = Running::start(|b| b, app());
    let (response, client) = whoami(server.addr(), b"").await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(
        response.ends_with(&format!("\r\n\r\n{client}\n")),
        "{response}"
    );
    assert!(server.stop().await.is_clean());
}

#[tokio::test]
async fn behind_a_trusted_proxy_connect_info_is_the_client_the_header_names() {
    let server = Running::start(
        |b| b.proxy_protocol(ProxyProtocol::new(["127.0.0.1/32".parse().expect("net")])),
        app(),
    );
    let (response, _) = whoami(
        server.addr(),
        b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(
        response.ends_with("\r\n\r\n203.0.113.9:5555\n"),
        "{response}"
    );
    assert!(server.stop().await.is_clean());
}

#[tokio::test]
async fn without_peer_addresses_there_is_no_connect_info_either() {
    // `Builder::peer_addr(false)` turns both client-address extensions off: axum's extractor
    // then rejects the request, as under `axum::serve` without connect info.
    let server = Running::start(|b| b.peer_addr(false), app());
    let (response, _) = whoami(server.addr(), b"").await;
    assert!(response.starts_with("HTTP/1.1 500 "), "{response}");
    assert!(server.stop().await.is_clean());
}
