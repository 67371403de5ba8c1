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
    let dir = std::env::temp_dir().join(format!("keel-sd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
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
    assert_eq!(
        statuses,
        // No drain delay by default, so no "still serving" phase.
        ["draining connections\n", "drained\n"],
        "{messages:?}"
    );
    assert_eq!(server.wait(Duration::from_secs(10)).await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
