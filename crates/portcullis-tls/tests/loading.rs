//! Loading certificates and keys: each bad input gives its own error naming the file; every
//! supported key format loads and serves.

mod common;

use common::TestBuild;

use std::path::Path;

use common::{Ca, Leaf, Server, TempDir, client_config, connect, exchange, served_cert};
use portcullis_tls::{CertKeyPair, TlsConfig, TlsError, TlsErrorKind};
use rcgen::KeyPair;

fn load_err(cert: &Path, key: &Path) -> TlsError {
    match TlsConfig::from_pem_files(cert, key) {
        Ok(config) => config.build_for_test().expect_err("loading must fail"),
        Err(error) => error,
    }
}

/// Checks the kind, the path accessor and that the message names the file.
fn assert_names(error: &TlsError, kind: TlsErrorKind, file: &Path) {
    assert_eq!(error.kind(), kind, "{error}");
    assert_eq!(error.path(), Some(file), "{error}");
    assert!(
        error.to_string().contains(&file.display().to_string()),
        "message does not name {}: {error}",
        file.display()
    );
    assert!(!error.to_string().contains('\n'), "one line: {error}");
}

#[test]
fn missing_files_are_named() {
    let ca = Ca::new("missing CA");
    let dir = TempDir::new("missing");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let error = load_err(&cert, &key);
    assert_names(&error, TlsErrorKind::NotFound, &cert);
    assert!(error.to_string().contains("not found"), "{error}");

    ca.leaf(&["localhost"]).write(&cert, &key);
    std::fs::remove_file(&key).expect("remove key");
    assert_names(&load_err(&cert, &key), TlsErrorKind::NotFound, &key);

    // A dangling symlink is a missing file too.
    #[cfg(unix)]
    {
        let link = dir.path("dangling.crt");
        std::os::unix::fs::symlink(dir.path("nowhere"), &link).expect("symlink");
        assert_names(&load_err(&link, &key), TlsErrorKind::NotFound, &link);
    }
}

#[test]
fn unreadable_files_are_named() {
    let ca = Ca::new("unreadable CA");
    let dir = TempDir::new("unreadable");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    ca.leaf(&["localhost"]).write(&cert, &key);

    // A directory cannot be read as a file, whoever we are.
    let not_a_file = dir.path("a-directory");
    std::fs::create_dir(&not_a_file).expect("mkdir");
    assert_names(
        &load_err(&not_a_file, &key),
        TlsErrorKind::Unreadable,
        &not_a_file,
    );

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).expect("chmod");
        // root (as in many CI containers) reads the file anyway: then there is nothing to test.
        let readable_anyway = std::fs::read(&key).is_ok();
        let result = TlsConfig::from_pem_files(&cert, &key);
        if readable_anyway {
            assert!(result.is_ok(), "root can read the key, so it loads");
        } else {
            let error = result.expect_err("unreadable key must fail");
            assert_names(&error, TlsErrorKind::Unreadable, &key);
            assert!(error.to_string().contains("cannot read"), "{error}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
}

#[test]
fn a_file_without_a_certificate_is_named() {
    let ca = Ca::new("no-cert CA");
    let dir = TempDir::new("no-cert");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let leaf = ca.leaf(&["localhost"]);
    // The certificate file holds only the key; an empty file too.
    std::fs::write(&cert, &leaf.key_pem).expect("write");
    std::fs::write(&key, &leaf.key_pem).expect("write");
    let error = load_err(&cert, &key);
    assert_names(&error, TlsErrorKind::NoCertificate, &cert);
    assert!(error.to_string().contains("no certificate"), "{error}");

    std::fs::write(&cert, "").expect("write");
    assert_names(&load_err(&cert, &key), TlsErrorKind::NoCertificate, &cert);
}

#[test]
fn a_file_without_a_key_is_named() {
    let ca = Ca::new("no-key CA");
    let dir = TempDir::new("no-key");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let leaf = ca.leaf(&["localhost"]);
    std::fs::write(&cert, &leaf.cert_pem).expect("write");
    std::fs::write(&key, &leaf.cert_pem).expect("write");
    let error = load_err(&cert, &key);
    assert_names(&error, TlsErrorKind::NoPrivateKey, &key);
    assert!(error.to_string().contains("no private key"), "{error}");
}

#[test]
fn a_key_of_another_certificate_is_refused_naming_both_files() {
    let ca = Ca::new("mismatch CA");
    let dir = TempDir::new("mismatch");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let leaf = ca.leaf(&["localhost"]);
    let other = ca.leaf(&["localhost"]);
    std::fs::write(&cert, &leaf.cert_pem).expect("write");
    std::fs::write(&key, &other.key_pem).expect("write");
    let error = load_err(&cert, &key);
    assert_names(&error, TlsErrorKind::KeyMismatch, &key);
    assert!(
        error.to_string().contains(&cert.display().to_string()),
        "names the certificate too: {error}"
    );

    // The same from memory says so.
    let error = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), other.key_pem.as_bytes())
        .expect("parses")
        .build_for_test()
        .expect_err("mismatch");
    assert_eq!(error.kind(), TlsErrorKind::KeyMismatch);
    assert_eq!(error.path(), None);
    assert!(error.to_string().contains("in memory"), "{error}");
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused() {
    let ca = Ca::new("validity CA");
    let dir = TempDir::new("validity");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));

    let expired = ca.leaf_with(
        &["localhost"],
        KeyPair::generate().expect("key"),
        Some(((2000, 1, 1), (2001, 1, 1))),
    );
    expired.write(&cert, &key);
    let error = load_err(&cert, &key);
    assert_names(&error, TlsErrorKind::Expired, &cert);
    assert!(
        error.to_string().contains("expired at 2001-01-01"),
        "{error}"
    );

    let future = ca.leaf_with(
        &["localhost"],
        KeyPair::generate().expect("key"),
        Some(((2090, 1, 1), (2091, 1, 1))),
    );
    future.write(&cert, &key);
    let error = load_err(&cert, &key);
    assert_names(&error, TlsErrorKind::NotYetValid, &cert);
    assert!(error.to_string().contains("2090-01-01"), "{error}");
}

