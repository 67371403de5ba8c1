//! Failures are counted by reason, from the closed set.

use super::*;

#[test]
fn failures_are_counted_by_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let proxy = ProxyProtocol::new([]);
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"\x16\x03\x01\x02\x00")
            .await
            .expect("write");
        proxy.read_header(server).await.expect_err("not proxy");

        for _ in 0..2 {
            let (_client, server) = tokio::io::duplex(1024);
            proxy.read_header(server).await.expect_err("timeout");
        }

        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 ::1").await.expect("write");
        proxy.read_header(server).await.expect_err("bad v1");

        let (client, server) = tokio::io::duplex(1024);
        drop(client);
        proxy.read_header(server).await.expect_err("eof");

        // Success is not counted.
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY UNKNOWN\r\n").await.expect("write");
        proxy.read_header(server).await.expect("header");
    });

    let mut counts = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        assert_eq!(key.key().name(), PROXY_HEADER_ERRORS_TOTAL);
        let labels: Vec<_> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let [(label, reason)] = &labels[..] else {
            panic!("expected one label, got {labels:?}");
        };
        assert_eq!(label, LABEL_REASON);
        assert!(PROXY_ERROR_REASONS.contains(&reason.as_str()), "{reason}");
        let DebugValue::Counter(n) = value else {
            panic!("{reason}: not a counter");
        };
        counts.insert(reason.clone(), n);
    }
    let expected: HashMap<String, u64> =
        [("not_proxy", 1), ("timeout", 2), ("bad_v1", 1), ("eof", 1)]
            .into_iter()
            .map(|(r, n)| (r.to_owned(), n))
            .collect();
    assert_eq!(counts, expected);
}

#[test]
fn reasons_are_listed_once() {
    let kinds = [
        ParseErrorKind::NotProxy,
        ParseErrorKind::BadV1,
        ParseErrorKind::BadV2,
        ParseErrorKind::TooLong,
        ParseErrorKind::Unsupported,
    ];
    let mut all: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
    all.extend(["timeout", "io", "eof"]);
    for reason in &all {
        assert!(
            PROXY_ERROR_REASONS.contains(reason),
            "{reason} is not listed"
        );
    }
    assert_eq!(all.len(), PROXY_ERROR_REASONS.len());
}

#[test]
fn describe_registers_unit_and_help() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        crate::metrics::describe();
        metrics::counter!(PROXY_HEADER_ERRORS_TOTAL, LABEL_REASON => "eof").increment(1);
    });
    let snapshot = snapshotter.snapshot().into_vec();
    assert_eq!(snapshot.len(), 1);
    for (key, unit, help, _) in snapshot {
        assert_eq!(unit, Some(Unit::Count), "{key:?}");
        assert!(help.is_some_and(|h| !h.is_empty()), "{key:?}");
    }
}
