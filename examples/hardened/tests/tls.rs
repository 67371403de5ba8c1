//! `--tls-cert`, `--tls-key` and `--handshake-timeout` against the running server: HTTP/2 and
//! HTTP/1.1 by ALPN (curl), protocol versions and cipher suites (openssl s_client), reloads
//! by SIGHUP, by a symlink swap and past a garbage file while a connection stays open, and a
//! flood of silent connections. Certificates are made here with rcgen.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::Hardened;
use portcullis::tls::rustls::pki_types::{CertificateDer, ServerName};
use portcullis::tls::rustls::{ClientConfig, RootCertStore};
use portcullis::tls::tokio_rustls::{TlsConnector, client::TlsStream};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test CA and the PEM and DER of certificates it signs for `localhost` and 127.0.0.1.
struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
    der: CertificateDer<'static>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, "hardened test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// A fresh directory under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("hardened-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Dir(path)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Replaces a file by rename, as certbot does.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    write(&tmp, text);
    std::fs::rename(&tmp, path).expect("rename");
}

async fn start_tls(dir: &Dir, leaf: &Leaf, extra: &[&str]) -> Hardened {
    let cert = dir.path("tls.crt");
    let key = dir.path("tls.key");
    if !cert.exists() {
        write(&cert, &leaf.cert_pem);
        write(&key, &leaf.key_pem);
    }
    let cert = cert.to_str().expect("utf8").to_owned();
    let key = key.to_str().expect("utf8").to_owned();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    args.extend_from_slice(extra);
    let server = Hardened::start(&args, 1).await;
    assert!(
        server.lines[0].starts_with("listening on https://127.0.0.1:"),
        "{:?}",
        server.lines
    );
    server
}

fn client_config(ca: &Ca) -> Arc<ClientConfig> {
    client_config_alpn(ca, &[])
}

fn client_config_alpn(ca: &Ca, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).expect("root");
    let provider = Arc::new(portcullis::tls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut config = config;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    tokio::time::timeout(
        Duration::from_secs(20),
        TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake within 20 s")
    .expect("handshake")
}

fn served(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a server certificate")
        .clone()
        .into_owned()
}

/// A keep-alive GET on an open TLS connection; the body.
async fn get(stream: &mut TlsStream<TcpStream>) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !response.ends_with(b"hello\n") {
            let n = stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&response));
            response.extend_from_slice(&chunk[..n]);
        }
    })
    .await
    .expect("answer within 20 s");
    String::from_utf8_lossy(&response).into_owned()
}

/// New handshakes until one is served `wanted`, for at most 20 s.
async fn until_served(addr: SocketAddr, config: &Arc<ClientConfig>, wanted: &CertificateDer<'_>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let stream = connect(addr, Arc::clone(config)).await;
        if served(&stream) == *wanted {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was not served within 20 s"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn https_with_http2_and_http1_by_alpn() {
    let dir = Dir::new("alpn");
    let ca = Ca::new();
    write(&dir.path("ca.pem"), &ca.pem);
    let server = start_tls(&dir, &ca.leaf(), &[]).await;
    let port = server.addr().port();
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let output = std::process::Command::new("curl")
            .args(["-s", "--max-time", "20", flag, "-w", " %{http_version}"])
            .arg("--cacert")
            .arg(dir.path("ca.pem"))
            .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
            .arg(format!("https://localhost:{port}/"))
            .output()
            .expect("run curl");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("hello\n {version}"),
            "{flag}: {output:?}"
        );
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn the_protocol_agreed_by_alpn_is_the_one_served() {
    let dir = Dir::new("alpn-strict");
    let ca = Ca::new();
    let server = start_tls(&dir, &ca.leaf(), &[]).await;
    let addr = server.addr();
    // Agreed on HTTP/1.1: an HTTP/2 preface is not HTTP/1.1, and is refused as such.
    let mut h1 = connect(addr, client_config_alpn(&ca, &[b"http/1.1"])).await;
    assert_eq!(h1.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    h1.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), h1.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "served HTTP/2 after agreeing on HTTP/1.1: {answer:?}"
    );
    // No ALPN at all: HTTP/2 over TLS needs it, so the preface is refused the same way.
    let mut none = connect(addr, client_config_alpn(&ca, &[])).await;
    assert_eq!(none.get_ref().1.alpn_protocol(), None);
    none.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), none.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "served HTTP/2 without ALPN: {answer:?}"
    );
    // Agreed on h2: an HTTP/1.1 request gets no HTTP/1.1 answer.
    let mut h2 = connect(addr, client_config_alpn(&ca, &[b"h2"])).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    h2.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), h2.read_to_end(&mut answer)).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("hello"),
        "served HTTP/1.1 after agreeing on h2"
    );
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

