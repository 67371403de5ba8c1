//! An acceptor watches its own certificate files: built inside a tokio runtime, it serves a
//! replaced pair with no task spawned by its user, its watcher ends with its last clone, and
//! `watch` takes the watching over.

mod common;

use std::time::Duration;

use common::{Ca, TempDir, TestBuild, wait_reload};
use portcullis_tls::TlsConfig;
use tokio_util::sync::CancellationToken;

const FAST: Duration = Duration::from_millis(100);

/// Tasks alive on this runtime.
fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Waits, within 10 s, until `alive()` is `count`.
async fn until_alive(count: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while alive() != count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} tasks alive, expected {count}",
            alive()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_replaced_certificate_is_served_with_no_task_spawned_by_the_user() {
    let ca = Ca::new("auto-watch CA");
    let dir = TempDir::new("auto-watch");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    let first = ca.leaf(&["localhost"]);
    first.write(&cert, &key);
    assert_eq!(alive(), 0);
    let acceptor = TlsConfig::from_pem_files(&cert, &key)
        .expect("pair")
        .watch_interval(FAST)
        .build_for_test()
        .expect("build");
    assert_eq!(acceptor.certificate_for(None), Some(first.cert_der.clone()));
    // Built inside the runtime: its watcher started with it.
    assert_eq!(alive(), 1, "the acceptor's own watcher");

    let second = ca.leaf(&["localhost"]);
    second.replace(&cert, &key);
    let status = wait_reload(&acceptor, Duration::from_secs(10), |s| s.successes >= 1).await;
    assert_eq!(status.failures, 0);
    assert_eq!(
        acceptor.certificate_for(None),
        Some(second.cert_der.clone())
    );

    // The watcher holds no clone between polls: it ends with the acceptor.
    drop(acceptor);
    until_alive(0).await;
}

#[tokio::test]
async fn watch_takes_the_watching_over_and_the_automatic_watcher_ends() {
    let ca = Ca::new("take-over CA");
    let dir = TempDir::new("take-over");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    ca.leaf(&["localhost"]).write(&cert, &key);
    let acceptor = TlsConfig::from_pem_files(&cert, &key)
        .expect("pair")
        .watch_interval(FAST)
        .build_for_test()
        .expect("build");
    assert_eq!(alive(), 1, "the acceptor's own watcher");
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(acceptor.watch(stop.clone()));
    // The automatic watcher sees the switch at its next tick and returns: one left, ours.
    until_alive(1).await;

    let second = ca.leaf(&["localhost"]);
    second.replace(&cert, &key);
    let status = wait_reload(&acceptor, Duration::from_secs(10), |s| s.successes >= 1).await;
    assert_eq!((status.successes, status.failures), (1, 0));
    assert_eq!(acceptor.certificate_for(None), Some(second.cert_der));

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("the watcher ends when stopped")
        .expect("watcher task");
    assert_eq!(alive(), 0);
}

#[test]
fn an_acceptor_built_outside_a_runtime_starts_watching_at_its_first_handshake() {
    let ca = Ca::new("late CA");
    let dir = TempDir::new("late");
    let (cert, key) = (dir.path("tls.crt"), dir.path("tls.key"));
    ca.leaf(&["localhost"]).write(&cert, &key);
    let acceptor = TlsConfig::from_pem_files(&cert, &key)
        .expect("pair")
        .watch_interval(FAST)
        .build_for_test()
        .expect("build");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        assert_eq!(alive(), 0, "no runtime at build: no watcher yet");
        // A handshake that fails at once (the client hangs up) is still the first use.
        let (server, client) = tokio::io::duplex(64);
        drop(client);
        assert!(acceptor.accept(server).await.is_err());
        assert_eq!(alive(), 1, "the first handshake started the watcher");
        let second = ca.leaf(&["localhost"]);
        second.replace(&cert, &key);
        wait_reload(&acceptor, Duration::from_secs(10), |s| s.successes >= 1).await;
        assert_eq!(acceptor.certificate_for(None), Some(second.cert_der));
    });
}
