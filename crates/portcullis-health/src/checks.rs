//! Ready-made probes: [`tcp`] (the connection is accepted) and [`http_get`] (a 2xx answer).

use std::borrow::Cow;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Check;

/// A check that succeeds when a TCP connection to `addr` (`HOST:PORT`, resolved on each run)
/// is accepted; the connection is closed at once.
#[must_use]
pub fn tcp(name: impl Into<Cow<'static, str>>, addr: impl Into<String>) -> Check {
    let addr: String = addr.into();
    Check::new(name, move || {
        let addr = addr.clone();
        async move {
            TcpStream::connect(&addr)
                .await
                .map(drop)
                .map_err(|error| format!("connect to {addr}: {error}"))
        }
    })
}

/// A check that succeeds when `GET http://HOST:PORT/PATH` answers 2xx (plain HTTP/1.1, one
/// request per run, `Connection: close`; only the status line is read).
///
/// # Errors
///
/// The URL when it is not `http://HOST:PORT[/PATH]`.
pub fn http_get(name: impl Into<Cow<'static, str>>, url: &str) -> Result<Check, String> {
    let target = HttpTarget::parse(url)?;
    Ok(Check::new(name, move || {
        let target = target.clone();
        async move { target.get().await }
    }))
}

/// A check of a URL of `--ready-requires`: `tcp://HOST:PORT` or `http://HOST:PORT/PATH`,
/// named by the URL's host and port.
///
/// # Errors
///
/// The URL when it is neither.
pub fn from_url(url: &str) -> Result<Check, String> {
    let name = url.to_owned();
    if let Some(addr) = url.strip_prefix("tcp://") {
        let addr = addr.trim_end_matches('/');
        host_port(addr).map_err(|why| format!("invalid check URL {url:?}: {why}"))?;
        return Ok(tcp(name, addr));
    }
    if url.starts_with("http://") {
        return http_get(name, url);
    }
    Err(format!(
        "invalid check URL {url:?}: expected tcp://HOST:PORT or http://HOST:PORT/PATH"
    ))
}

/// Checks `HOST:PORT` has both parts and a numeric port.
fn host_port(addr: &str) -> Result<(), &'static str> {
    let (host, port) = addr.rsplit_once(':').ok_or("no :PORT")?;
    if host.is_empty() {
        return Err("no host");
    }
    port.parse::<u16>()
        .map(drop)
        .map_err(|_| "the port is not a number below 65536")
}

#[derive(Clone, Debug)]
struct HttpTarget {
    url: String,
    addr: String,
    host: String,
    path: String,
}

impl HttpTarget {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("invalid check URL {url:?}: expected http://HOST:PORT/PATH"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        host_port(authority).map_err(|why| format!("invalid check URL {url:?}: {why}"))?;
        if path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(format!(
                "invalid check URL {url:?}: the path has spaces or control characters"
            ));
        }
        Ok(Self {
            url: url.to_owned(),
            addr: authority.to_owned(),
            host: authority.to_owned(),
            path: path.to_owned(),
        })
    }

    async fn get(&self) -> Result<(), String> {
        let mut stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|error| format!("connect to {}: {error}", self.addr))?;
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-health\r\nConnection: close\r\n\r\n",
            self.path, self.host
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|error| format!("GET {}: {error}", self.url))?;
        // The status line fits in the first 512 bytes of any sane answer.
        let mut head = [0u8; 512];
        let mut read = 0;
        while read < head.len() && !head[..read].contains(&b'\n') {
            let n = stream
                .read(&mut head[read..])
                .await
                .map_err(|error| format!("GET {}: {error}", self.url))?;
            if n == 0 {
                break;
            }
            read += n;
        }
        match status(&head[..read]) {
            Some(code) if (200..300).contains(&code) => Ok(()),
            Some(code) => Err(format!("GET {} answered {code}", self.url)),
            None => Err(format!("GET {}: not an HTTP answer", self.url)),
        }
    }
}

/// The status code of an HTTP/1.x status line at the start of `head`.
pub(crate) fn status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let rest = line.strip_prefix(b"HTTP/1.")?;
    let code = rest.get(2..5)?;
    if rest.get(1) != Some(&b' ') || !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}
