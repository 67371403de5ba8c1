//! Header count and size limits: too many or too large headers get 431, never unbounded
//! buffering.

mod common;

use std::time::Duration;

use common::{TestServer, read_until_closed};
use portcullis::server::HttpConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn status_for(server: &TestServer, extra_headers: usize, header_bytes: usize) -> String {
    let mut request = String::from("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for i in 0..extra_headers {
        request.push_str(&format!("X-H{i}: v\r\n"));
    }
    if header_bytes > 0 {
        request.push_str(&format!("X-Big: {}\r\n", "a".repeat(header_bytes)));
    }
    request.push_str("\r\n");
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    // The server may answer and close before reading everything: ignore write errors.
    let _ = stream.write_all(request.as_bytes()).await;
    let (response, _) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let response = String::from_utf8_lossy(&response).into_owned();
    response.lines().next().unwrap_or("").to_owned()
}

#[tokio::test]
async fn default_header_count_limit_is_100() {
    let server = TestServer::start(HttpConfig::default()).await;
    // Host and Connection plus 98 more: exactly 100.
    assert_eq!(status_for(&server, 98, 0).await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_for(&server, 99, 0).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

#[tokio::test]
async fn configured_header_count_limit_applies() {
    let server = TestServer::start(HttpConfig::default().max_headers(10)).await;
    assert_eq!(status_for(&server, 8, 0).await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_for(&server, 9, 0).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}

#[tokio::test]
async fn header_bytes_over_the_limit_are_refused() {
    let server = TestServer::start(HttpConfig::default()).await;
    assert_eq!(status_for(&server, 0, 32 * 1024).await, "HTTP/1.1 200 OK");
    assert_eq!(
        status_for(&server, 0, 80 * 1024).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
}
