//! `--min-body-rate`, `--min-response-rate` and `--min-rate-grace` against the running server:
//! a body trickled below the rate gets 408 and its connection closed, a client that stops
//! reading `/stream` is closed, each counted by reason; `0` turns a rate off; a value that is
//! not a rate is refused at start-up naming the flag.

mod common;

use std::time::Duration;

use common::{Hardened, metric, metric_reaches, run_to_exit};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Sends a POST head for a 1 MB `/echo` body, then trickles a byte every 100 ms (at most 300
/// times) until the server answers; returns the answer once the server closes.
async fn trickle_echo(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n")
        .await
        .expect("head");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    for _ in 0..300 {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return String::from_utf8_lossy(&answer).into_owned(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let _ = stream.write_all(b"x").await;
            }
        }
    }
    panic!("still open after 30 s of trickling: {answer:?}");
}

#[tokio::test]
async fn a_trickled_body_gets_408_and_a_client_that_stops_reading_is_closed() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--min-body-rate",
            "1000B/s",
            "--min-response-rate",
            "65536",
            "--min-rate-grace",
            "1s",
        ],
        1,
    )
    .await;
    let started = Instant::now();
    let answer = trickle_echo(server.addr()).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    metric_reaches(
        server.admin(),
        r#"portcullis_connections_closed_total{reason="min_body_rate"}"#,
        1.0,
    )
    .await;

    // Ten pipelined 1 MB `/echo` requests (10 MB of answers, more than loopback's socket
    // buffers hold), no answer read, through a small receive buffer. The requests are written
    // from a task of their own: once the server stops reading, so does that write.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(server.addr()).await.expect("connect");
    let (_unread, mut writer) = stream.into_split();
    let mut request = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    request.extend_from_slice(&[b'e'; 1_000_000]);
    let requests = tokio::spawn(async move {
        for _ in 0..10 {
            if writer.write_all(&request).await.is_err() {
                return;
            }
        }
    });
    metric_reaches(
        server.admin(),
        r#"portcullis_connections_closed_total{reason="min_response_rate"}"#,
        1.0,
    )
    .await;
    requests.abort();
}

#[tokio::test]
async fn a_rate_of_zero_is_off() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--min-body-rate",
            "0",
            "--min-rate-grace",
            "1s",
        ],
        1,
    )
    .await;
    // 20 bytes over 2 s (past the grace and two checks), then the rest: served whole.
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nConnection: close\r\n\r\n",
        )
        .await
        .expect("head");
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    for _ in 0..20 {
        ticks.tick().await;
        stream.write_all(b"x").await.expect("trickle");
    }
    stream.write_all(b"0123456789").await.expect("rest");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answered within 10 s")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(
        answer.ends_with("xxxxxxxxxxxxxxxxxxxx0123456789"),
        "{answer:?}"
    );
    assert_eq!(
        metric(
            server.admin(),
            r#"portcullis_connections_closed_total{reason="min_body_rate"}"#
        )
        .await,
        0.0
    );
}

#[tokio::test]
async fn a_rate_that_is_not_a_number_is_refused_naming_the_flag() {
    let (code, _, stderr) = run_to_exit(&["--min-body-rate", "fast"]).await;
    assert_eq!(code, 2, "{stderr}");
    let line = stderr.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("error: ") && line.contains("--min-body-rate"),
        "{stderr}"
    );
}
