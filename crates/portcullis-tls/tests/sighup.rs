//! Reload on SIGHUP, in a test binary of its own: signals reach the whole process.
#![cfg(unix)]

mod common;

use std::time::Duration;

use common::{
    Ca, MetricsProbe, Server, TempDir, client_config, connect, exchange, served_cert, wait_reload,
};
use portcullis_tls::TlsConfig;
use portcullis_tls::metrics::{LABEL_OUTCOME, RELOADS_TOTAL};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn sighup_reloads_while_a_connection_stays_open() {
    let ca = Ca::new("sighup CA");
    let dir = TempDir::new("sighup");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.leaf(&["localhost"]);
    first.write(&cert, &key);
    let (acceptor, probe) =
        MetricsProbe::build(TlsConfig::from_pem_files(&cert, &key).expect("pair")).expect("build");
    let stop = CancellationToken::new();
    // The handler is installed by this call, before any signal is sent.
    let on_hangup = acceptor
        .reload_on_sighup(stop.clone())
        .expect("SIGHUP handler");
    let task = tokio::spawn(on_hangup);
    let mut server = Server::start(acceptor.clone()).await;

    let mut open = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&open), first.cert_der);
    server.next().await.expect("server side");

    let second = ca.leaf(&["localhost"]);
    second.write(&cert, &key);
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    wait_reload(&acceptor, Duration::from_secs(10), |s| s.successes >= 1).await;

    let fresh = connect(server.addr, client_config(&ca, &[]), "localhost")
        .await
        .expect("handshake");
    assert_eq!(served_cert(&fresh), second.cert_der);
    server.next().await.expect("server side");
    exchange(&mut open, b"still open").await.expect("echo");
    assert_eq!(probe.counter(RELOADS_TOTAL, LABEL_OUTCOME, "success"), 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops when cancelled")
        .expect("task");
}