/// `openssl s_client` with the system configuration bypassed (so the client itself is willing
/// to offer old versions and suites); whether a session was established, and the output.
fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let mut child = std::process::Command::new("openssl")
        .arg("s_client")
        .args(["-connect", &addr.to_string(), "-servername", "localhost"])
        .args(args)
        .env("OPENSSL_CONF", "/dev/null")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run openssl (is it installed?)");
    // Closing stdin ends the session once the handshake is done (or failed).
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("openssl output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let established = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (established, text)
}

#[tokio::test]
async fn only_tls12_and_tls13_with_aead_suites_are_accepted() {
    let dir = Dir::new("versions");
    let ca = Ca::new();
    let server = start_tls(&dir, &ca.leaf(), &[]).await;
    let addr = server.addr();
    // TLS 1.0 and 1.1 refused, although the client offers them (security level 0).
    for version in ["-tls1", "-tls1_1"] {
        let (established, text) = s_client(addr, &[version, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!established, "{version} was accepted:\n{text}");
        // The client did send its hello; the server answered with a fatal alert.
        assert!(
            text.contains("SSL alert number"),
            "{version}: not refused by the server:\n{text}"
        );
    }
    // TLS 1.2 without AEAD (CBC suites with SHA-1 and SHA-256 MACs) refused.
    let cbc = "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384";
    let (established, text) = s_client(addr, &["-tls1_2", "-cipher", cbc]);
    assert!(!established, "a CBC suite was accepted:\n{text}");
    assert!(text.contains("SSL alert number"), "{text}");
    // The AEAD suites work, over TLS 1.2 and 1.3.
    for suite in [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ] {
        let (established, text) = s_client(addr, &["-tls1_2", "-cipher", suite]);
        assert!(established && text.contains(suite), "{suite}:\n{text}");
    }
    let (established, text) = s_client(addr, &["-tls1_3"]);
    assert!(established && text.contains("TLSv1.3"), "{text}");
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn reloads_by_sighup_symlink_swap_and_never_to_a_bad_pair() {
    let dir = Dir::new("reload");
    let ca = Ca::new();
    let config = client_config(&ca);
    // The files are symlinks into a versioned directory, as Kubernetes mounts a secret.
    let first = ca.leaf();
    std::fs::create_dir_all(dir.path("v1")).expect("v1");
    write(&dir.path("v1/tls.crt"), &first.cert_pem);
    write(&dir.path("v1/tls.key"), &first.key_pem);
    std::os::unix::fs::symlink("v1", dir.path("..data")).expect("..data");
    std::os::unix::fs::symlink("..data/tls.crt", dir.path("tls.crt")).expect("link");
    std::os::unix::fs::symlink("..data/tls.key", dir.path("tls.key")).expect("link");
    let server = start_tls(&dir, &first, &["--admin", "127.0.0.1:0"]).await;
    let addr = server.addr();

    let mut open = connect(addr, Arc::clone(&config)).await;
    assert_eq!(served(&open), first.der);
    assert!(get(&mut open).await.ends_with("hello\n"));

    // SIGHUP after the files changed in place.
    let second = ca.leaf();
    std::fs::create_dir_all(dir.path("v2")).expect("v2");
    write(&dir.path("v2/tls.crt"), &second.cert_pem);
    write(&dir.path("v2/tls.key"), &second.key_pem);
    replace(&dir.path("v1/tls.key"), &second.key_pem);
    replace(&dir.path("v1/tls.crt"), &second.cert_pem);
    server.signal("HUP");
    until_served(addr, &config, &second.der).await;
    // The connection opened before the reload keeps working.
    assert!(get(&mut open).await.ends_with("hello\n"));

    // A symlink swap, without a signal: the watcher sees it.
    let third = ca.leaf();
    std::fs::create_dir_all(dir.path("v3")).expect("v3");
    write(&dir.path("v3/tls.crt"), &third.cert_pem);
    write(&dir.path("v3/tls.key"), &third.key_pem);
    std::os::unix::fs::symlink("v3", dir.path("..data.new")).expect("new link");
    std::fs::rename(dir.path("..data.new"), dir.path("..data")).expect("swap");
    until_served(addr, &config, &third.der).await;
    assert!(get(&mut open).await.ends_with("hello\n"));

    // Garbage in place of the certificate: the reload fails, the last good pair stays.
    replace(&dir.path("v3/tls.crt"), "not a certificate\n");
    server.signal("HUP");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = common::get(server.admin(), "/metrics").await;
        if scrape.contains("portcullis_tls_reloads_total{outcome=\"failure\"} ")
            && !scrape.contains("portcullis_tls_reloads_total{outcome=\"failure\"} 0")
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed reload counted:\n{scrape}"
        );
        tokio::task::yield_now().await;
    }
    let fresh = connect(addr, Arc::clone(&config)).await;
    assert_eq!(served(&fresh), third.der);
    assert!(get(&mut open).await.ends_with("hello\n"));
    drop((open, fresh));
    // The acceptor was built before `--admin` installed the exporter: its expiry gauge still
    // reaches the scrape (it is looked up at each update, not when the acceptor is built).
    let scrape = common::get(server.admin(), "/metrics").await;
    assert!(
        scrape.contains("portcullis_tls_certificate_expiry_seconds{certificate=\"default\"} "),
        "no expiry gauge:\n{scrape}"
    );
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn silent_connections_neither_delay_a_real_client_nor_outlive_the_deadline() {
    let dir = Dir::new("flood");
    let ca = Ca::new();
    let server = start_tls(
        &dir,
        &ca.leaf(),
        &["--handshake-timeout", "3s", "--admin", "127.0.0.1:0"],
    )
    .await;
    let addr = server.addr();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(addr).await.expect("connect"));
    }
    // A real client is served while all 200 silent connections are still waiting.
    let mut client = connect(addr, client_config(&ca)).await;
    assert!(get(&mut client).await.ends_with("hello\n"));
    let mut byte = [0u8; 1];
    let still_open = silent
        .iter()
        .filter(|s| matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count();
    assert_eq!(
        still_open, 200,
        "the silent connections should still be waiting"
    );
    // Each one is closed at the handshake deadline.
    for stream in &mut silent {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut rest)).await;
        assert!(
            closed.is_ok(),
            "a silent connection outlived the handshake deadline"
        );
    }
    // Counted as timeouts (the count follows the close by a moment: poll for it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let scrape = common::get(server.admin(), "/metrics").await;
        if scrape.contains("portcullis_tls_handshake_failures_total{reason=\"timeout\"} 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{scrape}");
        tokio::task::yield_now().await;
    }
    server.signal("TERM");
    assert_eq!(server.wait(Duration::from_secs(30)).await, 0);
}

