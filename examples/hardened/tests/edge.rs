//! `--allow`, `--deny` and the `--ban-*` flags against the running server, from several
//! loopback addresses (127.0.0.x stand for distinct clients): refused clients get no byte
//! (no HTTP answer, no TLS ServerHello); bans raised by 429s, by connection-cap refusals, by
//! malformed requests and by failed handshakes; the admin API; a trusted proxy that is never
//! banned while its clients are; the filter reloaded from the config file on SIGHUP.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::Hardened;
use portcullis::tls::rustls::pki_types::ServerName;
use portcullis::tls::rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: test\r\n\r\n";

/// A connection from `from` (any 127.x address).
async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let local: IpAddr = from.parse().expect("an address");
    socket.bind(SocketAddr::new(local, 0)).expect("bind");
    tokio::time::timeout(Duration::from_secs(20), socket.connect(addr))
        .await
        .expect("connect within 20 s")
        .expect("connect")
}

/// Sends `bytes` from `from` and reads until the server closes: what it answered.
async fn answer_from(from: &str, addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    read_from(from, addr, bytes, usize::MAX).await
}

/// Sends `bytes` from `from` and reads until `enough` bytes came or the server closed.
async fn read_from(from: &str, addr: SocketAddr, bytes: &[u8], enough: usize) -> Vec<u8> {
    let mut stream = connect_from(from, addr).await;
    // A refused connection may be closed (even reset) before the write lands.
    let _ = stream.write_all(bytes).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("the server answers or closes within 20 s")
        {
            Ok(0) | Err(_) => return answer,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
        if answer.len() >= enough {
            return answer;
        }
    }
}

/// `GET /` with `Connection: close` from `from`: the status, or `None` when the connection was
/// closed without a byte.
async fn status_from(from: &str, addr: SocketAddr) -> Option<u16> {
    let answer = answer_from(
        from,
        addr,
        b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    )
    .await;
    if answer.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&answer);
    Some(
        text.split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}")),
    )
}

/// One keep-alive exchange: writes `request`, reads one response (head and
/// `Content-Length` body). Returns the status, the head and the body.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> (u16, String, String) {
    stream.write_all(request).await.expect("write");
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("an answer within 20 s")
            .expect("read");
        assert!(n > 0, "closed before a whole head: {buffer:?}");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().expect("a length"));
    while buffer.len() < head_end + length {
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("the body within 20 s")
            .expect("read");
        assert!(n > 0, "closed inside the body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status");
    let body = String::from_utf8_lossy(&buffer[head_end..head_end + length]).into_owned();
    (status, head, body)
}

async fn admin_get(admin: SocketAddr, path: &str) -> String {
    common::get(admin, path).await
}

