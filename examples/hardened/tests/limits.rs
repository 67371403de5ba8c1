//! `--rate`, `--burst`, `--max-conns`, `--max-conns-per-ip`, `--trusted-proxy` and
//! `--proxy-protocol` against the running server, with curl and raw loopback sockets
//! (127.0.0.2 and friends act as other clients).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::Hardened;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `curl -si` from `interface` with extra headers: the status line and headers, lowercased
/// names, and the body.
fn curl(
    addr: SocketAddr,
    interface: &str,
    headers: &[&str],
) -> (u16, Vec<(String, String)>, String) {
    let mut command = std::process::Command::new("curl");
    command
        .args(["-s", "-i", "--max-time", "20", "--interface", interface])
        .arg(format!("http://{addr}/"));
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.output().expect("run curl (is it installed?)");
    assert!(output.status.success(), "curl failed: {output:?}");
    let text = String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    (status, headers, body.to_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn over_the_rate_a_client_gets_429_with_the_standard_fields_and_others_do_not() {
    let server = Hardened::start(
        &["--listen", "127.0.0.1:0", "--rate", "2/m", "--burst", "1"],
        1,
    )
    .await;
    let addr = server.addr();
    let (status, _, body) = curl(addr, "127.0.0.1", &[]);
    assert_eq!((status, body.as_str()), (200, "hello\n"));
    let (status, headers, body) = curl(addr, "127.0.0.1", &[]);
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "retry-after"), Some("30"));
    assert_eq!(
        header(&headers, "ratelimit-policy"),
        Some("\"per-client\";q=2;w=60")
    );
    assert_eq!(
        header(&headers, "ratelimit"),
        Some("\"per-client\";r=0;t=30")
    );
    assert_eq!(body, "too many requests\n");
    // A second client address has its own bucket.
    let (status, _, _) = curl(addr, "127.0.0.2", &[]);
    assert_eq!(status, 200);
    // HTTP/2 (h2c) requests are keyed by their connection's client too.
    let h2 = |interface: &str| {
        let output = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .args([
                "--http2-prior-knowledge",
                "--max-time",
                "20",
                "--interface",
                interface,
            ])
            .arg(format!("http://{addr}/"))
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(h2("127.0.0.3"), "200 2");
    assert_eq!(h2("127.0.0.3"), "429 2");
    assert_eq!(h2("127.0.0.4"), "200 2");
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let (status, _, _) = curl(addr, "127.0.0.1", &["X-Forwarded-For: 198.51.100.1"]);
    assert_eq!(status, 429);
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "1/m",
            "--trusted-proxy",
            "127.0.0.0/30",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    // 127.0.0.1 is a trusted proxy: the rightmost untrusted forwarded address is the client.
    let xff = |client: &str| format!("X-Forwarded-For: 6.6.6.6, {client}, 127.0.0.2");
    assert_eq!(curl(addr, "127.0.0.1", &[&xff("203.0.113.1")]).0, 200);
    assert_eq!(curl(addr, "127.0.0.1", &[&xff("203.0.113.1")]).0, 429);
    assert_eq!(curl(addr, "127.0.0.1", &[&xff("203.0.113.2")]).0, 200);
    assert_eq!(
        curl(
            addr,
            "127.0.0.1",
            &["Forwarded: for=\"[2001:db8::1]:4711\""]
        )
        .0,
        200
    );
    // Hostile values never give a 5xx, and fall back to the proxy's own bucket.
    for hostile in [
        "X-Forwarded-For: unknown",
        "X-Forwarded-For: ,,,",
        "Forwarded: for=_hidden",
        "Forwarded: for=\"unterminated",
    ] {
        let (status, _, _) = curl(addr, "127.0.0.1", &[hostile]);
        assert!(status == 200 || status == 429, "{hostile}: {status}");
    }
    assert_eq!(
        curl(addr, "127.0.0.1", &["X-Forwarded-For: garbage"]).0,
        429
    );
    // 127.0.0.5 is not trusted: its header is ignored, its own address is the key.
    assert_eq!(curl(addr, "127.0.0.5", &[&xff("203.0.113.3")]).0, 200);
    assert_eq!(curl(addr, "127.0.0.5", &[&xff("203.0.113.4")]).0, 429);
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{ip}:0").parse().expect("client addr"))
        .expect("bind client");
    socket.connect(addr).await.expect("connect")
}

/// A keep-alive GET on `stream` after `prefix`; the body, or `None` when the server closed
/// the connection without answering.
async fn keep_alive_get(stream: &mut TcpStream, prefix: &[u8]) -> Option<String> {
    let mut request = prefix.to_vec();
    request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    stream.write_all(&request).await.ok()?;
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !complete(&response) {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("answered or closed within 20 s");
    let text = String::from_utf8_lossy(&response).into_owned();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// Whether `response` holds a whole response with a `content-length` body.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        })
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

#[tokio::test]
async fn the_per_ip_cap_holds_one_address_while_another_still_connects() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--max-conns-per-ip",
            "2",
            "--max-conns",
            "3",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.1", addr).await;
        assert_eq!(
            keep_alive_get(&mut stream, b"").await.as_deref(),
            Some("hello\n")
        );
        held.push(stream);
    }
    let mut third = connect_from("127.0.0.1", addr).await;
    assert_eq!(
        keep_alive_get(&mut third, b"").await,
        None,
        "over the per-IP cap"
    );
    let mut other = connect_from("127.0.0.2", addr).await;
    assert_eq!(
        keep_alive_get(&mut other, b"").await.as_deref(),
        Some("hello\n")
    );
    // Three open: the global cap turns a fourth address away too.
    let mut fourth = connect_from("127.0.0.3", addr).await;
    assert_eq!(
        keep_alive_get(&mut fourth, b"").await,
        None,
        "over the global cap"
    );
    drop(held);
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn proxy_protocol_names_the_client_for_the_rate_limit() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--rate",
            "1/m",
            "--trusted-proxy",
            "127.0.0.1",
            "--proxy-protocol",
            "--admin",
            "127.0.0.1:0",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let proxied = |client: &str| format!("PROXY TCP4 {client} 127.0.0.1 40000 80\r\n").into_bytes();
    let mut first = connect_from("127.0.0.1", addr).await;
    assert_eq!(
        keep_alive_get(&mut first, &proxied("203.0.113.7"))
            .await
            .as_deref(),
        Some("hello\n")
    );
    // The same client through another proxy connection: limited (429 has no `hello`).
    let mut second = connect_from("127.0.0.1", addr).await;
    let again = keep_alive_get(&mut second, &proxied("203.0.113.7")).await;
    assert_ne!(again.as_deref(), Some("hello\n"));
    let mut other = connect_from("127.0.0.1", addr).await;
    assert_eq!(
        keep_alive_get(&mut other, &proxied("203.0.113.8"))
            .await
            .as_deref(),
        Some("hello\n")
    );
    // A broken header from the trusted proxy closes the connection and is counted.
    let mut broken = connect_from("127.0.0.1", addr).await;
    assert_eq!(
        keep_alive_get(&mut broken, b"PROXY TCP4 nonsense\r\n").await,
        None
    );
    let scrape = common::get(server.admin(), "/metrics").await;
    for series in [
        "portcullis_limit_requests_total{limiter=\"per-client\",result=\"limited\"} 1",
        "portcullis_limit_requests_total{limiter=\"per-client\",result=\"allowed\"} 2",
        "portcullis_listen_proxy_header_errors_total{reason=\"bad_v1\"} 1",
        "portcullis_limit_connections_rejected_total{reason=\"max_conns_per_ip\"} 0",
    ] {
        assert!(scrape.contains(series), "{series} not in\n{scrape}");
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}
