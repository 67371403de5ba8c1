//! Choosing the crypto provider: by feature, explicitly, and the ambiguous case.

mod common;

use std::sync::Arc;

use common::{Ca, Server, client_config, connect};
use portcullis_tls::{TlsConfig, TlsErrorKind};

fn config(ca: &Ca) -> TlsConfig {
    let leaf = ca.leaf(&["localhost"]);
    TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).expect("pair")
}

#[cfg(not(all(feature = "aws-lc-rs", feature = "ring")))]
#[tokio::test]
async fn the_feature_provider_is_used_without_a_process_default() {
    let ca = Ca::new("provider CA");
    let acceptor = config(&ca).build().expect("build");
    let mut server = Server::start(acceptor).await;
    connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    server.next().await.expect("server side");
    // Building never installs a process-wide provider.
    assert!(portcullis_tls::rustls::crypto::CryptoProvider::get_default().is_none());
}

#[tokio::test]
async fn an_explicit_provider_is_used() {
    let ca = Ca::new("provider CA");
    let acceptor = config(&ca)
        .provider(common::provider())
        .build()
        .expect("build");
    let mut server = Server::start(acceptor).await;
    connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    server.next().await.expect("server side");
    assert!(portcullis_tls::rustls::crypto::CryptoProvider::get_default().is_none());
}

#[test]
fn a_provider_without_allowed_suites_is_refused() {
    let ca = Ca::new("provider CA");
    let mut provider = (*common::provider()).clone();
    provider.cipher_suites.clear();
    let error = config(&ca)
        .provider(Arc::new(provider))
        .build()
        .expect_err("refused");
    assert_eq!(error.kind(), TlsErrorKind::InvalidConfig, "{error}");
}

#[cfg(all(feature = "aws-lc-rs", feature = "ring"))]
#[test]
fn both_features_without_an_explicit_provider_is_an_error_not_a_panic() {
    let ca = Ca::new("provider CA");
    let error = config(&ca).build().expect_err("ambiguous");
    assert_eq!(error.kind(), TlsErrorKind::AmbiguousProvider, "{error}");
    assert!(error.to_string().contains("TlsConfig::provider"), "{error}");
    // Naming one resolves it.
    config(&ca)
        .provider(Arc::new(
            portcullis_tls::rustls::crypto::ring::default_provider(),
        ))
        .build()
        .expect("explicit ring");
}
