//! A load generator for connection churn, against loopback servers only.
//!
//! wrk keeps every connection open for the whole run, so it cannot measure what a server pays
//! per connection (accept, socket options, protocol detection, per-connection state). `churn`
//! runs C concurrent workers; each one loops: connect, send K sequential HTTP/1.1 `GET`
//! requests on that connection (the last one says `Connection: close`), read the server's
//! close, start again. K=1 is one request per connection; K=10 is short-lived keep-alive.
//!
//! ```text
//! churn --url http://127.0.0.1:8080/ --connections 64 --requests-per-conn 1 --duration 10
//! ```
//!
//! Flags: `--url` (required, `http://` and a loopback host only), `--connections C`
//! (default 64), `--requests-per-conn K` (default 1), `--duration SECS` (default 10, at most
//! 3600), `--max-requests N` (default: no cap besides the duration), `--threads T` (tokio worker
//! threads, default: the CPUs this process may run on), `--timeout SECS` (per connect and per
//! response, default 5).
//!
//! `--max-requests N` is exact across workers: before connecting, a worker takes up to K
//! requests from the shared budget, and the last request it sends on that connection says
//! `Connection: close`. A run that neither fails nor reaches its duration therefore sends exactly
//! N requests over exactly ceil(N/K) connections (the last one carries N mod K when K does not
//! divide N), and never opens a connection it does not use. A failed request still counts
//! against N; the requests a failed connection did not get to send go back to the budget.
//!
//! It prints one line:
//! `requests=N errors=E duration_s=D rps=R p50_ms=A p99_ms=B`. `requests` counts complete 2xx
//! responses; `errors` counts failed connects, I/O errors, timeouts, malformed and non-2xx
//! responses. Latency runs from writing the request to reading the last body byte; for the first
//! request on a connection it also includes the TCP connect, since paying for a new connection is
//! what this benchmark is about. Percentiles come from a log-linear histogram with under 0.2%
//! relative error.
//!
//! The exit status is 0 when at least one request succeeded, 1 when none did, 2 on bad flags.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const USAGE: &str = "usage: churn --url http://127.0.0.1:PORT/ [--connections C] \
[--requests-per-conn K] [--duration SECS] [--max-requests N] [--threads T] [--timeout SECS]";

/// Upper bound on `--duration`, so a typo cannot start an hour-long run by accident.
const MAX_DURATION_SECS: u64 = 3600;
/// Upper bound on a response head, to stop a misbehaving server from growing the buffer forever.
const MAX_HEAD: usize = 64 * 1024;
/// Upper bound on a response body; the benchmark routes answer a few bytes.
const MAX_BODY: usize = 16 * 1024 * 1024;

#[derive(Debug)]
struct Config {
    addr: SocketAddr,
    host_header: String,
    path: String,
    connections: usize,
    per_conn: u64,
    duration: Duration,
    max_requests: u64,
    threads: usize,
    io_timeout: Duration,
}

fn main() -> ExitCode {
    let config = match parse_args() {
        Ok(c) => c,
        Err(msg) => {
            eprintln!("churn: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("churn: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = runtime.block_on(run(Arc::new(config)));
    // Workers that outlived the hard deadline are abandoned, not waited for.
    runtime.shutdown_background();
    println!("{report}");
    if report.requests > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn parse_args() -> Result<Config, String> {
    let mut url = None;
    let mut connections = 64usize;
    let mut per_conn = 1u64;
    let mut duration = 10u64;
    let mut max_requests = u64::MAX;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut io_timeout = 5u64;

    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(v) = args.next() else {
            return Err(format!("{flag} needs a value"));
        };
        let positive = |v: &str| -> Result<u64, String> {
            match v.parse::<u64>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(format!("bad {flag} {v:?}: want a positive integer")),
            }
        };
        match flag.as_str() {
            "--url" => url = Some(v),
            "--connections" => connections = positive(&v)?.try_into().unwrap_or(usize::MAX),
            "--requests-per-conn" => per_conn = positive(&v)?,
            "--duration" => duration = positive(&v)?,
            "--max-requests" => max_requests = positive(&v)?,
            "--threads" => threads = positive(&v)?.try_into().unwrap_or(usize::MAX),
            "--timeout" => io_timeout = positive(&v)?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if duration > MAX_DURATION_SECS {
        return Err(format!("--duration {duration} is over {MAX_DURATION_SECS}"));
    }
    if connections > 100_000 || threads > 1024 {
        return Err("--connections is capped at 100000 and --threads at 1024".into());
    }
    let url = url.ok_or("--url is required")?;
    let (addr, host_header, path) = parse_url(&url)?;
    Ok(Config {
        addr,
        host_header,
        path,
        connections,
        per_conn,
        duration: Duration::from_secs(duration),
        max_requests,
        threads,
        io_timeout: Duration::from_secs(io_timeout),
    })
}

/// Splits `http://HOST[:PORT][/PATH]` and checks that HOST is a loopback address.
fn parse_url(url: &str) -> Result<(SocketAddr, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("{url:?}: bad host"));
    }
    if path
        .bytes()
        .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("{url:?}: bad path"));
    }
    // With a port: "host:port" or "[v6]:port"; without one, add 80.
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let with_port = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: cannot resolve {authority:?}: {e}"))?
        .collect();
    let addr = *addrs
        .first()
        .ok_or_else(|| format!("{url:?}: {authority:?} has no address"))?;
    if let Some(bad) = addrs.iter().find(|a| !is_loopback(a.ip())) {
        return Err(format!(
            "{url:?}: {} is not a loopback address; churn only targets this machine",
            bad.ip()
        ));
    }
    Ok((addr, authority.to_owned(), path.to_owned()))
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[derive(Debug)]
struct Report {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64();
        let rps = if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        };
        write!(
            f,
            "requests={} errors={} duration_s={:.3} rps={:.1} p50_ms={:.3} p99_ms={:.3}",
            self.requests,
            self.errors,
            secs,
            rps,
            self.hist.percentile_us(0.50) as f64 / 1000.0,
            self.hist.percentile_us(0.99) as f64 / 1000.0,
        )
    }
}

