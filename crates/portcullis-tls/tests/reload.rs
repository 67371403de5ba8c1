//! Hot reload by file replacement, by a Kubernetes-style symlink swap and by API, while a
//! connection stays open; bad replacements keep the last good pair in service.

mod common;

use common::TestBuild;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Ca, MetricsProbe, Server, TempDir, client_config, connect, exchange, served_cert, wait_reload,
};
use portcullis_tls::metrics::{
    CERTIFICATE_EXPIRY_SECONDS, LABEL_CERTIFICATE, LABEL_OUTCOME, RELOADS_TOTAL,
};
use portcullis_tls::{TlsConfig, TlsErrorKind};
use rcgen::KeyPair;
use tokio_util::sync::CancellationToken;

/// A short interval keeps the test quick; the default's timing is checked in
/// `file_replacement_is_live_within_two_seconds`.
const FAST: Duration = Duration::from_millis(100);

#[tokio::test]
async fn file_replacement_is_live_within_two_seconds() {
    let ca = Ca::new("reload CA");
    let dir = TempDir::new("replace");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.leaf(&["localhost"]);
    first.write(&cert, &key);
    // The default watch interval: this is the "live within 2 s" contract.
    let (acceptor, probe) =
        MetricsProbe::build(TlsConfig::from_pem_files(&cert, &key).expect("pair")).expect("build");
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(acceptor.watch(stop.clone()));
    let mut server = Server::start(acceptor.clone()).await;

    let mut open = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&open), first.cert_der);
    exchange(&mut open, b"before").await.expect("echo");
    server.next().await.expect("server side");

    let second = ca.leaf(&["localhost"]);
    let replaced = Instant::now();
    second.replace(&cert, &key);
    let status = wait_reload(&acceptor, Duration::from_secs(10), |s| s.successes >= 1).await;
    let took = replaced.elapsed();
    assert!(took < Duration::from_secs(2), "live only after {took:?}");
    assert_eq!(status.failures, 0);

    // New handshakes get the new certificate; the open connection keeps working.
    let fresh = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&fresh), second.cert_der);
    server.next().await.expect("server side");
    exchange(&mut open, b"after")
        .await
        .expect("open connection still works");
    assert_eq!(
        acceptor.certificate_for(None),
        Some(second.cert_der.clone())
    );

    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "success"), 1);
    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "failure"), 0);
    let expiry = probe
        .value(CERTIFICATE_EXPIRY_SECONDS, LABEL_CERTIFICATE, "default")
        .expect("expiry gauge");
    assert!(
        expiry > 86_400.0 * 365.0,
        "rcgen certificates last for centuries: {expiry}"
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops when cancelled")
        .expect("watcher task");
}

/// Lays out a secret volume the way the kubelet does: `dir/..data -> ..<stamp>`,
/// `dir/tls.crt -> ..data/tls.crt`, `dir/tls.key -> ..data/tls.key`.
#[cfg(unix)]
fn k8s_publish(dir: &Path, stamp: &str, leaf: &common::Leaf) {
    use std::os::unix::fs::symlink;
    let versioned = dir.join(stamp);
    std::fs::create_dir(&versioned).expect("mkdir");
    leaf.write(&versioned.join("tls.crt"), &versioned.join("tls.key"));
    // The flip: a new symlink renamed over `..data`, atomically.
    let tmp = dir.join("..data_tmp");
    symlink(stamp, &tmp).expect("symlink");
    std::fs::rename(&tmp, dir.join("..data")).expect("flip ..data");
    for name in ["tls.crt", "tls.key"] {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).expect("symlink");
        }
    }
}

#[cfg(unix)]
#[tokio::test]
async fn kubernetes_symlink_swap_is_picked_up() {
    let ca = Ca::new("k8s CA");
    let dir = TempDir::new("k8s");
    let first = ca.leaf(&["localhost"]);
    k8s_publish(&dir.0, "..2026_01_01_00_00_00.000000001", &first);
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let acceptor = TlsConfig::from_pem_files(&cert, &key)
        .expect("pair")
        .watch_interval(FAST)
        .build_for_test()
        .expect("build");
    let stop = CancellationToken::new();
    tokio::spawn(acceptor.watch(stop.clone()));
    let mut server = Server::start(acceptor.clone()).await;

    let mut open = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&open), first.cert_der);
    server.next().await.expect("server side");

    let second = ca.leaf(&["localhost"]);
    k8s_publish(&dir.0, "..2026_02_01_00_00_00.000000002", &second);
    // The kubelet then removes the old version.
    std::fs::remove_dir_all(dir.path("..2026_01_01_00_00_00.000000001")).expect("cleanup");
    wait_reload(&acceptor, Duration::from_secs(10), |s| s.successes >= 1).await;

    let fresh = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&fresh), second.cert_der);
    server.next().await.expect("server side");
    exchange(&mut open, b"still here")
        .await
        .expect("open connection still works");
    stop.cancel();
}

