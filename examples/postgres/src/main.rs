//! An axum application on PostgreSQL behind portcullis: the database is a critical readiness
//! check, every query has a deadline, requests in flight at SIGTERM finish on a pool that
//! closes only after the drain, and the route metrics show the database's share of latency.
//!
//! ```text
//! cargo run --release -p postgres-example -- --listen 127.0.0.1:8080 --admin 127.0.0.1:9090 \
//!     --database-url 'host=127.0.0.1 port=5432 user=postgres dbname=postgres'
//! curl -s 'http://127.0.0.1:9090/readyz?verbose'    # check postgres: up (503 while it is down)
//! curl -s -XPOST -H 'content-type: application/json' -d '{"name":"lamp"}' \
//!     http://127.0.0.1:8080/items                    # 201 {"id":1,"name":"lamp"}
//! curl -si http://127.0.0.1:8080/items/1             # 200, Server-Timing: db;dur=0.4
//! curl -s http://127.0.0.1:8080/slow?ms=3000         # 504 past --query-timeout (2s)
//! curl -s http://127.0.0.1:9090/metrics | grep -E 'postgres_|http_route="/items/\{id\}"'
//! kill -TERM <pid>                                   # in-flight requests finish, then the pool closes
//! ```
//!
//! # Why tokio-postgres with deadpool-postgres
//!
//! tokio-postgres is the asynchronous PostgreSQL driver the Rust ecosystem builds on (sqlx's
//! PostgreSQL driver is its own, with compile-time checked queries that need a database at
//! build time or an offline cache kept in the repository). deadpool-postgres adds a small,
//! well-kept pool with the three deadlines a server needs: waiting for a connection, making
//! one, recycling one. Together they are a fraction of sqlx's dependencies and build time, and
//! nothing about the database is needed to compile.
//!
//! # What keeps a database failure from becoming a hang
//!
//! - Every query runs under `--query-timeout` twice: on the client (`tokio::time::timeout`,
//!   which also covers a database that stopped answering at the TCP level) and on the server
//!   (`statement_timeout`, so PostgreSQL stops the work too). Past it, 504.
//! - Getting a connection from the pool has its own deadlines (wait, create, recycle); an
//!   unreachable database is 503 with `Retry-After` within them, never a request left waiting.
//! - Readiness reads the `postgres` check (`SELECT 1` every second, 1 s timeout; down after 3
//!   failures, up after 2 successes): the load balancer stops sending traffic while the
//!   database is away, and `/livez` never depends on it, so nobody restarts the instance for
//!   an outage that is not its own. The check fails open after `--db-fail-open-after` (60 s):
//!   an outage that long is everyone's, and an empty rotation would serve nobody, not even the
//!   routes that need no database (see `docs/health.md`).
//! - The schema is created by the first successful check, so the instance starts even when
//!   the database is not there yet, and becomes ready once it is.

mod db;

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use portcullis::health::Check;
use portcullis::prelude::*;

#[tokio::main]
async fn main() -> Result<ExitCode, Box<dyn std::error::Error>> {
    // Warnings visible by default (the database going down), RUST_LOG honoured.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    let args = Args::from_env()?;
    let db = db::Db::new(&args.database_url, args.query_timeout)?;

    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/items", post(db::create_item))
        .route("/items/{id}", get(db::get_item))
        .route("/slow", get(db::slow))
        .with_state(db.clone())
        .layer(HttpMetricsLayer::new()); // http_route="/items/{id}", never the raw path

    // The database is what this instance cannot serve without: a critical check, failing
    // open after a long outage so that a shared database cannot empty the whole rotation.
    let ping = db.clone();
    let check = Check::new("postgres", move || {
        let db = ping.clone();
        async move { db.ping().await }
    })
    .fail_open_after(args.fail_open_after);

    let mut server = Server::builder()
        .graceful(Shutdown::from_signals()?.drain_timeout(args.drain_timeout))
        .systemd()
        .listen(args.listen.as_str())?
        .health_check(check);
    if let Some(admin) = &args.admin {
        server = server.admin(admin.as_str())?; // /metrics /livez /readyz
    }
    db::describe();
    server.announce(std::io::stdout())?; // listening on http://IP:PORT
    let report = server.serve(app).await?; // until the drain ends: requests in flight finish
    db.close(); // only now: the drained requests had their connections until the end
    Ok(report.exit_code())
}

/// The command line: `--listen ADDR` (default 127.0.0.1:8080), `--admin ADDR`,
/// `--database-url URL` (or `DATABASE_URL`; a libpq connection string or a
/// `postgres://` URL), `--query-timeout DUR` (default 2s), `--db-fail-open-after DUR`
/// (default 60s), `--drain-timeout DUR` (default 10s).
struct Args {
    listen: String,
    admin: Option<String>,
    database_url: String,
    query_timeout: Duration,
    fail_open_after: Duration,
    drain_timeout: Duration,
}

impl Args {
    fn from_env() -> Result<Self, String> {
        let mut args = Args {
            listen: "127.0.0.1:8080".to_owned(),
            admin: None,
            database_url: std::env::var("DATABASE_URL").unwrap_or_else(|_| {
                "host=127.0.0.1 port=5432 user=postgres dbname=postgres".to_owned()
            }),
            query_timeout: Duration::from_secs(2),
            fail_open_after: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
        };
        let mut words = std::env::args().skip(1);
        while let Some(flag) = words.next() {
            let value = words.next().ok_or(format!("{flag} needs a value"))?;
            let duration = || {
                portcullis::listen::parse_duration(&value)
                    .map_err(|error| format!("{flag} {value:?}: {error}"))
            };
            match flag.as_str() {
                "--listen" => args.listen = value.clone(),
                "--admin" => args.admin = Some(value.clone()),
                "--database-url" => args.database_url = value.clone(),
                "--query-timeout" => args.query_timeout = duration()?,
                "--db-fail-open-after" => args.fail_open_after = duration()?,
                "--drain-timeout" => args.drain_timeout = duration()?,
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if args.query_timeout.is_zero() {
            return Err("--query-timeout must be more than 0s".to_owned());
        }
        Ok(args)
    }
}
