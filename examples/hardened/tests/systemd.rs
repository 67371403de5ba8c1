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
        assert_eq!(next(&socket), "READY=1\n", "READY=1 comes first");
        assert_eq!(next(&socket), "WATCHDOG=1\n");
        assert_eq!(next(&socket), "WATCHDOG=1\n", "the watchdog keeps pinging");
        socket
    })
    .await
    .expect("notifications");

    server.signal("TERM");
    let stopping = tokio::task::spawn_blocking(move || {
        // Watchdog pings may still come in between.
        loop {
            let message = next(&socket);
            if message != "WATCHDOG=1\n" {
                return message;
            }
        }
    })
    .await
    .expect("notifications");
    assert_eq!(stopping, "STOPPING=1\n");
    assert_eq!(server.wait(Duration::from_secs(10)).await, 0);
    let _ = std::fs::remove_dir_all(&dir);
}
