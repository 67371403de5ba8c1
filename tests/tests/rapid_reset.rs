//! HTTP/2 rapid reset (CVE-2023-44487): a flood of streams opened and reset at once on one
//! connection does not stop a concurrent client from being served, and the flooding
//! connection is closed.

mod common;

use std::time::Duration;

use common::TestServer;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use portcullis::server::HttpConfig;
use tokio::net::TcpStream;
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_flood_does_not_starve_a_concurrent_client() {
    let server = TestServer::start(HttpConfig::default()).await;
    let addr = server.addr;

    let attacker = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let (mut client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let conn = tokio::spawn(conn);
        let mut sent = 0u32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent < 100_000 && Instant::now() < deadline {
            let ready = match client.ready().await {
                Ok(ready) => ready,
                Err(_) => break,
            };
            client = ready;
            let request = http::Request::get(format!("http://{addr}/slow"))
                .body(())
                .expect("request");
            match client.send_request(request, false) {
                Ok((_response, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
                Err(_) => break,
            }
            sent += 1;
        }
        let ended = tokio::time::timeout(Duration::from_secs(10), conn).await;
        (sent, ended)
    });

    // The legitimate client, on its own connection, keeps being served.
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, Empty<bytes::Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    for _ in 0..50 {
        let request = http::Request::get(format!("http://{addr}/"))
            .body(Empty::new())
            .expect("request");
        let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
            .await
            .expect("served within 5 s during the flood")
            .expect("response");
        let (status, body) = common::status_and_body(response).await;
        assert_eq!(status, 200);
        assert_eq!(&body[..], b"hello\n");
    }

    let (sent, ended) = attacker.await.expect("attacker task");
    let ended = ended.expect("the server closes the flooding connection");
    let error = ended
        .expect("connection task")
        .expect_err("the server ends the flooding connection");
    // GOAWAY ENHANCE_YOUR_CALM, or, when the client was still writing as the server closed,
    // the broken pipe that the close caused.
    assert!(
        error.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) || error.is_io(),
        "unexpected end after {sent} resets: {error}"
    );
}
