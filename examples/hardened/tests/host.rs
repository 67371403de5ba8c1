//! RFC 9112 §3.2 against the running server: an HTTP/1.1 request without `Host`, with two, with
//! an invalid one, or with one that disagrees with an absolute-form target gets 400 and its
//! connection closed (each request below is keep-alive: the read ends only because the server
//! closes); HTTP/1.0 without `Host` is still served. Each refusal is counted by reason.

mod common;

use common::{Hardened, exchange, get};

fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

#[tokio::test]
async fn host_rules_of_rfc_9112_are_enforced_with_400_and_close() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"], 1).await;
    let addr = server.addr();
    let refused: [(&[u8], &str); 5] = [
        (b"GET / HTTP/1.1\r\n\r\n", "needs a Host"),
        (
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n",
            "more than one",
        ),
        (
            b"GET / HTTP/1.1\r\nHost: user@a.test\r\n\r\n",
            "invalid Host",
        ),
        (b"GET / HTTP/1.1\r\nHost: a.test:8o\r\n\r\n", "invalid Host"),
        (
            b"GET http://b.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
            "disagrees",
        ),
    ];
    for (request, says) in refused {
        // Keep-alive requests: `exchange` returns only once the server closes.
        let response = exchange(addr, request).await;
        assert_eq!(status(&response), 400, "{response}");
        assert!(response.contains(says), "{response}");
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
    }
    let served: [&[u8]; 3] = [
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: close\r\n\r\n",
    ];
    for request in served {
        let response = exchange(addr, request).await;
        assert_eq!(status(&response), 200, "{response}");
        assert!(response.ends_with("hello\n"), "{response}");
    }
    let scrape = get(server.admin(), "/metrics").await;
    for (reason, count) in [
        ("host_missing", 1),
        ("host_repeated", 1),
        ("host_invalid", 2),
        ("host_mismatch", 1),
    ] {
        let series = format!("portcullis_requests_rejected_total{{reason=\"{reason}\"}} {count}");
        assert!(scrape.contains(&series), "{series} in:\n{scrape}");
    }
}
