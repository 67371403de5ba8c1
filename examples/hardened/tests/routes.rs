//! The routes of the reference server, over HTTP/1.1 and h2c.

mod common;

use common::{Hardened, exchange, get};

#[tokio::test]
async fn routes_answer_as_documented() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--acceptors", "1"], 1).await;
    let addr = server.addr();

    let hello = get(addr, "/").await;
    assert!(
        hello.starts_with("HTTP/1.1 200 OK") && hello.ends_with("\r\n\r\nhello\n"),
        "{hello}"
    );

    let slow = get(addr, "/slow?ms=50").await;
    assert!(
        slow.starts_with("HTTP/1.1 200 OK") && slow.ends_with("ok\n"),
        "{slow}"
    );

    let missing = get(addr, "/no/such/route").await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");

    let stream = get(addr, "/stream?n=3&ms=10").await;
    assert!(stream.starts_with("HTTP/1.1 200 OK"), "{stream}");
    let body: Vec<&str> = stream.lines().filter(|l| l.starts_with("chunk ")).collect();
    assert_eq!(body, ["chunk 0", "chunk 1", "chunk 2"], "{stream}");

    let echo = exchange(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 5\r\n\r\nabcde",
    )
    .await;
    assert!(
        echo.starts_with("HTTP/1.1 200 OK") && echo.ends_with("\r\n\r\nabcde"),
        "{echo}"
    );
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_413() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--acceptors", "1"], 1).await;
    let addr = server.addr();

    // Declared too large: refused before a byte of body is read, on any route.
    for path in ["/echo", "/"] {
        let method = if path == "/echo" { "POST" } else { "GET" };
        let response = exchange(
            addr,
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 1048577\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 413"), "{path}: {response}");
    }

    // Chunked and growing past the limit, on the echo route and on one that ignores bodies.
    for path in ["/echo", "/"] {
        let method = if path == "/echo" { "POST" } else { "GET" };
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        .into_bytes();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..17 {
            request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            request.extend_from_slice(&chunk);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        let response = exchange(addr, &request).await;
        assert!(
            response.starts_with("HTTP/1.1 413"),
            "{path}: {}",
            &response[..response.len().min(200)]
        );
    }

    // Exactly at the limit is fine.
    let mut request = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        1024 * 1024
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b'y', 1024 * 1024));
    let response = exchange(addr, &request).await;
    assert!(
        response.starts_with("HTTP/1.1 200 OK"),
        "{}",
        &response[..response.len().min(200)]
    );
}

#[tokio::test]
async fn curl_speaks_h2c_with_prior_knowledge() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--acceptors", "1"], 1).await;
    let url = format!("http://{}/", server.addr());
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--http2-prior-knowledge",
            "--write-out",
            "%{http_version} %{http_code}",
            &url,
        ])
        .output()
        .await
        .expect("curl is installed (.ci/run installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello\n2 200");
}
