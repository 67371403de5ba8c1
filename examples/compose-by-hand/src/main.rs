//! A server from portcullis' leaf crates alone, around your own hyper-util accept loop:
//! no portcullis-server. For people who want to own the loop; everyone else should let
//! `portcullis-server` do all of this (see `examples/axum`).
//!
//! ```text
//! cargo run -p compose-by-hand -- --listen 127.0.0.1:8080 --admin 127.0.0.1:9090
//! curl http://127.0.0.1:8080/                          # hello
//! curl http://127.0.0.1:8080/slow?ms=2000 & kill -TERM <pid>   # answered, then exit 0
//! for i in $(seq 30); do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/; done
//! #                                                    # 200s, then 429s (--rate, default 100/s burst 20)
//! curl http://127.0.0.1:9090/metrics                   # http_server_request_duration_seconds...
//! curl http://127.0.0.1:9090/readyz                    # ok; 503 once the shutdown begins
//! RUST_LOG=debug cargo run -p compose-by-hand          # more logs (default: warn)
//! ```
//!
//! Flags: `--listen ADDR` (default 127.0.0.1:8080; port 0 picks one), `--admin ADDR`,
//! `--rate QUOTA`, `--max-conns N` (default 10000), `--header-timeout SECS` (default 10),
//! `--drain-timeout SECS` (default 30), `--tls-cert PATH --tls-key PATH`. Once accepting it
//! prints `listening on http://IP:PORT` (`https://` with TLS), then `admin on http://IP:PORT`.
//!
//! What each crate gives, and where it is used below:
//!
//! - **portcullis-listen**: [`ListenerConfig::bind`] (socket options before `listen()`) and
//!   [`Listener::accept`], which never fails and survives descriptor exhaustion;
//! - **portcullis-limit**: [`ConnLimiter::try_acquire`] per connection, right after accept;
//!   [`RateLimitLayer`] around the service (429 with `Retry-After`);
//! - **portcullis-metrics**: [`HttpMetricsLayer`] outside the rate limit, so the 429s are
//!   counted; [`PrometheusExporter`] as the recorder; [`Admin`] for `/metrics`, `/livez`,
//!   `/readyz` on a listener of its own;
//! - **portcullis-shutdown**: [`Shutdown::from_signals`] (SIGTERM/SIGINT; a second one forces,
//!   SIGHUP reloads) and the [`Lifecycle`] from [`Shutdown::start`]: readiness, the phase the
//!   accept loops watch, the drain deadline; hyper-util's `GracefulShutdown` drains the
//!   connections;
//! - **portcullis-tls** (with `--tls-cert`): [`TlsAcceptor`], a handshake with a deadline.
//!
//! # What portcullis-server would own, and you now do
//!
//! The blocks' background work runs by itself, server or not: the installed exporter
//! runs its upkeep on its own thread, the TLS acceptor watches its certificate files from
//! the runtime it was built in, and the rate limiter evicts idle keys from its first
//! check. What portcullis-server would own, this executable does by hand, as below:
//!
//! - reload the certificates on SIGHUP (here through [`Lifecycle::on_reload`]);
//! - install the recorder before serving, describe and register the metrics, tell the
//!   lifecycle when it serves, and tie the drain to hyper-util's graceful shutdown;
//! - stop the admin listener after the drain.
//!
//! Exit status: 0 after a clean drain, 1 when the drain deadline or a second signal forced
//! connections closed, 2 for a bad flag or a start-up failure.

mod accept;
mod app;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use portcullis_limit::{ConnLimiter, ConnLimits, Quota, RateLimitLayer};
use portcullis_listen::{Listener, ListenerConfig};
use portcullis_metrics::{Admin, HttpMetricsLayer, PrometheusExporter};
use portcullis_shutdown::{CancellationToken, Lifecycle, Shutdown, ShutdownPhase};
use portcullis_tls::{TlsAcceptor, TlsConfig};
use tokio::time::Instant;
use tower::ServiceBuilder;

