//! The README's server over plain HTTP: its routes answer, JSON comes back from the path
//! parameter route, the rate limit answers 429 past its burst, and the metrics label requests
//! by route template (`/users/{id}`), never by the raw path. A real child process.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;

/// `GET path` on a new connection; the whole raw answer.
async fn get(addr: &str, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("an answer within 10 s")
    .expect("read");
    response
}

#[tokio::test]
async fn routes_json_rate_limit_and_route_templates_in_the_metrics() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_axum-example"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the example");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    let mut addrs = Vec::new();
    for prefix in ["listening on http://", "admin on http://"] {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), stdout.read_line(&mut line))
            .await
            .expect("a line within 30 s")
            .expect("read");
        let addr = line.trim().strip_prefix(prefix).map(str::to_owned);
        addrs.push(addr.unwrap_or_else(|| panic!("not a `{prefix}` line: {line:?}")));
    }
    let (app, admin) = (&addrs[0], &addrs[1]);

    assert!(get(app, "/").await.ends_with("hello\n"));
    for id in [7, 8, 9] {
        let answer = get(app, &format!("/users/{id}")).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            answer.contains(&format!("\"id\":{id},\"name\":\"user {id}\"")),
            "{answer}"
        );
    }
    // The burst is 20: the 21st request in a row from this client is refused.
    let mut refused = None;
    for _ in 0..40 {
        let answer = get(app, "/").await;
        if answer.starts_with("HTTP/1.1 429") {
            refused = Some(answer);
            break;
        }
    }
    let refused = refused.expect("a 429 within 40 requests past a burst of 20");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after:"),
        "{refused}"
    );

    let scrape = get(admin, "/metrics").await;
    let series: Vec<&str> = scrape
        .lines()
        .filter(|l| l.starts_with("http_server_request_duration_seconds_count"))
        .collect();
    assert!(
        series
            .iter()
            .any(|l| l.contains("http_route=\"/users/{id}\"") && l.ends_with(" 3")),
        "three requests under the template /users/{{id}}: {series:#?}"
    );
    assert!(
        !scrape.contains("/users/7"),
        "a raw path became a label:\n{scrape}"
    );
    assert!(
        series
            .iter()
            .any(|l| l.contains("http_response_status_code=\"429\"")),
        "the 429 counted: {series:#?}"
    );

    let pid = child.id().expect("running").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exit within 15 s")
        .expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
}
