//! SNI: pairs chosen by server name, wildcards, the default pair, refusing unknown names.

mod common;

use common::{
    Ca, Leaf, MetricsProbe, Server, client_config, client_config_any_cert, connect, served_cert,
};
use portcullis_tls::metrics::{
    CERTIFICATE_EXPIRY_SECONDS, HANDSHAKE_FAILURES_TOTAL, LABEL_CERTIFICATE, LABEL_REASON,
};
use portcullis_tls::{CertKeyPair, HandshakeFailure, TlsConfig};

struct Pairs {
    default: Leaf,
    a: Leaf,
    b: Leaf,
    wild: Leaf,
}

fn pair(leaf: &Leaf) -> CertKeyPair {
    CertKeyPair::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).expect("pair")
}

fn config(ca: &Ca) -> (TlsConfig, Pairs) {
    let pairs = Pairs {
        default: ca.leaf(&["default.test"]),
        a: ca.leaf(&["a.test"]),
        b: ca.leaf(&["b.test"]),
        wild: ca.leaf(&["*.wild.test"]),
    };
    let config = TlsConfig::new(pair(&pairs.default))
        .sni("a.test", pair(&pairs.a))
        .sni("B.test", pair(&pairs.b))
        .sni("*.wild.test", pair(&pairs.wild));
    (config, pairs)
}

#[tokio::test]
async fn pairs_are_chosen_by_server_name() {
    let ca = Ca::new("SNI CA");
    let (config, pairs) = config(&ca);
    let (acceptor, probe) = MetricsProbe::build(config).expect("build");
    let mut server = Server::start(acceptor).await;

    // Names the certificates cover, verified by a normal client.
    for (name, leaf) in [
        ("a.test", &pairs.a),
        ("b.test", &pairs.b),
        ("x.wild.test", &pairs.wild),
        ("default.test", &pairs.default),
    ] {
        let client = connect(server.addr, client_config(&ca, &[]), name)
            .await
            .expect("handshake");
        assert_eq!(served_cert(&client), leaf.cert_der, "{name}");
        server.next().await.expect("server side");
    }
    // A wildcard covers one label only, and unknown names get the default pair.
    for name in ["deep.x.wild.test", "wild.test", "unknown.test"] {
        let client = connect(server.addr, client_config_any_cert(true), name)
            .await
            .expect("handshake");
        assert_eq!(served_cert(&client), pairs.default.cert_der, "{name}");
        server.next().await.expect("server side");
    }
    // So does a client that sends no server name.
    let client = connect(server.addr, client_config_any_cert(false), "a.test")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&client), pairs.default.cert_der);
    assert_eq!(server.next().await.expect("server side").server_name, None);

    // One expiry gauge per configured pair, labelled by configuration.
    for label in ["default", "a.test", "b.test", "*.wild.test"] {
        assert!(
            probe
                .value(CERTIFICATE_EXPIRY_SECONDS, LABEL_CERTIFICATE, label)
                .is_some(),
            "no expiry gauge for {label}"
        );
    }
}

#[tokio::test]
async fn unknown_names_can_be_refused_and_are_counted() {
    let ca = Ca::new("SNI CA");
    let (config, pairs) = config(&ca);
    let (acceptor, probe) = MetricsProbe::build(config.refuse_unknown_names(true)).expect("build");
    assert_eq!(acceptor.certificate_for(Some("unknown.test")), None);
    let mut server = Server::start(acceptor).await;

    for name in ["unknown.test", "deep.x.wild.test"] {
        let refused = connect(server.addr, client_config_any_cert(true), name).await;
        assert!(refused.is_err(), "{name} must be refused");
        let error = server.next().await.expect_err("refused on the server");
        assert_eq!(
            error.reason(),
            HandshakeFailure::UnknownServerName,
            "{error}"
        );
    }
    assert_eq!(
        probe.counter(
            HANDSHAKE_FAILURES_TOTAL,
            LABEL_REASON,
            "unknown_server_name"
        ),
        2
    );

    // Configured names, the default certificate's own name, and clients without SNI still work.
    for (name, leaf) in [("a.test", &pairs.a), ("default.test", &pairs.default)] {
        let client = connect(server.addr, client_config(&ca, &[]), name)
            .await
            .expect("handshake");
        assert_eq!(served_cert(&client), leaf.cert_der, "{name}");
        server.next().await.expect("server side");
    }
    let client = connect(server.addr, client_config_any_cert(false), "a.test")
        .await
        .expect("no SNI");
    assert_eq!(served_cert(&client), pairs.default.cert_der);
    server.next().await.expect("server side");
    assert_eq!(
        probe.counter(
            HANDSHAKE_FAILURES_TOTAL,
            LABEL_REASON,
            "unknown_server_name"
        ),
        2
    );
}
