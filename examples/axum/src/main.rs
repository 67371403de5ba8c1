//! An axum application with every portcullis block on: the example of the README.
//!
//! ```text
//! cargo run --release -p axum-example -- --listen 127.0.0.1:8080 --admin 127.0.0.1:9090
//! curl http://127.0.0.1:8080/                      # hello
//! curl http://127.0.0.1:8080/users/7               # {"id":7,"name":"user 7","visits":1}
//! curl http://127.0.0.1:9090/metrics               # http_route="/users/{id}", never the raw path
//! # with --tls-cert cert.pem --tls-key key.pem: HTTPS; a replaced file is served within a
//! # second or two, and `kill -HUP <pid>` reloads at once (certbot's deploy hook)
//! kill -TERM <pid>                                 # drain; exit 0 when clean, 1 when forced
//! RUST_LOG=debug cargo run -p axum-example         # more logs (default: warnings)
//! ```
//!
//! Nothing below is there to keep a block working: the server watches the certificate files,
//! reloads on SIGHUP, runs the exporter's upkeep, lets the rate limiter evict idle clients and
//! reports to systemd (under `Type=notify`), all for as long as it serves.

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Path, State};
use axum::{Json, Router, routing::get};
use portcullis::prelude::*;

/// Connections one client address may hold open at once.
const PER_CLIENT: NonZeroU32 = NonZeroU32::new(100).expect("not zero");

#[derive(serde::Serialize)]
struct User {
    id: u64,
    name: String,
    visits: u64,
}

async fn user(State(visits): State<Arc<AtomicU64>>, Path(id): Path<u64>) -> Json<User> {
    let visits = visits.fetch_add(1, Ordering::Relaxed) + 1;
    Json(User {
        id,
        name: format!("user {id}"),
        visits,
    })
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Warnings visible by default (a rejected certificate reload), RUST_LOG honoured.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let args = Args::from_env()?;
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/users/{id}", get(user))
        .with_state(Arc::new(AtomicU64::new(0)))
        .layer(RateLimitLayer::per_client("100/s burst 20".parse()?).layer()) // 429 + RateLimit
        .layer(HttpMetricsLayer::new()); // route templates from axum, bounded labels

    // The serving part: signals first, so SIGTERM drains and SIGHUP reloads from the start.
    let mut server = Server::builder()
        .graceful(Shutdown::from_signals()?.drain_timeout(std::time::Duration::from_secs(10)))
        .systemd() // READY/STOPPING/STATUS/WATCHDOG when under systemd
        .listen(args.listen.as_str())?
        .connection_limits(ConnLimits::new(10_000).per_client(PER_CLIENT));
    if let Some(admin) = &args.admin {
        server = server.admin(admin.as_str())?; // /metrics /livez /readyz, exporter installed
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        server = server.tls(TlsConfig::from_pem_files(cert, key)?.build()?); // watched + SIGHUP
    }
    server.announce(std::io::stdout())?; // listening on http://IP:PORT
    let report = server.serve(app).await?; // until the drain ends
    Ok(report.exit_code()) // 0 clean, 1 forced
}

/// `--listen ADDR` (default 127.0.0.1:8080), `--admin ADDR`, `--tls-cert PATH --tls-key PATH`.
struct Args {
    listen: String,
    admin: Option<String>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

impl Args {
    fn from_env() -> Result<Self, String> {
        let mut args = Args {
            listen: "127.0.0.1:8080".to_owned(),
            admin: None,
            tls_cert: None,
            tls_key: None,
        };
        let mut words = std::env::args().skip(1);
        while let Some(flag) = words.next() {
            let value = words.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--listen" => args.listen = value,
                "--admin" => args.admin = Some(value),
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
