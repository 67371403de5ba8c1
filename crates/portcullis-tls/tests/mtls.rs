//! Client certificate authentication, required and optional.

mod common;

use common::TestBuild;

use common::{
    Ca, MetricsProbe, Server, TempDir, client_config, client_config_with_cert, connect, exchange,
};
use portcullis_tls::metrics::{HANDSHAKE_FAILURES_TOTAL, LABEL_REASON};
use portcullis_tls::{ClientAuth, HandshakeFailure, TlsConfig, TlsErrorKind};

fn server(ca: &Ca) -> TlsConfig {
    let leaf = ca.leaf(&["localhost"]);
    TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).expect("pair")
}

#[tokio::test]
async fn required_client_certificates_are_verified() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let dir = TempDir::new("mtls");
    let bundle = dir.path("clients-ca.pem");
    std::fs::write(&bundle, &client_ca.cert_pem).expect("write bundle");
    let (acceptor, probe) =
        MetricsProbe::build(server(&server_ca).client_auth(ClientAuth::required(&bundle)))
            .expect("build");
    let mut server = Server::start(acceptor).await;

    // A certificate from the trusted CA: accepted, and handed to the application.
    let good = client_ca.leaf(&["client.test"]);
    let mut client = connect(
        server.addr,
        client_config_with_cert(&server_ca, &good),
        "localhost",
    )
    .await
    .expect("handshake");
    exchange(&mut client, b"authenticated").await.expect("echo");
    let accepted = server.next().await.expect("accepted");
    let certificates = accepted.client_certificates.expect("client certificates");
    assert_eq!(certificates.end_entity(), Some(&good.cert_der));
    assert_eq!(certificates.chain().len(), 1);

    // No certificate: refused. (With TLS 1.3 the client learns it on its first read.)
    let mut anonymous = connect(server.addr, client_config(&server_ca, &[]), "localhost").await;
    let error = server.next().await.expect_err("refused");
    assert_eq!(
        error.reason(),
        HandshakeFailure::BadClientCertificate,
        "{error}"
    );
    if let Ok(stream) = anonymous.as_mut() {
        assert!(exchange(stream, b"x").await.is_err());
    }

    // A certificate from another CA: refused.
    let stranger = Ca::new("other CA").leaf(&["client.test"]);
    let mut other = connect(
        server.addr,
        client_config_with_cert(&server_ca, &stranger),
        "localhost",
    )
    .await;
    let error = server.next().await.expect_err("refused");
    assert_eq!(
        error.reason(),
        HandshakeFailure::BadClientCertificate,
        "{error}"
    );
    if let Ok(stream) = other.as_mut() {
        assert!(exchange(stream, b"x").await.is_err());
    }

    assert_eq!(
        probe.counter(
            HANDSHAKE_FAILURES_TOTAL,
            LABEL_REASON,
            "bad_client_certificate"
        ),
        2
    );
}

#[tokio::test]
async fn optional_client_certificates_let_anonymous_clients_in() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("client CA");
    let acceptor = server(&server_ca)
        .client_auth(ClientAuth::optional_pem(client_ca.cert_pem.clone()))
        .build_for_test()
        .expect("build");
    let mut server = Server::start(acceptor).await;

    let mut anonymous = connect(server.addr, client_config(&server_ca, &[]), "localhost")
        .await
        .expect("handshake");
    exchange(&mut anonymous, b"anonymous").await.expect("echo");
    assert!(
        server
            .next()
            .await
            .expect("accepted")
            .client_certificates
            .is_none()
    );

    let good = client_ca.leaf(&["client.test"]);
    let mut client = connect(
        server.addr,
        client_config_with_cert(&server_ca, &good),
        "localhost",
    )
    .await
    .expect("handshake");
    exchange(&mut client, b"authenticated").await.expect("echo");
    let certificates = server
        .next()
        .await
        .expect("accepted")
        .client_certificates
        .expect("client certificates");
    assert_eq!(certificates.end_entity(), Some(&good.cert_der));

    // A presented certificate must still verify.
    let stranger = Ca::new("other CA").leaf(&["client.test"]);
    let _ = connect(
        server.addr,
        client_config_with_cert(&server_ca, &stranger),
        "localhost",
    )
    .await;
    let error = server.next().await.expect_err("refused");
    assert_eq!(
        error.reason(),
        HandshakeFailure::BadClientCertificate,
        "{error}"
    );
}

#[test]
fn a_bad_ca_bundle_is_named() {
    let ca = Ca::new("server CA");
    let dir = TempDir::new("bad-bundle");
    let missing = dir.path("missing.pem");
    let error = server(&ca)
        .client_auth(ClientAuth::required(&missing))
        .build_for_test()
        .expect_err("missing bundle");
    assert_eq!(error.kind(), TlsErrorKind::NotFound);
    assert_eq!(error.path(), Some(missing.as_path()));

    let empty = dir.path("empty.pem");
    std::fs::write(&empty, "no certificates here\n").expect("write");
    let error = server(&ca)
        .client_auth(ClientAuth::required(&empty))
        .build_for_test()
        .expect_err("empty bundle");
    assert_eq!(error.kind(), TlsErrorKind::NoCertificate);
    assert!(error.to_string().contains(&empty.display().to_string()));
}