async fn run(config: Arc<Config>) -> Report {
    let start = Instant::now();
    let deadline = start + config.duration;
    // Workers stop at `deadline` between requests; a request in flight gets `io_timeout` more,
    // then its worker is abandoned.
    let hard_deadline = deadline + config.io_timeout + Duration::from_secs(1);
    // Requests not yet handed out; `u64::MAX` (no --max-requests) never runs out in practice.
    let budget = Arc::new(AtomicU64::new(config.max_requests));

    let workers: Vec<_> = (0..config.connections)
        .map(|_| tokio::spawn(worker(Arc::clone(&config), Arc::clone(&budget), deadline)))
        .collect();

    let mut report = Report {
        requests: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        hist: Histogram::new(),
    };
    for handle in workers {
        match tokio::time::timeout_at(hard_deadline.into(), handle).await {
            Ok(Ok(stats)) => {
                report.requests += stats.ok;
                report.errors += stats.errors;
                report.hist.merge(&stats.hist);
            }
            // A worker that panicked or overran the hard deadline counts as one error.
            Ok(Err(_)) | Err(_) => report.errors += 1,
        }
    }
    report.elapsed = start.elapsed();
    report
}

#[derive(Debug)]
struct WorkerStats {
    ok: u64,
    errors: u64,
    hist: Histogram,
}

/// Takes up to `want` requests from `budget`; returns how many it got (0 once it is empty).
fn claim(budget: &AtomicU64, want: u64) -> u64 {
    match budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
        (left > 0).then(|| left - left.min(want))
    }) {
        Ok(left) => left.min(want),
        Err(_) => 0,
    }
}

async fn worker(config: Arc<Config>, budget: Arc<AtomicU64>, deadline: Instant) -> WorkerStats {
    let mut stats = WorkerStats {
        ok: 0,
        errors: 0,
        hist: Histogram::new(),
    };
    let plain = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-churn\r\n\r\n",
        config.path, config.host_header
    );
    let last = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portcullis-churn\r\nConnection: close\r\n\r\n",
        config.path, config.host_header
    );
    let mut buf = Vec::with_capacity(4096);
    'connections: while Instant::now() < deadline {
        // This connection's share of the budget: K requests, or what is left of the budget.
        let share = claim(&budget, config.per_conn);
        if share == 0 {
            break;
        }
        let connect_start = Instant::now();
        let mut stream = match timeout(config.io_timeout, TcpStream::connect(config.addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(_)) | Err(_) => {
                stats.errors += 1;
                budget.fetch_add(share, Ordering::Relaxed);
                // Do not spin on a refused connect; the server may be overloaded or gone.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        buf.clear();
        for i in 0..share {
            if Instant::now() >= deadline {
                budget.fetch_add(share - i, Ordering::Relaxed);
                break 'connections;
            }
            let is_last = i + 1 == share;
            let started = if i == 0 {
                connect_start
            } else {
                Instant::now()
            };
            let request = if is_last { &last } else { &plain };
            let result = timeout(config.io_timeout, async {
                stream.write_all(request.as_bytes()).await?;
                read_response(&mut stream, &mut buf).await
            })
            .await;
            match result {
                Ok(Ok(status)) if (200..300).contains(&status) => {
                    stats.ok += 1;
                    stats.hist.record(started.elapsed());
                }
                // A non-2xx answer still leaves the connection in sync.
                Ok(Ok(_)) => stats.errors += 1,
                Ok(Err(_)) | Err(_) => {
                    stats.errors += 1;
                    // The failed request counts; the ones after it were never sent.
                    budget.fetch_add(share - i - 1, Ordering::Relaxed);
                    continue 'connections;
                }
            }
        }
        // Wait for the server to close first: the TIME_WAIT then stays on the server side and
        // this side's ephemeral ports are not used up.
        let mut scratch = [0u8; 512];
        let _ = timeout(config.io_timeout, async {
            while stream.read(&mut scratch).await.is_ok_and(|n| n > 0) {}
        })
        .await;
    }
    stats
}