async fn admin_call(admin: SocketAddr, method: &str, path: &str) -> u16 {
    let response = common::exchange(
        admin,
        format!("{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await;
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"))
}

use common::{metric, metric_reaches};

#[tokio::test]
async fn denied_and_not_allowed_clients_get_no_byte_and_allowed_ones_are_served() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--allow",
            "127.0.0.1",
            "--allow",
            "127.0.2.0/24",
            "--deny",
            "127.0.2.66",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    assert_eq!(status_from("127.0.0.1", addr).await, Some(200));
    assert_eq!(status_from("127.0.2.7", addr).await, Some(200));
    assert_eq!(
        status_from("127.0.2.66", addr).await,
        None,
        "denied wins over allowed"
    );
    assert_eq!(status_from("127.0.0.3", addr).await, None, "not allowed");
    let admin = server.admin();
    assert_eq!(
        metric(
            admin,
            r#"portcullis_limit_filter_rejected_total{rule="127.0.2.66/32"}"#
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            admin,
            r#"portcullis_limit_filter_rejected_total{rule="not_allowed"}"#
        )
        .await,
        1.0
    );
}

/// A self-signed certificate for 127.0.0.1 in a fresh directory, and the ClientHello a
/// rustls client sends for it.
struct Tls {
    dir: PathBuf,
    client_hello: Vec<u8>,
}

impl Tls {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("hardened-edge-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
        std::fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("write cert");
        let key = dir.join("key.pem");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let mut roots = RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("root");
        let provider = Arc::new(portcullis::tls::rustls::crypto::aws_lc_rs::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("127.0.0.1").expect("name");
        let mut client = ClientConnection::new(Arc::new(config), name).expect("client");
        let mut client_hello = Vec::new();
        client.write_tls(&mut client_hello).expect("ClientHello");
        Self { dir, client_hello }
    }

    fn arg(&self, file: &str) -> String {
        self.dir.join(file).to_str().expect("utf8").to_owned()
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_denied_client_gets_no_server_hello_and_failed_handshakes_ban() {
    let tls = Tls::new("handshake");
    let (cert, key) = (tls.arg("cert.pem"), tls.arg("key.pem"));
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--allow",
            "127.0.3.0/24",
            "--deny",
            "127.0.3.66",
            "--ban-after",
            "2",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let admin = server.admin();
    // Outside every allowed range: no ServerHello either.
    assert!(
        answer_from("127.0.9.9", addr, &tls.client_hello)
            .await
            .is_empty()
    );
    // A served client gets the ServerHello (a handshake record, 0x16). (It goes no further:
    // a handshake left unfinished is a failed one once its deadline passes, so the served
    // clients differ.)
    let hello = read_from("127.0.3.1", addr, &tls.client_hello, 1).await;
    assert_eq!(hello.first(), Some(&0x16), "a ServerHello: {hello:?}");
    // A denied one gets nothing at all.
    assert!(
        answer_from("127.0.3.66", addr, &tls.client_hello)
            .await
            .is_empty()
    );
    // Two failed handshakes (not TLS at all) ban 127.0.3.2: its ClientHello then gets nothing.
    for _ in 0..2 {
        answer_from("127.0.3.2", addr, b"this is not a TLS record\r\n\r\n").await;
    }
    metric_reaches(
        admin,
        r#"portcullis_limit_bans_total{reason="tls_handshake"}"#,
        1.0,
    )
    .await;
    assert!(
        answer_from("127.0.3.2", addr, &tls.client_hello)
            .await
            .is_empty()
    );
    assert_eq!(
        read_from("127.0.3.3", addr, &tls.client_hello, 1)
            .await
            .first(),
        Some(&0x16),
        "others are still served"
    );
    assert!(
        metric(
            admin,
            r#"portcullis_limit_ban_rejections_total{at="accept"}"#
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn bans_raised_by_429s_close_connections_at_accept_until_lifted_through_the_api() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--rate",
            "1/m",
            "--burst",
            "1",
            "--ban-after",
            "3",
            "--ban-for",
            "10m",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let admin = server.admin();
    let client = "127.0.4.5";
    assert_eq!(status_from(client, addr).await, Some(200));
    // The third 429 is the refusal that bans.
    for _ in 0..3 {
        assert_eq!(status_from(client, addr).await, Some(429));
    }
    assert_eq!(
        status_from(client, addr).await,
        None,
        "banned: closed at accept"
    );
    assert_eq!(
        status_from("127.0.4.6", addr).await,
        Some(200),
        "only that client"
    );

    let bans = admin_get(admin, "/bans").await;
    assert!(bans.contains(r#""client":"127.0.4.5""#), "{bans}");
    assert!(bans.contains(r#""reason":"rate_limited""#), "{bans}");
    assert!(bans.contains(r#""until_unix":"#), "{bans}");
    assert_eq!(
        metric(
            admin,
            r#"portcullis_limit_bans_total{reason="rate_limited"}"#
        )
        .await,
        1.0
    );
    assert_eq!(metric(admin, "portcullis_limit_bans_active").await, 1.0);

    assert_eq!(admin_call(admin, "DELETE", "/bans/127.0.4.5").await, 204);
    assert_eq!(admin_call(admin, "DELETE", "/bans/127.0.4.5").await, 404);
    assert_eq!(
        status_from(client, addr).await,
        Some(429),
        "lifted: served again (and still over its rate)"
    );
    // Banned by hand, for as long as asked: a connection it opened before is answered 429
    // and closed, new ones are closed at accept.
    let mut before = connect_from("127.0.4.9", addr).await;
    assert_eq!(exchange(&mut before, GET).await.0, 200);
    assert_eq!(
        admin_call(admin, "POST", "/bans/127.0.4.9?for=90s").await,
        201
    );
    let (status, head, body) = exchange(&mut before, GET).await;
    assert_eq!(status, 429, "{head}");
    assert!(
        body.contains("banned") && head.contains("connection: close"),
        "{head}{body}"
    );
    assert_eq!(status_from("127.0.4.9", addr).await, None);
    let bans = admin_get(admin, "/bans").await;
    assert!(
        bans.contains(r#""client":"127.0.4.9""#) && bans.contains(r#""reason":"manual""#),
        "{bans}"
    );
}

#[tokio::test]
async fn bans_raised_by_connection_cap_refusals_and_malformed_requests() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--max-conns-per-ip",
            "1",
            "--ban-after",
            "2",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let admin = server.admin();
    // Its one place, taken (and known to be: it was answered).
    let mut held = connect_from("127.0.5.7", addr).await;
    assert_eq!(exchange(&mut held, GET).await.0, 200);
    // Two refusals at the cap ban it.
    assert_eq!(status_from("127.0.5.7", addr).await, None);
    assert_eq!(status_from("127.0.5.7", addr).await, None);
    let bans = admin_get(admin, "/bans").await;
    assert!(
        bans.contains(r#""client":"127.0.5.7""#) && bans.contains(r#""reason":"conn_cap""#),
        "{bans}"
    );
    drop(held);
    // With its place free, it is still turned away: by the ban, counted as such.
    let before = metric(
        admin,
        r#"portcullis_limit_ban_rejections_total{at="accept"}"#,
    )
    .await;
    assert_eq!(status_from("127.0.5.7", addr).await, None);
    assert_eq!(
        metric(
            admin,
            r#"portcullis_limit_ban_rejections_total{at="accept"}"#
        )
        .await,
        before + 1.0
    );

    // Malformed requests: hyper answers 400 and closes; the second bans.
    for _ in 0..2 {
        let answer = answer_from("127.0.5.8", addr, b"NOT HTTP AT ALL\r\n\r\n").await;
        assert!(
            String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"),
            "{answer:?}"
        );
    }
    metric_reaches(
        admin,
        r#"portcullis_limit_bans_total{reason="malformed"}"#,
        1.0,
    )
    .await;
    assert_eq!(status_from("127.0.5.8", addr).await, None);
    assert_eq!(
        metric(
            admin,
            r#"portcullis_connections_closed_total{reason="malformed"}"#
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn a_trusted_proxy_is_never_banned_while_its_clients_are() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--trusted-proxy",
            "127.0.6.1",
            "--rate",
            "1/m",
            "--burst",
            "1",
            "--ban-after",
            "2",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let admin = server.admin();
    let from_client = |client: &str| {
        format!("GET / HTTP/1.1\r\nHost: test\r\nX-Forwarded-For: {client}\r\n\r\n").into_bytes()
    };
    // One keep-alive connection from the proxy carries every request.
    let mut proxy = connect_from("127.0.6.1", addr).await;
    let abuser = from_client("198.51.100.7");
    assert_eq!(exchange(&mut proxy, &abuser).await.0, 200);
    assert_eq!(exchange(&mut proxy, &abuser).await.0, 429);
    assert_eq!(
        exchange(&mut proxy, &abuser).await.0,
        429,
        "the refusal that bans"
    );
    let (status, head, body) = exchange(&mut proxy, &abuser).await;
    assert_eq!(status, 429);
    assert!(body.contains("banned"), "the ban's own answer: {body}");
    let retry_after: u64 = head
        .lines()
        .find_map(|line| line.strip_prefix("retry-after:"))
        .map(|value| value.trim().parse().expect("seconds"))
        .expect("Retry-After");
    assert!(
        (1..=60).contains(&retry_after),
        "the time left on the ban: {retry_after}"
    );
    // The proxy's connection is still open and serves its other clients.
    assert_eq!(
        exchange(&mut proxy, &from_client("198.51.100.8")).await.0,
        200
    );
    // The proxy itself is not banned: a new connection from it is served.
    assert_eq!(status_from("127.0.6.1", addr).await, Some(200));
    let bans = admin_get(admin, "/bans").await;
    assert!(bans.contains(r#""client":"198.51.100.7""#), "{bans}");
    assert!(!bans.contains("127.0.6.1"), "{bans}");
    assert_eq!(
        metric(
            admin,
            r#"portcullis_limit_ban_rejections_total{at="request"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn the_client_a_trusted_proxy_protocol_header_names_is_the_one_filtered() {
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--trusted-proxy",
            "127.0.8.1",
            "--proxy-protocol",
            "--deny",
            "203.0.113.9",
            "--deny",
            "127.0.8.0/24",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let through_proxy = |client: &str| {
        format!(
            "PROXY TCP4 {client} 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        .into_bytes()
    };
    // The proxy itself sits in a denied range, but for a trusted PROXY peer the client its
    // header names is what is filtered.
    let served = answer_from("127.0.8.1", addr, &through_proxy("203.0.113.10")).await;
    assert!(
        String::from_utf8_lossy(&served).starts_with("HTTP/1.1 200"),
        "{served:?}"
    );
    let refused = answer_from("127.0.8.1", addr, &through_proxy("203.0.113.9")).await;
    assert!(
        refused.is_empty(),
        "a denied client behind the proxy: {refused:?}"
    );
    // Anyone else in that range is refused at accept.
    assert_eq!(status_from("127.0.8.2", addr).await, None);
    assert_eq!(
        metric(
            server.admin(),
            r#"portcullis_limit_filter_rejected_total{rule="203.0.113.9/32"}"#
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn sighup_reloads_the_filter_from_the_config_file_and_keeps_live_connections() {
    let dir = std::env::temp_dir().join(format!("hardened-edge-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("server.toml");
    std::fs::write(&file, "deny = [\"127.0.7.10\"]\n").expect("write config");
    let path = file.to_str().expect("utf8").to_owned();
    let server = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--config",
            &path,
            "--deny",
            "127.0.7.12",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let admin = server.admin();
    assert_eq!(status_from("127.0.7.10", addr).await, None);
    // A client that stays allowed, connected across the reload.
    let mut live = connect_from("127.0.7.11", addr).await;
    assert_eq!(exchange(&mut live, GET).await.0, 200);

    std::fs::write(&file, "deny = [\"127.0.7.11\"]\n").expect("rewrite config");
    server.signal("HUP");
    metric_reaches(admin, "portcullis_limit_filter_reloads_total", 1.0).await;
    assert_eq!(
        status_from("127.0.7.10", addr).await,
        Some(200),
        "no longer denied"
    );
    assert_eq!(
        status_from("127.0.7.11", addr).await,
        None,
        "denied from now on"
    );
    assert_eq!(
        status_from("127.0.7.12", addr).await,
        None,
        "the flag's rule stays"
    );
    assert_eq!(
        exchange(&mut live, GET).await.0,
        200,
        "a connection open before the reload is left alone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
