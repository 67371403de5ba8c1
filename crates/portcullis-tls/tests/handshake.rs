//! Handshakes over loopback TCP: ALPN, versions and suites, failure reasons, the deadline and
//! session resumption.

mod common;

use common::TestBuild;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Ca, MetricsProbe, Server, TempDir, client_config, connect, exchange, served_cert};
use portcullis_tls::metrics::{
    HANDSHAKE_FAILURES_TOTAL, HANDSHAKES_TOTAL, LABEL_KIND, LABEL_REASON,
};
use portcullis_tls::rustls::{self, CipherSuite, ClientConfig, HandshakeKind, ProtocolVersion};
use portcullis_tls::{ALLOWED_CIPHER_SUITES, HandshakeFailure, TlsConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn server_config(ca: &Ca) -> TlsConfig {
    let leaf = ca.leaf(&["localhost"]);
    TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).expect("pair")
}

#[tokio::test]
async fn alpn_h2_and_http11_are_each_negotiated_and_bytes_flow() {
    let ca = Ca::new("alpn CA");
    let (acceptor, probe) = MetricsProbe::build(server_config(&ca)).expect("build");
    let mut server = Server::start(acceptor).await;

    for protocol in [&b"h2"[..], &b"http/1.1"[..]] {
        let mut client = connect(server.addr, client_config(&ca, &[protocol]), "localhost")
            .await
            .expect("handshake");
        assert_eq!(client.get_ref().1.alpn_protocol(), Some(protocol));
        let accepted = server.next().await.expect("server handshake");
        assert_eq!(accepted.alpn.as_deref(), Some(protocol));
        assert_eq!(accepted.server_name.as_deref(), Some("localhost"));
        exchange(&mut client, b"ping over TLS").await.expect("echo");
    }

    // A client that offers both gets h2, the server's first choice.
    let client = connect(
        server.addr,
        client_config(&ca, &[b"http/1.1", b"h2"]),
        "localhost",
    )
    .await
    .expect("handshake");
    assert_eq!(client.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    server.next().await.expect("server handshake");

    assert_eq!(probe.counter(HANDSHAKES_TOTAL, LABEL_KIND, "full"), 3);
}

#[tokio::test]
async fn custom_alpn_list_is_used_and_an_empty_protocol_is_refused() {
    let ca = Ca::new("alpn CA");
    let acceptor = server_config(&ca)
        .alpn(["acme-tls/1"])
        .build_for_test()
        .expect("build");
    assert_eq!(
        acceptor.server_config().alpn_protocols,
        vec![b"acme-tls/1".to_vec()]
    );
    let error = server_config(&ca)
        .alpn([""])
        .build_for_test()
        .expect_err("empty ALPN refused");
    assert_eq!(error.kind(), portcullis_tls::TlsErrorKind::InvalidConfig);
}

#[tokio::test]
async fn only_tls12_and_tls13_with_aead_suites_are_served() {
    let ca = Ca::new("suites CA");
    let acceptor = server_config(&ca).build_for_test().expect("build");
    let config = acceptor.server_config();

    // rustls does not show a ServerConfig's versions; the crate's list is what `build` passes.
    let versions: Vec<ProtocolVersion> = portcullis_tls::PROTOCOL_VERSIONS
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(
        versions,
        [ProtocolVersion::TLSv1_3, ProtocolVersion::TLSv1_2]
    );
    let suites = &config.crypto_provider().cipher_suites;
    assert!(!suites.is_empty());
    for suite in suites {
        let name = format!("{:?}", suite.suite());
        assert!(ALLOWED_CIPHER_SUITES.contains(&suite.suite()), "{name}");
        let aead =
            name.contains("_GCM_") || name.contains("CHACHA20_POLY1305") || name.contains("_CCM_");
        assert!(aead, "{name} is not an AEAD suite");
        assert!(!name.contains("CBC"), "{name}");
        let version = suite.version().version;
        assert!(
            version == ProtocolVersion::TLSv1_3 || version == ProtocolVersion::TLSv1_2,
            "{name} is for {version:?}"
        );
        if let rustls::SupportedCipherSuite::Tls12(_) = suite {
            assert!(
                name.starts_with("TLS_ECDHE_"),
                "{name} lacks forward secrecy"
            );
        }
    }
    assert_eq!(config.max_early_data_size, 0, "0-RTT must be off");

    // A client limited to TLS 1.2 gets TLS 1.2 with an AEAD suite; a default client TLS 1.3.
    let mut server = Server::start(acceptor).await;
    let tls12 = Arc::new(
        ClientConfig::builder_with_provider(common::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
    );
    let mut client = connect(server.addr, tls12, "localhost")
        .await
        .expect("TLS 1.2");
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    let suite = client
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .expect("suite")
        .suite();
    assert!(ALLOWED_CIPHER_SUITES.contains(&suite), "{suite:?}");
    server.next().await.expect("server side");
    exchange(&mut client, b"tls12").await.expect("echo");

    let client = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("TLS 1.3");
    assert_eq!(
        client.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    server.next().await.expect("server side");
}

#[tokio::test]
async fn no_shared_cipher_suite_is_counted() {
    let ca = Ca::new("suites CA");
    let (acceptor, probe) = MetricsProbe::build(server_config(&ca)).expect("build");
    let mut server = Server::start(acceptor).await;

    // TLS 1.2 with RSA-only suites against an ECDSA certificate: nothing in common.
    let mut provider = (*common::provider()).clone();
    provider.cipher_suites.retain(|suite| {
        matches!(
            suite.suite(),
            CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
        )
    });
    let client = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(ca.roots())
            .with_no_client_auth(),
    );
    assert!(connect(server.addr, client, "localhost").await.is_err());
    let error = server.next().await.expect_err("handshake must fail");
    assert_eq!(
        error.reason(),
        HandshakeFailure::NoSharedCipherOrVersion,
        "{error}"
    );
    assert_eq!(
        probe.counter(
            HANDSHAKE_FAILURES_TOTAL,
            LABEL_REASON,
            "no_shared_cipher_or_version"
        ),
        1
    );
}

#[tokio::test]
async fn bytes_that_are_not_tls_fail_as_protocol() {
    let ca = Ca::new("protocol CA");
    let (acceptor, probe) = MetricsProbe::build(server_config(&ca)).expect("build");
    let mut server = Server::start(acceptor).await;

    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let error = server.next().await.expect_err("handshake must fail");
    assert_eq!(error.reason(), HandshakeFailure::Protocol, "{error}");
    assert_eq!(
        probe.counter(HANDSHAKE_FAILURES_TOTAL, LABEL_REASON, "protocol"),
        1
    );
}

#[tokio::test]
async fn a_silent_connection_times_out_at_the_deadline() {
    let ca = Ca::new("deadline CA");
    let deadline = Duration::from_millis(200);
    let (acceptor, probe) =
        MetricsProbe::build(server_config(&ca).handshake_timeout(deadline)).expect("build");
    assert_eq!(acceptor.handshake_timeout(), deadline);
    let mut server = Server::start(acceptor).await;

    let started = Instant::now();
    let _silent = TcpStream::connect(server.addr).await.expect("connect");
    let error = server.next().await.expect_err("handshake must fail");
    let elapsed = started.elapsed();
    assert_eq!(error.reason(), HandshakeFailure::Timeout, "{error}");
    assert!(
        elapsed >= deadline,
        "failed after {elapsed:?}, before the deadline"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "failed only after {elapsed:?}"
    );
    assert_eq!(
        probe.counter(HANDSHAKE_FAILURES_TOTAL, LABEL_REASON, "timeout"),
        1
    );
}

#[tokio::test]
async fn sessions_resume_and_keep_resuming_after_a_reload() {
    let ca = Ca::new("resumption CA");
    let dir = TempDir::new("resume");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.leaf(&["localhost"]);
    first.write(&cert, &key);
    let (acceptor, probe) =
        MetricsProbe::build(TlsConfig::from_pem_files(&cert, &key).expect("pair")).expect("build");
    let mut server = Server::start(acceptor.clone()).await;

    // Each TLS version resumes in its own way (tickets in 1.3, tickets or cache in 1.2).
    let versions: [&[&'static rustls::SupportedProtocolVersion]; 2] =
        [&[&rustls::version::TLS13], &[&rustls::version::TLS12]];
    let mut clients = Vec::new();
    for version in versions {
        let client = Arc::new(
            ClientConfig::builder_with_provider(common::provider())
                .with_protocol_versions(version)
                .expect("versions")
                .with_root_certificates(ca.roots())
                .with_no_client_auth(),
        );
        let mut stream = connect(server.addr, Arc::clone(&client), "localhost")
            .await
            .expect("first connection");
        assert_eq!(
            stream.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Full)
        );
        // Reading the echo also reads the session tickets sent after the handshake.
        exchange(&mut stream, b"first").await.expect("echo");
        server.next().await.expect("server side");

        let mut stream = connect(server.addr, Arc::clone(&client), "localhost")
            .await
            .expect("second connection");
        assert_eq!(
            stream.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{version:?}"
        );
        exchange(&mut stream, b"second").await.expect("echo");
        server.next().await.expect("server side");
        clients.push(client);
    }

    // A reload swaps the certificate but keeps the ticket keys and the session cache.
    let second = ca.leaf(&["localhost"]);
    second.replace(&cert, &key);
    acceptor.reload().expect("reload");

    for client in &clients {
        let mut stream = connect(server.addr, Arc::clone(client), "localhost")
            .await
            .expect("connection after reload");
        assert_eq!(
            stream.get_ref().1.handshake_kind(),
            Some(HandshakeKind::Resumed)
        );
        exchange(&mut stream, b"third").await.expect("echo");
        server.next().await.expect("server side");
    }
    // A new client gets a full handshake with the new certificate.
    let stream = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("new client");
    assert_eq!(served_cert(&stream), second.cert_der);
    server.next().await.expect("server side");

    assert_eq!(probe.counter(HANDSHAKES_TOTAL, LABEL_KIND, "resumed"), 4);
    assert_eq!(probe.counter(HANDSHAKES_TOTAL, LABEL_KIND, "full"), 3);
}

/// A TLS 1.1 ClientHello offering only CBC suites and no supported_versions extension.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[7u8; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // two CBC suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    body.extend_from_slice(&[0x00, 0x00]); // no extensions
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(body.len()).expect("short").to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).expect("short").to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn a_tls11_client_with_cbc_suites_is_refused_and_counted() {
    let ca = Ca::new("old client CA");
    let (acceptor, probe) = MetricsProbe::build(server_config(&ca)).expect("build");
    let mut server = Server::start(acceptor).await;

    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    tcp.write_all(&tls11_client_hello()).await.expect("write");
    let error = server.next().await.expect_err("handshake must fail");
    assert_eq!(
        error.reason(),
        HandshakeFailure::NoSharedCipherOrVersion,
        "{error}"
    );
    assert_eq!(
        probe.counter(
            HANDSHAKE_FAILURES_TOTAL,
            LABEL_REASON,
            "no_shared_cipher_or_version"
        ),
        1
    );
}
