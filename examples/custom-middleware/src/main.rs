//! Your own tower middleware composed with portcullis' layers: a request id and a bearer-token
//! check of the application's, around portcullis' HTTP metrics and per-client rate limit.
//!
//! ```text
//! cargo run -p custom-middleware -- --listen 127.0.0.1:8080 --admin 127.0.0.1:9090
//! curl -i http://127.0.0.1:8080/                                        # 401, x-request-id
//! curl -i -H 'Authorization: Bearer let-me-in' http://127.0.0.1:8080/   # 200, x-request-id
//! for i in $(seq 30); do curl -s -o /dev/null -w '%{http_code}\n' \
//!     -H 'Authorization: Bearer let-me-in' http://127.0.0.1:8080/; done # 200s, then 429s
//! curl -s http://127.0.0.1:9090/metrics | grep 'request_duration_seconds_count'
//! #   ...http_response_status_code="401"... and ...="429"...: refused requests are counted
//! RUST_LOG=debug cargo run -p custom-middleware                         # more logs (default: warn)
//! ```
//!
//! `--rate QUOTA` sets the per-client rate limit (default `100/s burst 20`; also `N/m`, `N/h`).
//! SIGTERM or Ctrl-C drains and exits 0 (1 when the drain deadline forced connections closed).
//!
//! # The order of the layers
//!
//! ```text
//! request ─▶ SetRequestId ─▶ HttpMetrics ─▶ RateLimit ─▶ BearerAuth ─▶ router
//!            x-request-id    counts every   429 over     401 without
//!            on every answer answer below   the quota    the token
//! ```
//!
//! A layer sees only what passes through it: a request refused by a layer never reaches the
//! layers inside it, and its answer goes back only through the layers outside it. So:
//!
//! - **The request id is outermost.** Every answer passes back through it, including the 429
//!   of the rate limit and the 401 of the auth check, so each one carries `x-request-id`, and
//!   the id is in the request before any other layer runs (their logs can name it). Answers
//!   portcullis-server writes itself, before the tower stack (400 for a malformed request
//!   head, 408, a connection refused by a cap), carry none: they never reach it.
//! - **The metrics are outside the rate limit and the auth check**, so the 429s and the 401s
//!   are counted by status in `http_server_request_duration_seconds`. Inside them, a flood of
//!   refused requests or a credential-guessing run would be invisible on the dashboards.
//! - **The rate limit is outside the auth check**, so unauthenticated requests spend quota
//!   too: every guessed token costs a request, and a client over its limit costs no token
//!   check (cheap here; a database lookup or a signature check in real life).
//!
//! With [`tower::ServiceBuilder`] the layers read top to bottom from the outside in, as drawn.
//! They are given to [`Router::layer`], inside the router, so that the metrics label each
//! request with its route template (axum's `MatchedPath`, portcullis' `axum` feature).

mod auth;
mod request_id;

use std::process::ExitCode;

use axum::extract::Extension;
use axum::{Router, routing::get};
use portcullis::prelude::*;
use tower::ServiceBuilder;

use crate::auth::BearerAuthLayer;
use crate::request_id::{RequestId, RequestIdLayer};

/// The token the auth check accepts. A real server loads it from a secret, never the source.
const TOKEN: &str = "let-me-in";

async fn hello(Extension(id): Extension<RequestId>) -> String {
    format!("hello, request {id}\n")
}

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Warnings by default (a rejected reload, an accept error), `RUST_LOG` for more.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let args = Args::from_env()?;
    let quota: Quota = args.rate.parse()?;

    let app = Router::new().route("/", get(hello)).layer(
        ServiceBuilder::new()
            .layer(RequestIdLayer::new()) // outermost: every answer gets x-request-id
            .layer(HttpMetricsLayer::new()) // counts the 429s and 401s made below it
            .layer(RateLimitLayer::per_client(quota).layer()) // 429 + Retry-After
            .layer(BearerAuthLayer::new(TOKEN)), // 401 without the token
    );

    let mut server = Server::builder()
        .graceful(Shutdown::from_signals()?) // SIGTERM drains, a second forces
        .listen(args.listen.as_str())?;
    if let Some(admin) = &args.admin {
        server = server.admin(admin.as_str())?; // /metrics /livez /readyz
    }
    server.announce(std::io::stdout())?; // listening on http://IP:PORT, admin on ...
    Ok(server.serve(app).await?.exit_code())
}

/// `--listen ADDR` (default 127.0.0.1:8080), `--admin ADDR`, `--rate QUOTA`.
struct Args {
    listen: String,
    admin: Option<String>,
    rate: String,
}

impl Args {
    fn from_env() -> Result<Self, String> {
        let mut args = Args {
            listen: "127.0.0.1:8080".to_owned(),
            admin: None,
            rate: "100/s burst 20".to_owned(),
        };
        let mut words = std::env::args().skip(1);
        while let Some(flag) = words.next() {
            let value = words.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--listen" => args.listen = value,
                "--admin" => args.admin = Some(value),
                "--rate" => args.rate = value,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        Ok(args)
    }
}