use crate::accept::Pipeline;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> ExitCode {
    // Warnings by default (a rejected reload, an accept error), `RUST_LOG` for more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    match run().await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run() -> Result<ExitCode, Error> {
    let args = Args::from_env()?;

    // The executable owns the process-global recorder; a library never installs one.
    let exporter = PrometheusExporter::install()?;
    portcullis_metrics::describe();
    portcullis_listen::metrics::describe();
    portcullis_limit::metrics::describe();
    portcullis_shutdown::metrics::describe();
    portcullis_tls::metrics::describe();
    // Every series of the closed label sets at 0 from the start, for rate() and alerts.
    portcullis_listen::metrics::register();
    portcullis_limit::metrics::register();
    portcullis_shutdown::metrics::register();
    portcullis_tls::metrics::register();

    // Signals first, before anything is reachable: SIGTERM drains, SIGHUP reloads.
    let shutdown = Shutdown::from_signals()?.drain_timeout(args.drain_timeout);
    let health = shutdown.health();

    let listeners = ListenerConfig::new().backlog(1024).bind(args.listen)?;
    let admin = match args.admin {
        Some(addr) => Some(one(ListenerConfig::new().bind(addr)?)?),
        None => None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(TlsConfig::from_pem_files(cert, key)?.build()?),
        _ => None,
    };

    // The tower stack, outside in: metrics (so 429s are counted), the rate limit, the routes.
    let app = ServiceBuilder::new()
        .layer(HttpMetricsLayer::new())
        .layer(RateLimitLayer::per_client(args.rate).layer())
        .service_fn(app::route);
    let http = accept::http(args.header_timeout);
    let pipeline = Arc::new(Pipeline {
        conns: ConnLimits::new(args.max_conns).build(),
        tls: tls.clone(),
        http: http.clone(),
        service: app,
    });

    let lifecycle = shutdown.start(); // the triggers are listened for from now on
    // Stops the admin listener after the drain.
    let stop = CancellationToken::new();
    if let Some(tls) = &tls {
        reload_on_hangup(tls, &lifecycle);
    }
    let graceful = Arc::new(GracefulShutdown::new());
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut accepting = Vec::new();
    for listener in listeners {
        println!("listening on {scheme}://{}", listener.local_addr());
        let task = accept::accept_loop(
            listener,
            Arc::clone(&pipeline),
            lifecycle.clone(),
            Arc::clone(&graceful),
        );
        accepting.push(tokio::spawn(task));
    }
    if let Some(listener) = admin {
        println!("admin on http://{}", listener.local_addr());
        let admin = Admin::new()
            .prometheus(&exporter)
            .readiness(move || health.is_ready());
        tokio::spawn(accept::admin_loop(listener, admin, http, stop.clone()));
    }
    lifecycle.serving(); // every listener accepts: ready (READY=1 under systemd)

    let clean = drain(&lifecycle, accepting, graceful, pipeline.conns.clone()).await;
    stop.cancel();
    Ok(if clean {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Waits for the shutdown, then drains: readiness off (at the trigger), the drain delay, the
/// accept loops end and close their listeners, the connections finish gracefully until the
/// deadline or a second signal. Returns whether every connection finished by itself.
async fn drain(
    lifecycle: &Lifecycle,
    accepting: Vec<tokio::task::JoinHandle<()>>,
    graceful: Arc<GracefulShutdown>,
    conns: ConnLimiter,
) -> bool {
    lifecycle.count_open(move || conns.open() as u64); // for the drain progress reports
    lifecycle.run_until_drain().await; // in `Drain` now: the accept loops see it and return
    let drain_started = Instant::now();
    for task in accepting {
        let _ = task.await;
    }
    // The accept loops held the other references; every connection holds a watcher, which
    // `shutdown` signals and then waits for.
    let graceful = Arc::try_unwrap(graceful).expect("the accept loops have ended");
    let deadline = drain_started + lifecycle.drain_timeout();
    let clean = tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep_until(deadline) => false,
        () = lifecycle.reached(ShutdownPhase::Forced) => false,
    };
    if !clean {
        tracing::warn!("drain deadline or second signal: closing the connections left");
        lifecycle.force(); // the connection tasks end with the runtime, after `main`
    }
    let tasks_left = lifecycle.wait_for_tasks(deadline).await;
    lifecycle.finish(drain_started);
    clean && tasks_left == 0
}

/// Reloads the certificates on SIGHUP (the acceptor's own watcher serves replaced files
/// within about a second without it).
fn reload_on_hangup(tls: &TlsAcceptor, lifecycle: &Lifecycle) {
    let tls = tls.clone();
    lifecycle.on_reload(move || {
        // Logged and counted (portcullis_tls_reloads_total) by `reload` itself; the pair in
        // service stays when the new one is bad.
        let _ = tls.reload();
    });
}

/// The one listener of a bind without extra acceptors.
fn one(listeners: Vec<Listener>) -> Result<Listener, Error> {
    listeners
        .into_iter()
        .next()
        .ok_or_else(|| "bind returned no listener".into())
}

/// The command line.
struct Args {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    rate: Quota,
    max_conns: usize,
    header_timeout: Duration,
    drain_timeout: Duration,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

impl Args {
    fn from_env() -> Result<Self, String> {
        let mut args = Args {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin: None,
            rate: Quota::per_second(100.try_into().map_err(|_| "zero")?),
            max_conns: 10_000,
            header_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            tls_cert: None,
            tls_key: None,
        };
        let mut words = std::env::args().skip(1);
        while let Some(flag) = words.next() {
            let value = words.next().ok_or(format!("{flag} needs a value"))?;
            let bad = |error: &dyn std::fmt::Display| format!("{flag} {value}: {error}");
            match flag.as_str() {
                "--listen" => args.listen = value.parse().map_err(|e| bad(&e))?,
                "--admin" => args.admin = Some(value.parse().map_err(|e| bad(&e))?),
                "--rate" => args.rate = value.parse().map_err(|e| bad(&e))?,
                "--max-conns" => args.max_conns = value.parse().map_err(|e| bad(&e))?,
                "--header-timeout" => args.header_timeout = seconds(&value).map_err(|e| bad(&e))?,
                "--drain-timeout" => args.drain_timeout = seconds(&value).map_err(|e| bad(&e))?,
                "--tls-cert" => args.tls_cert = Some(value),
                "--tls-key" => args.tls_key = Some(value),
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if args.tls_cert.is_some() != args.tls_key.is_some() {
            return Err("--tls-cert and --tls-key go together".to_owned());
        }
        Ok(args)
    }
}

fn seconds(value: &str) -> Result<Duration, std::num::ParseFloatError> {
    Ok(Duration::from_secs_f64(value.parse::<f64>()?.max(0.0)))
}
