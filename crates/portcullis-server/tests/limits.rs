//! Connection caps right after accept, and PROXY protocol headers from trusted proxies, over
//! real loopback sockets (127.0.0.2 and friends act as other clients).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use portcullis_limit::{ConnLimits, PeerAddr};
use portcullis_listen::Listener;
use portcullis_listen::proxy::ProxyProtocol;
use portcullis_server::{Builder, ConnInfo, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Answers `PEER via PROXY` from the request's extensions.
async fn whoami(
    request: http::Request<portcullis_server::RequestBody>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let peer = request
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.to_string());
    let via = request
        .extensions()
        .get::<ConnInfo>()
        .and_then(|info| info.proxied_by.as_ref().map(ToString::to_string));
    let body = format!(
        "{} via {}",
        peer.unwrap_or_else(|| "-".into()),
        via.unwrap_or_else(|| "-".into())
    );
    Ok(http::Response::new(Full::new(Bytes::from(body))))
}

struct Running {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn start(configure: impl FnOnce(Builder) -> Builder) -> Running {
    let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().as_inet().expect("inet");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let builder = configure(Server::builder().listener(listener))
        .drain_timeout(Duration::from_secs(1))
        .shutdown(async {
            let _ = rx.await;
        });
    let task = tokio::spawn(async move {
        builder
            .serve(tower::service_fn(whoami))
            .await
            .expect("serve");
    });
    Running {
        addr,
        stop: Some(tx),
        task,
    }
}

async fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{ip}:0").parse().expect("client addr"))
        .expect("bind client");
    socket.connect(addr).await.expect("connect")
}

/// Sends `prefix` and a keep-alive GET; returns the response body, or `None` when the server
/// closed the connection without answering.
async fn get(stream: &mut TcpStream, prefix: &[u8]) -> Option<String> {
    let mut request = prefix.to_vec();
    request.extend_from_slice(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    if stream.write_all(&request).await.is_err() {
        return None;
    }
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => response.extend_from_slice(&chunk[..n]),
            }
            let text = String::from_utf8_lossy(&response);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .and_then(|n| n.trim().parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    return;
                }
            }
        }
    });
    read.await.expect("the server answers or closes");
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Some(head.lines().next().unwrap_or("").to_owned());
    }
    Some(body.to_owned())
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

#[tokio::test]
async fn per_ip_cap_refuses_one_address_while_another_still_connects() {
    let server = start(|b| b.connection_limits(ConnLimits::new(100).per_client(nz(2))));
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = connect_from("127.0.0.1", server.addr).await;
        let body = get(&mut stream, b"").await.expect("under the cap");
        assert!(body.starts_with("127.0.0.1:"), "{body}");
        held.push(stream);
    }
    let mut third = connect_from("127.0.0.1", server.addr).await;
    assert_eq!(get(&mut third, b"").await, None, "over the per-IP cap");
    let mut other = connect_from("127.0.0.2", server.addr).await;
    let body = get(&mut other, b"").await.expect("another address");
    assert!(body.starts_with("127.0.0.2:"), "{body}");

    // Closing one connection gives its place back, as soon as the server sees the close.
    drop(held.pop());
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut retry = connect_from("127.0.0.1", server.addr).await;
            if get(&mut retry, b"").await.is_some() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "the place of a closed connection was never given back"
    );
    server.stop().await;
}

#[tokio::test]
async fn global_cap_closes_connections_over_it_at_once() {
    let server = start(|b| b.connection_limits(ConnLimits::new(1)));
    let mut first = connect_from("127.0.0.1", server.addr).await;
    assert!(get(&mut first, b"").await.is_some());
    let mut second = connect_from("127.0.0.3", server.addr).await;
    assert_eq!(get(&mut second, b"").await, None);
    server.stop().await;
}

fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.push(0x21); // version 2, PROXY
    header.push(0x11); // TCP over IPv4
    header.extend_from_slice(&12u16.to_be_bytes());
    for addr in [source, destination] {
        if let std::net::IpAddr::V4(ip) = addr.ip() {
            header.extend_from_slice(&ip.octets());
        }
    }
    header.extend_from_slice(&source.port().to_be_bytes());
    header.extend_from_slice(&destination.port().to_be_bytes());
    header
}