/// Reads one HTTP/1.1 response (head plus a `Content-Length` or chunked body) from `stream`,
/// using `buf` for bytes read past its end. Returns the status code.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<u16> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("response head too large"));
        }
        fill(stream, buf).await?;
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| invalid("non-UTF-8 head"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| {
            l.strip_prefix("HTTP/1.1 ")
                .or_else(|| l.strip_prefix("HTTP/1.0 "))
        })
        .and_then(|l| l.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(value.parse::<usize>().map_err(|_| invalid("bad length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    buf.drain(..head_end);
    if chunked {
        read_chunked(stream, buf).await?;
    } else if let Some(len) = content_length {
        if len > MAX_BODY {
            return Err(invalid("body too large"));
        }
        while buf.len() < len {
            fill(stream, buf).await?;
        }
        buf.drain(..len);
    } else if !(status == 204 || status == 304 || (100..200).contains(&status)) {
        // A body delimited by the close would end the keep-alive sequence; not supported.
        return Err(invalid("response without Content-Length"));
    }
    Ok(status)
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut total = 0usize;
    loop {
        let line_end = loop {
            if let Some(i) = find(buf, b"\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return Err(invalid("chunk size line too long"));
            }
            fill(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[..line_end]).map_err(|_| invalid("bad chunk"))?;
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| invalid("bad chunk size"))?;
        total = total.saturating_add(size);
        if total > MAX_BODY {
            return Err(invalid("body too large"));
        }
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, if any, end with an empty line.
            loop {
                if let Some(i) = find(buf, b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return Ok(());
                    }
                    continue;
                }
                if buf.len() > MAX_HEAD {
                    return Err(invalid("trailers too large"));
                }
                fill(stream, buf).await?;
            }
        }
        while buf.len() < size + 2 {
            fill(stream, buf).await?;
        }
        buf.drain(..size + 2);
    }
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut chunk = [0u8; 4096];
    let n = stream.read(&mut chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(msg: &'static str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

/// Latency histogram in microseconds: exact below 1024 µs, then 512 buckets per power of two
/// (relative error under 0.2%). Fixed size, so memory does not grow with the request count.
#[derive(Debug, Clone)]
struct Histogram {
    counts: Vec<u64>,
}

impl Histogram {
    const LINEAR: usize = 1024;
    const PER_OCTAVE: usize = 512;
    // Octaves 2^10 .. 2^40 µs (about 12 days); anything longer lands in the last bucket.
    const OCTAVES: usize = 31;

    fn new() -> Self {
        Self {
            counts: vec![0; Self::LINEAR + Self::OCTAVES * Self::PER_OCTAVE],
        }
    }

    fn index(us: u64) -> usize {
        if us < Self::LINEAR as u64 {
            return us as usize;
        }
        let log2 = 63 - us.leading_zeros() as usize; // >= 10
        let shift = log2 - 9;
        let mantissa = (us >> shift) as usize - Self::PER_OCTAVE; // 0..512
        let i = Self::LINEAR + (shift - 1) * Self::PER_OCTAVE + mantissa;
        i.min(Self::LINEAR + Self::OCTAVES * Self::PER_OCTAVE - 1)
    }

    /// The middle of bucket `i`, in microseconds.
    fn value(i: usize) -> u64 {
        if i < Self::LINEAR {
            return i as u64;
        }
        let k = i - Self::LINEAR;
        let shift = k / Self::PER_OCTAVE + 1;
        let mantissa = (k % Self::PER_OCTAVE + Self::PER_OCTAVE) as u64;
        (mantissa << shift) + (1u64 << shift) / 2
    }

    fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.counts[Self::index(us)] += 1;
    }

    fn merge(&mut self, other: &Self) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
    }

    fn percentile_us(&self, p: f64) -> u64 {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i);
            }
        }
        Self::value(self.counts.len() - 1)
    }
}