/// One DER element: (tag, contents, what follows).
fn tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, header) = match input[1] {
        n if n < 0x80 => (usize::from(n), 2),
        0x81 => (usize::from(input[2]), 3),
        0x82 => ((usize::from(input[2]) << 8) | usize::from(input[3]), 4),
        other => panic!("unexpected DER length byte {other:#x}"),
    };
    (tag, &input[header..header + len], &input[header + len..])
}

fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let len = contents.len();
    let mut out = vec![tag];
    match len {
        0..0x80 => out.push(len as u8),
        0x80..0x100 => out.extend([0x81, len as u8]),
        _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend(contents);
    out
}

/// The inner key of a PKCS#8 `PrivateKeyInfo`, and its algorithm parameters (the curve OID of
/// an EC key), by a minimal DER walk.
fn pkcs8_inner(pkcs8: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let (_, info, _) = tlv(pkcs8);
    let (_, _version, rest) = tlv(info);
    let (_, algorithm, rest) = tlv(rest);
    let (_, inner, _) = tlv(rest);
    let (_, _oid, parameters) = tlv(algorithm);
    (inner.to_vec(), parameters.to_vec())
}

/// SEC1 `ECPrivateKey` with the curve named in `[0] parameters`, as `openssl ec` writes it.
fn sec1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    let (inner, curve_oid) = pkcs8_inner(pkcs8);
    // inner = SEQUENCE { INTEGER 1, OCTET STRING key, [0] params?, [1] publicKey? }
    let (_, body, _) = tlv(&inner);
    let (_, _, after_version) = tlv(body);
    let (_, _, after_key) = tlv(after_version);
    let head = &body[..body.len() - after_key.len()];
    let mut new_body = head.to_vec();
    if after_key.first() != Some(&0xa0) {
        new_body.extend(der(0xa0, &curve_oid));
    }
    new_body.extend(after_key);
    der(0x30, &new_body)
}

fn pem(label: &str, der: Vec<u8>) -> String {
    ::pem::encode(&::pem::Pem::new(label, der))
}

