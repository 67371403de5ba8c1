//! The memory an idle kept-alive connection keeps, after a small request and after a 64 KiB
//! upload: at most 32 KiB each (the read buffer does not stay grown by a large body). Measured
//! with a counting global allocator (this test binary only) on one thread, server and clients
//! in this process: the live heap with the connections idle, less the live heap with none,
//! over their count. `CONN_MEMORY_CONNECTIONS=5000` measures at the scale docs/performance.md
//! reports (the default, 500, keeps the test quick).

#![allow(unsafe_code)]

mod common;
mod counting;

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use portcullis::server::{HttpConfig, RequestBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

const UPLOAD: usize = 64 * 1024;
/// The bound of the issue: an idle connection keeps at most this much.
const BOUND: isize = 32 * 1024;

/// Reads the whole body and answers its length and a newline.
async fn app(request: Request<RequestBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(collected) => format!("{}\n", collected.to_bytes().len()),
        Err(error) => format!("{error}\n"),
    };
    Ok(Response::new(Full::new(Bytes::from(body))))
}

/// Sends `request` and reads one response, whose body ends with `ends`.
async fn exchange(stream: &mut TcpStream, request: &[u8], ends: &[u8]) {
    stream.write_all(request).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(ends) {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed mid-response");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The live heap once every task has settled.
async fn settled() -> isize {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    counting::live()
}

#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_keeps_at_most_32_kib_even_after_a_64_kib_upload() {
    let count: usize = std::env::var("CONN_MEMORY_CONNECTIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(500);
    let server = common::Running::start(|b| b.http(HttpConfig::default()), tower::service_fn(app));
    let addr = server.addr();
    // Warm up once: lazily made state of the server is not the connections'.
    let mut warm = TcpStream::connect(addr).await.expect("connect");
    exchange(&mut warm, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", b"\n").await;
    drop(warm);
    let base = settled().await;

    let mut streams = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        exchange(&mut stream, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", b"\n").await;
        streams.push(stream);
    }
    let small = (settled().await - base) / count as isize;

    let mut upload =
        format!("POST / HTTP/1.1\r\nHost: t\r\nContent-Length: {UPLOAD}\r\n\r\n").into_bytes();
    upload.extend(std::iter::repeat_n(b'u', UPLOAD));
    let answer = format!("{UPLOAD}\n");
    for stream in &mut streams {
        exchange(stream, &upload, answer.as_bytes()).await;
    }
    let large = (settled().await - base) / count as isize;
    println!(
        "per idle connection, client side included: {small} B after GET, {large} B after a {UPLOAD} B upload ({count} connections)"
    );
    assert!(small <= BOUND, "{small} B per idle connection after a GET");
    assert!(
        large <= BOUND,
        "{large} B per idle connection after a 64 KiB upload"
    );
    drop(streams);
    server.stop().await;
}
