//! systemd `Type=notify`: READY=1 once listening, WATCHDOG=1 pings, STOPPING=1 at shutdown.

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use common::Hardened;

/// The next notification, waiting at most 10 s.
fn next(socket: &UnixDatagram) -> String {
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("a notification within 10 s");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn notifies_ready_watchdog_and_stopping() {
    let (dir, path, socket) = common::notify_socket("sd");
    let path_str = path.to_str().expect("utf8").to_owned();

    let server = Hardened::start_with_env(
        &["--listen", "127.0.0.1:0", "--acceptors", "1"],
        // A 200 ms watchdog: pings every 100 ms.
        &[("NOTIFY_SOCKET", &path_str), ("WATCHDOG_USEC", "200000")],
        1,
    )
    .await;
    let socket = tokio::task::spawn_blocking(move || {
        let (mut others, mut pings) = (Vec::new(), 0);
        while others.len() < 2 || pings < 2 {
            match next(&socket).as_str() {
                "WATCHDOG=1\n" => pings += 1,
                other => others.push(other.to_owned()),
            }
        }
        assert_eq!(
            others,
            ["READY=1\n", "STATUS=serving\n"],
            "ready, then serving"
        );
        socket
    })
    .await
    .expect("notifications");

    // A response in flight across the shutdown (its first chunk is here, the second comes
    // 1.5 s later): the drain reports it as open.
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /stream?n=2&ms=1500 HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .await
    .expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("chunk 0") {
        let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
            .await
            .expect("read");
        assert!(n > 0, "closed before the first chunk");
        seen.extend_from_slice(&buf[..n]);
    }

    server.signal("TERM");
    let messages = tokio::task::spawn_blocking(move || {
        // Everything but the watchdog pings, until the drain is reported done.
        let mut messages = Vec::new();
        loop {
            let message = next(&socket);
            if message == "WATCHDOG=1\n" {
                continue;
            }
            let done = message == "STATUS=drained\n";
            messages.push(message);
            if done {
                return messages;
            }
        }
    })
    .await
    .expect("notifications");
    assert!(
        messages.contains(&"STOPPING=1\n".to_owned()),
        "{messages:?}"
    );
    let statuses: Vec<&str> = messages
        .iter()
        .filter_map(|m| m.strip_prefix("STATUS="))
        .collect();
    // No drain delay by default, so no "still serving" phase; then the drain's progress
    // (the stream still open), then done.
    assert_eq!(
        statuses.first(),
        Some(&"draining connections\n"),
        "{messages:?}"
    );
    assert_eq!(statuses.last(), Some(&"drained\n"), "{messages:?}");
    let progress = &statuses[1..statuses.len() - 1];
    assert!(
        !progress.is_empty(),
        "progress during the drain: {messages:?}"
    );
    for (i, status) in progress.iter().enumerate() {
        assert!(status.starts_with("draining: "), "{status:?}");
        if i == 0 {
            assert!(
                status.starts_with("draining: 1 connection open, "),
                "the stream is open as the drain begins: {status:?}"
            );
        }
    }
    let mut rest = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut rest)
        .await
        .expect("read");
    assert!(
        String::from_utf8_lossy(&rest).contains("chunk 1"),
        "the stream finished"
    );
    assert_eq!(server.wait(Duration::from_secs(10)).await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