#[tokio::test]
async fn a_stalled_handshake_at_the_drain_deadline_is_a_forced_close() {
    let dir = Dir::new("forced");
    let ca = Ca::new();
    // One acceptor: connections are accepted in the order they arrive.
    let server = start_tls(
        &dir,
        &ca.leaf(),
        &["--drain-timeout", "1s", "--acceptors", "1"],
    )
    .await;
    // A client that never sends its ClientHello, inside the 10 s handshake deadline.
    let mut stalled = TcpStream::connect(server.addr()).await.expect("connect");
    // The server has accepted it once a later connection is served.
    let mut client = connect(server.addr(), client_config(&ca)).await;
    assert!(get(&mut client).await.ends_with("hello\n"));
    drop(client);
    server.signal("TERM");
    // Forced at the 1 s drain deadline: exit status 1, not a clean drain.
    assert_eq!(server.wait(Duration::from_secs(30)).await, 1);
    let mut rest = Vec::new();
    let _ = stalled.read_to_end(&mut rest).await;
}

#[tokio::test]
async fn bad_certificate_files_are_one_clear_error_each() {
    let dir = Dir::new("bad");
    let ca = Ca::new();
    let leaf = ca.leaf();
    let other = ca.leaf();
    write(&dir.path("cert.pem"), &leaf.cert_pem);
    write(&dir.path("key.pem"), &leaf.key_pem);
    write(&dir.path("other.key"), &other.key_pem);
    write(&dir.path("garbage.pem"), "garbage\n");
    let path = |name: &str| dir.path(name).to_str().expect("utf8").to_owned();
    for (cert, key, names) in [
        (path("missing.pem"), path("key.pem"), path("missing.pem")),
        (path("cert.pem"), path("missing.key"), path("missing.key")),
        (path("garbage.pem"), path("key.pem"), path("garbage.pem")),
        (path("cert.pem"), path("other.key"), path("other.key")),
    ] {
        let (code, stdout, stderr) = common::run_to_exit(&[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ])
        .await;
        assert_eq!(code, 2, "{stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{stderr}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(&names),
            "{stderr}"
        );
    }
    let (code, _, stderr) = common::run_to_exit(&["--tls-cert", &path("cert.pem")]).await;
    assert_eq!(code, 2, "{stderr}");
}
