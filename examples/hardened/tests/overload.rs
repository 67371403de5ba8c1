//! The overload manager under a lowered descriptor limit: idle keep-alive clients holding
//! more connections than the server has descriptors do not lock new clients out, and the
//! server keeps connections alive again once they are gone.

mod common;

use std::time::Duration;

use common::{Hardened, metric, metric_reaches};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: u32 = 256;
const HOGS: usize = 320;

/// One keep-alive `GET /` on `stream`; the response head, or `None` if the server closed
/// or did not answer within 2 s.
async fn keep_alive_get(stream: &mut TcpStream) -> Option<String> {
    let exchange = async {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        let mut buf = [0u8; 1024];
        // `hello\n` after the head: read until the body arrived.
        while !response.ends_with(b"hello\n") {
            let n = stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            response.extend_from_slice(&buf[..n]);
        }
        Some(String::from_utf8_lossy(&response).to_lowercase())
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()
        .flatten()
}

/// A new client's `GET /` with `Connection: close`: whether it got a 200 within 5 s.
async fn served(addr: std::net::SocketAddr) -> bool {
    common::try_get(addr, Duration::from_secs(5))
        .await
        .is_some_and(|response| response.starts_with("HTTP/1.1 200"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_hogs_cannot_lock_new_clients_out() {
    let server = Hardened::start_via_shell(
        &format!("exec prlimit --nofile={LIMIT}:{LIMIT} \"$0\" \"$@\""),
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--acceptors",
            "1",
            "--overload-fds",
            "90",
        ],
        1,
    )
    .await;
    let (addr, admin) = (server.addr(), server.admin());

    // More idle keep-alive connections than the server has descriptors, each after one
    // request, all held open by this side.
    let mut hogs = Vec::with_capacity(HOGS);
    for _ in 0..HOGS {
        let Ok(Ok(mut stream)) =
            tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(addr)).await
        else {
            continue;
        };
        if keep_alive_get(&mut stream).await.is_some() {
            hogs.push(stream);
        }
    }

    // New clients are still served while the hogs are held.
    for client in 0..20 {
        assert!(
            served(addr).await,
            "new client {client} was not served within 5 s"
        );
    }
    metric_reaches(
        admin,
        "portcullis_connections_closed_total{reason=\"overload\"}",
        1.0,
    )
    .await;
    assert!(
        metric(
            admin,
            "portcullis_overload_activations_total{action=\"reclaim_idle\"}"
        )
        .await
            >= 1.0
    );

    // Once the hogs are gone the pressure is off, and connections are kept alive again.
    drop(hogs);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while metric(admin, "portcullis_overload_action{action=\"reclaim_idle\"}").await > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "reclaim_idle still on 20 s after the hogs left"
        );
        tokio::task::yield_now().await;
    }
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let first = keep_alive_get(&mut stream).await.expect("first answer");
    assert!(!first.contains("connection: close"), "{first}");
    let second = keep_alive_get(&mut stream).await.expect("kept alive");
    assert!(second.starts_with("http/1.1 200"), "{second}");

    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}
