//! Every close is counted by reason; accepted and active connections are visible.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use portcullis_listen::Listener;
use portcullis_server::metrics::{CONNECTIONS_ACTIVE, CONNECTIONS_CLOSED};
use portcullis_server::{HttpConfig, Server};
use portcullis_shutdown::metrics::{DRAIN_DURATION, SHUTDOWN_PHASE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn closes_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let listener = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind");
            let addr = listener.local_addr().as_inet().expect("inet");
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let service = tower::service_fn(
                |_request: http::Request<portcullis_server::RequestBody>| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                        Bytes::from_static(b"hi"),
                    )))
                },
            );
            let server = tokio::spawn(
                Server::builder()
                    .listener(listener)
                    .http(
                        HttpConfig::default()
                            .header_timeout(Duration::from_millis(200))
                            .idle_timeout(Duration::from_millis(200)),
                    )
                    .shutdown(async {
                        let _ = rx.await;
                    })
                    .serve(service),
            );

            // One silent connection (header timeout), one served then idle (idle timeout).
            let mut silent = TcpStream::connect(addr).await.expect("connect");
            let mut idle = TcpStream::connect(addr).await.expect("connect");
            idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                .await
                .expect("write");
            let mut buf = Vec::new();
            let mut chunk = [0u8; 256];
            while !buf.ends_with(b"hi") {
                let n = idle.read(&mut chunk).await.expect("read");
                assert!(n > 0);
                buf.extend_from_slice(&chunk[..n]);
            }
            for stream in [&mut silent, &mut idle] {
                let mut rest = Vec::new();
                tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
                    .await
                    .expect("closed by the server")
                    .ok();
            }
            let _ = tx.send(());
            server.await.expect("task").expect("serve");
        });
    });

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, label: Option<(&str, &str)>| -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| key.kind() == MetricKind::Counter && key.key().name() == name)
            .filter(|(key, ..)| {
                label
                    .is_none_or(|(k, v)| key.key().labels().any(|l| l.key() == k && l.value() == v))
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(
        counter(portcullis_listen::metrics::CONNECTIONS_ACCEPTED_TOTAL, None),
        2
    );
    assert_eq!(
        counter(CONNECTIONS_CLOSED, Some(("reason", "header_timeout"))),
        1
    );
    assert_eq!(
        counter(CONNECTIONS_CLOSED, Some(("reason", "idle_timeout"))),
        1
    );
    let active = snapshot
        .iter()
        .find(|(key, ..)| key.key().name() == CONNECTIONS_ACTIVE)
        .map(|(.., value)| match value {
            DebugValue::Gauge(v) => v.into_inner(),
            _ => f64::NAN,
        });
    assert_eq!(active, Some(0.0));

    // The shutdown went through to `done`: exactly that phase is 1.
    let gauge = |name: &str, label: Option<(&str, &str)>| -> Option<f64> {
        snapshot
            .iter()
            .filter(|(key, ..)| key.kind() == MetricKind::Gauge && key.key().name() == name)
            .find(|(key, ..)| {
                label
                    .is_none_or(|(k, v)| key.key().labels().any(|l| l.key() == k && l.value() == v))
            })
            .and_then(|(.., value)| match value {
                DebugValue::Gauge(v) => Some(v.into_inner()),
                _ => None,
            })
    };
    for (phase, expected) in [
        ("running", 0.0),
        ("delay", 0.0),
        ("drain", 0.0),
        ("forced", 0.0),
        ("done", 1.0),
    ] {
        assert_eq!(
            gauge(SHUTDOWN_PHASE, Some(("phase", phase))),
            Some(expected),
            "phase {phase}"
        );
    }
    let drained_in = gauge(DRAIN_DURATION, None).expect("drain duration recorded");
    assert!((0.0..10.0).contains(&drained_in), "{drained_in}");
}
