//! systemd socket activation: started with an inherited listening socket (LISTEN_FDS), the
//! server serves it instead of binding `--listen`.

mod common;

use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::Duration;

use common::{BIN, get};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn serves_an_inherited_socket() {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = socket.local_addr().expect("addr");
    // The shell moves the socket from stdin to descriptor 3 and sets LISTEN_PID to its own
    // pid, which `exec` hands to the server, as systemd does.
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg("exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec \"$0\" \"$@\"")
        .arg(BIN)
        // A --listen that must not be used: activation wins.
        .args(["--listen", "127.0.0.1:1", "--acceptors", "1"])
        .stdin(Stdio::from(OwnedFd::from(socket)))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("announces within 60 s")
        .expect("read")
        .expect("a line");
    assert_eq!(line, format!("listening on http://{addr}"));
    let response = get(addr, "/").await;
    assert!(response.ends_with("hello\n"), "{response}");
    child.start_kill().expect("kill");
}
