//! The example as a user runs it: a child process on port 0, plain HTTP/1.1 over TCP. `GET /`
//! answers, the rate limit answers 429 past the burst, and SIGTERM drains: a request in
//! flight when the signal comes is answered, then the process exits 0.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The bound on every wait: start-up, one request, the exit.
const BOUND: Duration = Duration::from_secs(30);
/// Requests one client may make at once; none comes back within the test.
const BURST: usize = 4;

/// `GET path` on `port` on a connection of its own: the status and the whole answer.
async fn get(port: u16, path: &str) -> (u16, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("request");
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.expect("answer");
        String::from_utf8(bytes).expect("text")
    };
    let text = tokio::time::timeout(BOUND, exchange)
        .await
        .expect("an answer within the bound");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, text)
}

/// Requests in progress, from the admin listener's `/metrics`.
async fn active_requests(admin: u16) -> f64 {
    let (status, scrape) = get(admin, "/metrics").await;
    assert_eq!(status, 200, "{scrape}");
    scrape
        .lines()
        .filter(|line| line.starts_with("http_server_active_requests"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn start() -> (Child, u16, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_compose-by-hand"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--rate", &format!("1/h burst {BURST}")])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the example");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut port = async |prefix: &str| -> u16 {
        let mut line = String::new();
        tokio::time::timeout(BOUND, stdout.read_line(&mut line))
            .await
            .expect("a line within the bound")
            .expect("read");
        line.trim()
            .strip_prefix(prefix)
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("not a `{prefix}PORT` line: {line:?}"))
    };
    let listen = port("listening on http://127.0.0.1:").await;
    let admin = port("admin on http://127.0.0.1:").await;
    (child, listen, admin)
}

#[tokio::test]
async fn answers_limits_and_drains_on_sigterm() {
    let (mut child, port, admin) = start().await;

    for _ in 1..BURST {
        let (status, answer) = get(port, "/").await;
        assert_eq!(status, 200, "{answer}");
        assert!(answer.ends_with("\r\n\r\nhello\n"), "{answer}");
    }
    // The last request of the burst is in flight when the signal comes.
    let in_flight = tokio::spawn(get(port, "/slow?ms=1500"));
    let deadline = Instant::now() + BOUND;
    while active_requests(admin).await < 1.0 {
        assert!(Instant::now() < deadline, "/slow never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, answer) = get(port, "/").await;
    assert_eq!(status, 429, "past the burst: {answer}");
    assert!(
        answer.to_ascii_lowercase().contains("\r\nretry-after: "),
        "{answer}"
    );

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let (status, answer) = in_flight.await.expect("the request task");
    assert_eq!(status, 200, "the request in flight is answered: {answer}");
    assert!(answer.ends_with("\r\n\r\nok\n"), "{answer}");
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .expect("exit within the bound")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "a clean drain: {status:?}");
}
