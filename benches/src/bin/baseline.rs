//! The benchmark baseline: a bare hyper 1 server with no portcullis code.
//!
//! This is what a user would hand-write with hyper and hyper-util and nothing else: a
//! multi-thread tokio runtime, one accept loop, `tokio::spawn` per connection, `TCP_NODELAY`
//! on, and hyper-util's `auto` builder serving HTTP/1.1 and cleartext HTTP/2 (h2c, prior
//! knowledge) on the same port. No timeouts, no limits, no graceful drain: `benches/load.sh`
//! compares the hardened stack against it to price what portcullis adds.
//!
//! Routes: `GET /` answers 200 `hello\n` (`text/plain`); everything else answers 404.
//!
//! ```text
//! cargo run --release -p portcullis-benches --bin baseline -- --listen 127.0.0.1:0 --workers 1
//! curl -i http://127.0.0.1:PORT/
//! curl -i --http2-prior-knowledge http://127.0.0.1:PORT/
//! ```
//!
//! Flags: `--listen ADDR` (default `127.0.0.1:8080`, port 0 picks a free port) and
//! `--workers N` (tokio worker threads, default: the number of CPUs this process may run on).
//! Once accepting it prints `listening on http://IP:PORT` with the real port. SIGTERM or
//! SIGINT ends the process at once.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

const USAGE: &str = "usage: baseline [--listen ADDR] [--workers N]";

fn main() -> ExitCode {
    let (listen, workers) = match parse_args() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("baseline: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(listen)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("baseline: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> Result<(SocketAddr, usize), String> {
    let mut listen: SocketAddr = ([127, 0, 0, 1], 8080).into();
    let mut workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("bad --listen {v:?}: {e}"))?;
            }
            "--workers" => {
                let v = value()?;
                workers = match v.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err(format!("bad --workers {v:?}: want a positive integer")),
                };
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((listen, workers))
}

async fn serve(listen: SocketAddr) -> Result<(), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address of {listen}: {e}"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;

    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{local}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    drop(stdout);

    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                // EMFILE, ECONNABORTED and friends: skip this one, keep accepting.
                Err(_) => continue,
            },
            _ = sigterm.recv() => return Ok(()),
            _ = sigint.recv() => return Ok(()),
        };
        // Without NODELAY, Nagle delays small responses on a keep-alive connection.
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        tokio::spawn(async move {
            // A connection error (peer reset, bad request) only ends that connection.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(hello))
                .await;
        });
    }
}

async fn hello(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = if req.method() == Method::GET && req.uri().path() == "/" {
        (StatusCode::OK, Bytes::from_static(b"hello\n"))
    } else {
        (StatusCode::NOT_FOUND, Bytes::new())
    };
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    Ok(res)
}
