//! Exit latency after a graceful shutdown: how long the server process lives on after the
//! last in-flight response has reached the client.
//!
//! Each run starts the server (`hardened` by default) on 127.0.0.1 port 0, starts one
//! streaming request (`/stream?n=2&ms=300`, so it is provably in flight once the first chunk
//! arrived), sends SIGTERM, reads the response to its end, and measures from that moment
//! until the process has exited. Prints one line per run and then
//! `runs=N median_ms=… p90_ms=… max_ms=…`.
//!
//! ```text
//! cargo build --release -p hardened -p portcullis-benches
//! target/release/exit_latency [--runs 20] [--server target/release/hardened]
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    let mut runs = 20usize;
    let mut server = String::from("target/release/hardened");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).unwrap_or(runs),
            "--server" => server = args.next().unwrap_or(server),
            other => {
                eprintln!("exit_latency: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let mut latencies = Vec::with_capacity(runs);
    for run in 1..=runs {
        match once(&server) {
            Ok(latency) => {
                println!("run {run}: {:.2} ms", latency.as_secs_f64() * 1000.0);
                latencies.push(latency);
            }
            Err(error) => {
                eprintln!("exit_latency: run {run} failed: {error}");
                std::process::exit(1);
            }
        }
    }
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "runs={} median_ms={:.2} p90_ms={:.2} max_ms={:.2}",
        latencies.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(1.0))
    );
}

fn once(server: &str) -> Result<Duration, String> {
    let mut child = Command::new(server)
        .args(["--listen", "127.0.0.1:0", "--acceptors", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {server}: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| format!("reading the listening line: {e}"))?;
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .ok_or_else(|| format!("unexpected line {line:?}"))?
        .to_owned();
    let mut stream = TcpStream::connect(&addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /stream?n=2&ms=300 HTTP/1.1\r\nHost: bench\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("chunk 0") {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed before the first chunk".into());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .map_err(|e| e.to_string())?;
    if !status.success() {
        return Err("kill failed".into());
    }
    // Read the rest of the response; the server closes the connection after it (drain).
    loop {
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
    let last_byte = Instant::now();
    if !String::from_utf8_lossy(&seen).contains("chunk 1") {
        return Err("the in-flight response was cut short".into());
    }
    let deadline = last_byte + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let latency = last_byte.elapsed();
            if !status.success() {
                return Err(format!("exited with {status}"));
            }
            return Ok(latency);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err("still running 30 s after the last response".into());
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}
