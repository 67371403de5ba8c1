//! `Builder::on_drain_progress`: the open connections as the drain goes, then a last call
//! when it has ended.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Running, app};
use portcullis::server::DrainProgress;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};

#[tokio::test]
async fn progress_counts_the_open_connections_down_to_zero() {
    let entered = Arc::new(Notify::new());
    let (tx, mut progress) = mpsc::unbounded_channel::<DrainProgress>();
    let mut server = Running::start(
        |b| {
            b.drain_timeout(Duration::from_secs(20)).on_drain_progress(
                Duration::from_millis(50),
                move |p| {
                    let _ = tx.send(p);
                },
            )
        },
        app(Arc::clone(&entered)),
    );
    let addr = server.addr();
    let mut slow = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        entered.notified().await;
        slow.push(stream);
    }
    assert!(progress.try_recv().is_err(), "nothing before the drain");
    server.begin_shutdown();
    let first = tokio::time::timeout(Duration::from_secs(10), progress.recv())
        .await
        .expect("a report as the drain begins")
        .expect("report");
    assert_eq!(first.open, 3, "{first:?}");
    assert!(!first.finished);
    assert!(first.remaining <= Duration::from_secs(20));

    for mut stream in slow {
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.expect("read");
        assert!(response.starts_with(b"HTTP/1.1 200"));
    }
    let report = server.stop().await;
    assert!(report.is_clean(), "{report:?}");
    let mut last = first;
    while let Ok(next) = progress.try_recv() {
        assert!(
            next.open <= last.open,
            "only counts down: {last:?} then {next:?}"
        );
        last = next;
    }
    assert!(
        last.finished,
        "the last report says the drain ended: {last:?}"
    );
    assert_eq!(last.open, 0);
}
