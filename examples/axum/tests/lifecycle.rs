//! The README's server keeps its blocks working with no task spawned by its author: a
//! replaced certificate is served within 2 s, SIGHUP reloads at once and never ends the
//! process, and SIGTERM still drains to exit 0. A real child process, real signals, a real
//! TLS client; certificates made here with rcgen.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use portcullis::tls::rustls::pki_types::{CertificateDer, ServerName};
use portcullis::tls::rustls::{ClientConfig, RootCertStore};
use portcullis::tls::tokio_rustls::TlsConnector;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long a replaced certificate file may take to be served (the contract's bound).
const FILE_RELOAD_BOUND: Duration = Duration::from_secs(2);

struct Ca(Issuer<'static, KeyPair>, CertificateDer<'static>);

impl Ca {
    fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca(Issuer::new(params, key), cert.der().clone())
    }

    /// A certificate for `localhost`: its PEM, its key's PEM and its DER.
    fn leaf(&self) -> (String, String, CertificateDer<'static>) {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.signed_by(&key, &self.0).expect("certificate");
        (cert.pem(), key.serialize_pem(), cert.der().clone())
    }
}

/// Replaces `path` atomically, as certbot and cert-manager do.
fn replace(path: &Path, contents: &str) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, contents).expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

/// The certificate the server at `port` serves now.
async fn served(port: u16, ca: &Ca) -> CertificateDer<'static> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.1.clone()).expect("root");
    let config = ClientConfig::builder_with_provider(Arc::new(
        portcullis::tls::rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let chain = tls.get_ref().1.peer_certificates().expect("a chain");
    let leaf = chain[0].clone().into_owned();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.expect("response");
    assert!(
        response.ends_with(b"hello\n"),
        "{}",
        String::from_utf8_lossy(&response)
    );
    leaf
}

/// Waits (bounded by `limit`) until the server at `port` serves `expected`.
async fn until_served(port: u16, ca: &Ca, expected: &CertificateDer<'static>, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if served(port, ca).await == *expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Server {
    child: Child,
    port: u16,
    admin: Option<u16>,
}

impl Server {
    async fn start(cert: &Path, key: &Path) -> Self {
        Self::start_with(cert, key, false).await
    }

    async fn start_with(cert: &Path, key: &Path, admin: bool) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_axum-example"));
        command
            .args(["--listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(key);
        if admin {
            command.args(["--admin", "127.0.0.1:0"]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the example");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut next_line = async || {
            let mut line = String::new();
            tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
                .await
                .expect("a line within 30 s")
                .expect("read");
            line
        };
        let port = |line: &str, prefix: &str| -> u16 {
            line.trim()
                .strip_prefix(prefix)
                .and_then(|port| port.parse().ok())
                .unwrap_or_else(|| panic!("not a `{prefix}PORT` line: {line:?}"))
        };
        let listening = next_line().await;
        let listen_port = port(&listening, "listening on https://127.0.0.1:");
        let admin = match admin {
            true => Some(port(&next_line().await, "admin on http://127.0.0.1:")),
            false => None,
        };
        Server {
            child,
            port: listen_port,
            admin,
        }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("axum-example-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test]
async fn certificates_reload_by_file_and_by_sighup_with_no_task_spawned_by_the_user() {
    let dir = temp_dir("reload");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ca = Ca::new();
    let (first_pem, first_key, first) = ca.leaf();
    replace(&cert, &first_pem);
    replace(&key, &first_key);
    let mut server = Server::start(&cert, &key).await;
    assert_eq!(served(server.port, &ca).await, first);

    // A replaced pair is picked up by the server's own watcher.
    let (second_pem, second_key, second) = ca.leaf();
    replace(&key, &second_key);
    replace(&cert, &second_pem);
    until_served(server.port, &ca, &second, FILE_RELOAD_BOUND).await;

    // SIGHUP, as certbot's deploy hook sends it: the process lives on and serves the new pair.
    let (third_pem, third_key, third) = ca.leaf();
    replace(&key, &third_key);
    replace(&cert, &third_pem);
    server.signal("HUP");
    until_served(server.port, &ca, &third, FILE_RELOAD_BOUND).await;
    for _ in 0..3 {
        server.signal("HUP");
        assert_eq!(
            served(server.port, &ca).await,
            third,
            "still serving after SIGHUP"
        );
    }
    assert!(
        server.child.try_wait().expect("wait").is_none(),
        "SIGHUP ended the process"
    );

    server.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("exit within 15 s")
        .expect("wait");
    assert_eq!(
        status.code(),
        Some(0),
        "a clean drain after SIGHUPs: {status:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `GET /metrics` on the admin listener at `port`.
async fn scrape(port: u16) -> String {
    let mut tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect admin");
    tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    tcp.read_to_string(&mut response).await.expect("scrape");
    response
}

/// The value of the successful-reload counter in `scrape`.
fn reloads(scrape: &str) -> u64 {
    scrape
        .lines()
        .find_map(|line| line.strip_prefix("portcullis_tls_reloads_total{outcome=\"success\"} "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reload counter in the scrape:\n{scrape}"))
}

#[tokio::test]
async fn sighup_reloads_even_when_the_watcher_sees_no_change() {
    let dir = temp_dir("sighup");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ca = Ca::new();
    let (pem, key_pem, _) = ca.leaf();
    replace(&cert, &pem);
    replace(&key, &key_pem);
    let mut server = Server::start_with(&cert, &key, true).await;
    let admin = server.admin.expect("an admin line");
    let before = reloads(&scrape(admin).await);
    // The files are unchanged, so the watcher never reloads: only SIGHUP can count one.
    server.signal("HUP");
    let deadline = Instant::now() + FILE_RELOAD_BOUND;
    while reloads(&scrape(admin).await) == before {
        assert!(
            Instant::now() < deadline,
            "SIGHUP reloaded nothing within {FILE_RELOAD_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("exit within 15 s")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
