//! The example as a user runs it: a child process on port 0, plain HTTP/1.1 over TCP. The
//! order of its layers shows in the answers: 401 without the token and 200 with it, 429 once
//! the burst is spent (401s spend it too), `x-request-id` on every one of them, and the 401s
//! and 429s counted by status in the admin listener's `/metrics`.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The bound on every wait: start-up, one request, the exit.
const BOUND: Duration = Duration::from_secs(30);
/// Requests one client may make at once; none comes back within the test.
const BURST: usize = 4;

struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }
}

/// `GET path` on `port` with `extra` header lines, on a connection of its own.
async fn get(port: u16, path: &str, extra: &str) -> Answer {
    let exchange = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.expect("request");
        let mut bytes = Vec::new();
        tcp.read_to_end(&mut bytes).await.expect("answer");
        String::from_utf8(bytes).expect("text")
    };
    let text = tokio::time::timeout(BOUND, exchange)
        .await
        .expect("an answer within the bound");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    Answer {
        status,
        head: head.replace("\r\n", "\n"),
        body: body.to_owned(),
    }
}

/// The sum of `http_server_request_duration_seconds_count` over the series of `status`.
fn counted(scrape: &str, status: u16) -> u64 {
    let label = format!("http_response_status_code=\"{status}\"");
    scrape
        .lines()
        .filter(|line| line.starts_with("http_server_request_duration_seconds_count{"))
        .filter(|line| line.contains(&label))
        .map(|line| {
            line.rsplit(' ')
                .next()
                .and_then(|value| value.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("not a sample: {line}")) as u64
        })
        .sum()
}

/// Starts the example; returns it with its application and admin ports.
async fn start() -> (Child, u16, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_custom-middleware"))
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
async fn refused_answers_carry_the_request_id_and_are_counted_by_status() {
    let (mut child, port, admin) = start().await;
    let token = "Authorization: Bearer let-me-in\r\n";
    let mut answers = Vec::new();

    let anonymous = get(port, "/", "").await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.head);
    assert_eq!(anonymous.header("www-authenticate"), Some("Bearer"));
    let wrong = get(port, "/", "Authorization: Bearer let-me-out\r\n").await;
    assert_eq!(wrong.status, 401, "{}", wrong.head);
    let authorized = get(port, "/", token).await;
    assert_eq!(authorized.status, 200, "{}", authorized.head);
    let id = authorized.header("x-request-id").expect("an id");
    // The handler saw the same id the answer carries.
    assert_eq!(authorized.body, format!("hello, request {id}\n"));
    answers.extend([anonymous, wrong, authorized]);

    // The 401s spent quota too: the burst ends BURST requests in, whatever their answer.
    while answers.len() < BURST {
        let answer = get(port, "/", token).await;
        assert_eq!(answer.status, 200, "within the burst: {}", answer.head);
        answers.push(answer);
    }
    for _ in 0..2 {
        let limited = get(port, "/", token).await;
        assert_eq!(limited.status, 429, "past the burst: {}", limited.head);
        assert!(limited.header("retry-after").is_some(), "{}", limited.head);
        answers.push(limited);
    }
    let anonymous_limited = get(port, "/", "").await;
    assert_eq!(
        anonymous_limited.status, 429,
        "the rate limit is outside the auth check: {}",
        anonymous_limited.head
    );
    answers.push(anonymous_limited);

    // Every answer, 401 and 429 included, has an id of its own.
    let ids: HashSet<&str> = answers
        .iter()
        .map(|answer| {
            answer
                .header("x-request-id")
                .unwrap_or_else(|| panic!("no x-request-id on:\n{}", answer.head))
        })
        .collect();
    assert_eq!(ids.len(), answers.len(), "request ids repeat: {ids:?}");

    // The metrics layer is outside the rate limit and the auth check: it counted them all.
    let scrape = get(admin, "/metrics", "").await;
    assert_eq!(scrape.status, 200);
    let count = |status| answers.iter().filter(|a| a.status == status).count() as u64;
    for status in [200, 401, 429] {
        assert_eq!(
            counted(&scrape.body, status),
            count(status),
            "answers with status {status} in the scrape:\n{}",
            scrape.body
        );
    }

    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(BOUND, child.wait())
        .await
        .expect("exit within the bound")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "a clean drain: {status:?}");
}