#[tokio::test]
async fn proxy_headers_from_trusted_peers_name_the_client() {
    let server = start(|b| {
        b.proxy_protocol(
            ProxyProtocol::new(["127.0.0.1/32".parse().expect("net")])
                .timeout(Duration::from_millis(300)),
        )
        .connection_limits(ConnLimits::new(100).per_client(nz(1)))
    });
    let mut v1 = connect_from("127.0.0.1", server.addr).await;
    let body = get(&mut v1, b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n")
        .await
        .expect("served");
    assert!(
        body.starts_with("203.0.113.9:5555 via 127.0.0.1:"),
        "{body}"
    );
    // Later requests on the connection carry the same client.
    assert!(
        get(&mut v1, b"")
            .await
            .expect("keep-alive")
            .starts_with("203.0.113.9:5555")
    );

    let mut v2 = connect_from("127.0.0.1", server.addr).await;
    let header = v2_header(
        "198.51.100.4:6000".parse().expect("addr"),
        "127.0.0.1:80".parse().expect("addr"),
    );
    let body = get(&mut v2, &header).await.expect("served");
    assert!(
        body.starts_with("198.51.100.4:6000 via 127.0.0.1:"),
        "{body}"
    );

    // The per-client cap applies to the client in the header, not to the proxy.
    let mut again = connect_from("127.0.0.1", server.addr).await;
    assert_eq!(
        get(&mut again, b"PROXY TCP4 203.0.113.9 127.0.0.1 5556 80\r\n").await,
        None,
        "203.0.113.9 already has its one connection"
    );

    // Malformed and missing headers from a trusted peer close the connection.
    let mut bad = connect_from("127.0.0.1", server.addr).await;
    assert_eq!(get(&mut bad, b"PROXY TCP4 garbage\r\n").await, None);
    let mut plain = connect_from("127.0.0.1", server.addr).await;
    assert_eq!(get(&mut plain, b"").await, None);
    // A silent trusted peer is closed at the header deadline.
    let mut silent = connect_from("127.0.0.1", server.addr).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a silent trusted peer was not closed at the deadline"
    );

    // An untrusted peer is served as is: its PROXY line is not believed.
    let mut direct = connect_from("127.0.0.2", server.addr).await;
    let body = get(&mut direct, b"").await.expect("served");
    assert!(
        body.starts_with("127.0.0.2:") && body.ends_with("via -"),
        "{body}"
    );
    let mut spoof = connect_from("127.0.0.2", server.addr).await;
    let answer = get(&mut spoof, b"PROXY TCP4 1.2.3.4 127.0.0.1 1 80\r\n").await;
    assert!(
        answer
            .as_deref()
            .is_none_or(|a| a.starts_with("HTTP/1.1 400")),
        "{answer:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_rate_limit_finds_the_client_without_the_extension() {
    use tower::Layer;
    let limit = portcullis_limit::RateLimitLayer::per_client("1/m".parse().expect("quota")).layer();
    let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().as_inet().expect("inet");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let service = limit.layer(tower::service_fn(whoami));
    let task = tokio::spawn(
        Server::builder()
            .listener(listener)
            .conn_info(false)
            .peer_addr(false)
            .shutdown(async {
                let _ = rx.await;
            })
            .serve(service),
    );
    let mut first = connect_from("127.0.0.1", addr).await;
    // No extension reaches the handler, yet the limiter knows who is asking.
    assert_eq!(get(&mut first, b"").await.as_deref(), Some("- via -"));
    assert_eq!(
        get(&mut first, b"").await.as_deref(),
        Some("HTTP/1.1 429 Too Many Requests")
    );
    let mut other = connect_from("127.0.0.2", addr).await;
    assert_eq!(get(&mut other, b"").await.as_deref(), Some("- via -"));
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}

/// Answers `101 Switching Protocols` and keeps the upgraded connection open, echoing.
async fn upgrade(
    mut request: http::Request<portcullis_server::RequestBody>,
) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let mut buf = [0u8; 64];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut response = http::Response::new(Full::new(Bytes::new()));
    *response.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    response.headers_mut().insert(
        http::header::UPGRADE,
        http::HeaderValue::from_static("echo"),
    );
    response.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("upgrade"),
    );
    Ok(response)
}

#[tokio::test]
async fn an_upgraded_connection_keeps_its_place_under_the_caps() {
    let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
    let addr = listener.local_addr().as_inet().expect("inet");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(
        Server::builder()
            .listener(listener)
            .connection_limits(ConnLimits::new(100).per_client(nz(1)))
            .drain_timeout(Duration::from_secs(1))
            .shutdown(async {
                let _ = rx.await;
            })
            .serve(tower::service_fn(upgrade)),
    );
    let mut upgraded = connect_from("127.0.0.1", addr).await;
    upgraded
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), upgraded.read(&mut byte))
            .await
            .expect("101 within 10 s")
            .expect("read");
        assert_eq!(n, 1, "closed before the 101");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    upgraded.write_all(b"ping").await.expect("write");
    let mut echo = [0u8; 4];
    upgraded.read_exact(&mut echo).await.expect("echo");
    assert_eq!(&echo, b"ping");
    // Upgraded, and still the client's one connection: a second one is refused.
    let mut second = connect_from("127.0.0.1", addr).await;
    assert_eq!(get(&mut second, b"").await, None);
    // Closing the upgraded connection gives the place back.
    drop(upgraded);
    let served = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut retry = connect_from("127.0.0.1", addr).await;
            if get(&mut retry, b"").await.is_some() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(
        served.is_ok(),
        "the upgraded connection's place was never given back"
    );
    let _ = tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
}