#[tokio::test]
async fn a_garbage_replacement_keeps_the_old_certificate_and_counts_a_failure() {
    let ca = Ca::new("garbage CA");
    let dir = TempDir::new("garbage");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.leaf(&["localhost"]);
    first.write(&cert, &key);
    let (acceptor, probe) = MetricsProbe::build(
        TlsConfig::from_pem_files(&cert, &key)
            .expect("pair")
            .watch_interval(FAST),
    )
    .expect("build");
    let stop = CancellationToken::new();
    tokio::spawn(acceptor.watch(stop.clone()));
    let mut server = Server::start(acceptor.clone()).await;
    let mut open = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    server.next().await.expect("server side");

    std::fs::write(&cert, "this is not a certificate\n").expect("write garbage");
    let status = wait_reload(&acceptor, Duration::from_secs(10), |s| s.failures >= 1).await;
    assert_eq!(status.successes, 0);

    let fresh = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("the old pair still serves");
    assert_eq!(served_cert(&fresh), first.cert_der);
    server.next().await.expect("server side");
    exchange(&mut open, b"unaffected").await.expect("echo");
    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "failure"), 1);
    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "success"), 0);

    // A good pair afterwards is taken.
    let second = ca.leaf(&["localhost"]);
    second.replace(&cert, &key);
    wait_reload(&acceptor, Duration::from_secs(10), |s| s.successes >= 1).await;
    assert_eq!(
        acceptor.certificate_for(None),
        Some(second.cert_der.clone())
    );
    // The garbage was tried once, not on every poll.
    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "failure"), 1);
    stop.cancel();
}

#[tokio::test]
async fn api_reload_validates_before_swapping() {
    let ca = Ca::new("api CA");
    let dir = TempDir::new("api");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.leaf(&["localhost"]);
    first.write(&cert, &key);
    let (acceptor, probe) =
        MetricsProbe::build(TlsConfig::from_pem_files(&cert, &key).expect("pair")).expect("build");

    // Half-written renewal: the new certificate, the old key.
    let second = ca.leaf(&["localhost"]);
    std::fs::write(&cert, &second.cert_pem).expect("write");
    let error = acceptor.reload().expect_err("mismatch refused");
    assert_eq!(error.kind(), TlsErrorKind::KeyMismatch, "{error}");
    assert_eq!(error.path(), Some(key.as_path()));
    assert_eq!(acceptor.certificate_for(None), Some(first.cert_der.clone()));

    // An expired certificate is refused too.
    let expired = ca.leaf_with(
        &["localhost"],
        KeyPair::generate().expect("key"),
        Some(((2000, 1, 1), (2001, 1, 1))),
    );
    expired.write(&cert, &key);
    let error = acceptor.reload().expect_err("expired refused");
    assert_eq!(error.kind(), TlsErrorKind::Expired, "{error}");
    assert_eq!(acceptor.certificate_for(None), Some(first.cert_der.clone()));

    // A missing file as well.
    std::fs::remove_file(&key).expect("remove");
    let error = acceptor.reload().expect_err("missing refused");
    assert_eq!(error.kind(), TlsErrorKind::NotFound, "{error}");

    // The complete pair goes in.
    second.write(&cert, &key);
    acceptor.reload().expect("reload");
    assert_eq!(
        acceptor.certificate_for(None),
        Some(second.cert_der.clone())
    );

    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "failure"), 3);
    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "success"), 1);
    let status = *acceptor.reload_status().borrow();
    assert_eq!((status.successes, status.failures), (1, 3));
}

#[tokio::test]
async fn in_memory_pairs_survive_a_reload_and_the_watcher_has_nothing_to_do() {
    let ca = Ca::new("memory CA");
    let leaf = ca.leaf(&["localhost"]);
    let acceptor = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .expect("pair")
        .watch_interval(FAST)
        .build_for_test()
        .expect("build");
    acceptor.reload().expect("nothing to reload");
    assert_eq!(acceptor.certificate_for(None), Some(leaf.cert_der.clone()));
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(acceptor.watch(stop.clone()));
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("watcher stops")
        .expect("watcher task");
    let error = TlsConfig::from_pem(leaf.cert_pem.as_bytes(), leaf.key_pem.as_bytes())
        .expect("pair")
        .watch_interval(Duration::ZERO)
        .build_for_test()
        .expect_err("zero interval refused");
    assert_eq!(error.kind(), TlsErrorKind::InvalidConfig);
}