/// Serves `leaf` with its key in `key_pem` and checks a client gets it.
async fn serves(ca: &Ca, leaf: &Leaf, key_pem: &str) {
    let dir = TempDir::new("key-format");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    std::fs::write(&cert, leaf.chain_pem(ca)).expect("write");
    std::fs::write(&key, key_pem).expect("write");
    let pair = CertKeyPair::from_pem_files(&cert, &key).expect("loads");
    assert_eq!(pair.certificates().len(), 2, "the chain is kept");
    let acceptor = TlsConfig::new(pair).build_for_test().expect("builds");
    let mut server = Server::start(acceptor).await;
    let mut client = connect(server.addr, client_config(ca, &[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&client), leaf.cert_der);
    assert_eq!(
        client.get_ref().1.peer_certificates().map(<[_]>::len),
        Some(2),
        "the whole chain is sent"
    );
    exchange(&mut client, b"key format").await.expect("echo");
    server.next().await.expect("server side");
}

#[tokio::test]
async fn pkcs8_pkcs1_and_sec1_keys_all_load_and_serve() {
    let ca = Ca::new("key formats CA");

    // PKCS#8: ECDSA P-256 and Ed25519 ...
    let ec_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("EC key");
    let ec_pkcs8 = ec_key.serialize_der();
    let ec = ca.leaf_with(&["localhost"], ec_key, None);
    assert!(ec.key_pem.contains("BEGIN PRIVATE KEY"));
    serves(&ca, &ec, &ec.key_pem).await;
    let ed = ca.leaf_with(
        &["localhost"],
        KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("Ed25519 key"),
        None,
    );
    serves(&ca, &ed, &ed.key_pem).await;

    // ... SEC1 (`BEGIN EC PRIVATE KEY`) ...
    let sec1 = pem("EC PRIVATE KEY", sec1_from_pkcs8(&ec_pkcs8));
    serves(&ca, &ec, &sec1).await;

    // ... and PKCS#1 (`BEGIN RSA PRIVATE KEY`), plus the same RSA key as PKCS#8.
    let rsa_key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let (pkcs1, _) = pkcs8_inner(&rsa_key.serialize_der());
    let rsa = ca.leaf_with(&["localhost"], rsa_key, None);
    serves(&ca, &rsa, &pem("RSA PRIVATE KEY", pkcs1)).await;
    serves(&ca, &rsa, &rsa.key_pem).await;
}

#[test]
fn a_combined_pem_file_holds_both() {
    let ca = Ca::new("combined CA");
    let dir = TempDir::new("combined");
    let both = dir.path("tls.pem");
    let leaf = ca.leaf(&["localhost"]);
    std::fs::write(&both, format!("{}{}", leaf.key_pem, leaf.cert_pem)).expect("write");
    let pair = CertKeyPair::from_pem_files(&both, &both).expect("loads");
    assert_eq!(pair.files(), Some((both.as_path(), both.as_path())));
    assert!(
        !format!("{pair:?}").contains("PRIVATE"),
        "Debug never shows the key"
    );
    TlsConfig::new(pair).build_for_test().expect("builds");
}

#[test]
fn invalid_and_repeated_server_names_are_refused() {
    let ca = Ca::new("names CA");
    let leaf = ca.leaf(&["localhost"]);
    let pair =
        CertKeyPair::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes()).expect("pair");
    for bad in ["not a name", "*.*.example.com", "", "10.0.0.1"] {
        let error = TlsConfig::new(pair.clone())
            .sni(bad, pair.clone())
            .build_for_test()
            .expect_err("refused");
        assert_eq!(error.kind(), TlsErrorKind::InvalidServerName, "{bad:?}");
        assert!(error.to_string().contains(&format!("`{bad}`")), "{error}");
    }
    let error = TlsConfig::new(pair.clone())
        .sni("a.example.com", pair.clone())
        .sni("A.example.com.", pair.clone())
        .build_for_test()
        .expect_err("refused");
    assert_eq!(error.kind(), TlsErrorKind::DuplicateServerName);
}
