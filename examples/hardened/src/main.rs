//! portcullis's reference server: the full hardened stack behind a stable command line.
//!
//! ```text
//! cargo run --release -p hardened -- --listen 127.0.0.1:8080 --header-timeout 5s
//! curl http://127.0.0.1:8080/                         # hello (also /slow, /stream, /echo)
//! curl --http2-prior-knowledge http://127.0.0.1:8080/ # h2c
//! curl http://127.0.0.1:9090/metrics                  # with --admin 127.0.0.1:9090
//! curl -i http://127.0.0.1:8080/                      # with --rate 1/m: the second is a 429
//! curl --cacert ca.pem https://localhost:8443/        # with --tls-cert/--tls-key
//! kill -HUP <pid>; kill -TERM <pid>                   # reload certificates; drain, exit 0
//! ```
//!
//! The whole command line is in `cli.rs` and `--help`; the contract (listener lines, exit
//! status 0 clean / 1 forced / 2 bad usage, one `error: ` line) in docs/architecture.md; the
//! `--config` file and `--check-config` in docs/configuration.md.
//! Everything that keeps a block working (certificate reloads on file change and SIGHUP,
//! exporter upkeep, limiter housekeeping, systemd READY/STOPPING/STATUS/WATCHDOG) is run by
//! the server. Copy this crate out of the repository to start your own; only the `path` of
//! the portcullis dependency needs to go.

mod cli;
mod routes;

use cli::{Failed, start_up};

use std::num::NonZeroUsize;
use std::process::ExitCode;

use portcullis::config::ServerConfig;
use portcullis::prelude::*;
use tower::ServiceBuilder;

fn main() -> ExitCode {
    let (config, warnings) = match cli::parse() {
        Ok(cli::Parsed::Run(config, warnings)) => (config, warnings),
        Ok(cli::Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(cli::Parsed::Exit(code)) => return code,
        Err(message) => return Failed(message, 2).exit(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
    match run(*config, &warnings) {
        Ok(report) => report.exit_code(),
        Err(failed) => failed.exit(),
    }
}

/// The rate limit of `--rate`: this instance's own, or the fleet's in `--redis`.
enum Limit {
    Local(RateLimitLayer),
    Fleet(portcullis::limit::fleet::FleetLimitLayer),
}

fn run(config: ServerConfig, warnings: &[String]) -> Result<ServeReport, Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| start_up(format_args!("cannot start the runtime: {e}")))?;
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let (builder, limit) = runtime.block_on(async {
        // Signals first, before anything is reachable: SIGTERM drains, SIGHUP reloads.
        let shutdown = Shutdown::from_signals()
            .map_err(|e| start_up(format_args!("cannot install signal handlers: {e}")))?;
        let builder = Server::builder()
            .graceful(shutdown)
            .systemd()
            // No route reads ConnInfo or PeerAddr: skip those per-request extensions.
            .conn_info(false)
            .peer_addr(false);
        // Every setting of the file and the flags: listeners (or systemd's sockets), admin,
        // deadlines, drain, caps, TLS, PROXY protocol, the connection filter and the bans.
        let builder = config.apply(builder)?;
        // SIGUSR2 upgrades; the line tells a script which process serves from now on, and a
        // failed upgrade is one `error:` line.
        let builder = builder.upgrade(
            config
                .upgrade()
                .on_ready(|pid| println!("upgraded: pid {pid} serves now"))
                .on_failure(|failure| eprintln!("error: {failure}")),
        );
        // The --rate limit: kept in Redis for the fleet with --redis, local otherwise. Redis
        // is tried before the listener lines, so that a server that says it listens has its
        // first checks shared already (or has given up on Redis for now).
        let limit = match config.fleet_limit() {
            Ok(Some(fleet)) => {
                let redis = fleet.redis().clone();
                // Begin shared if Redis answers now; if not, limit locally until it does.
                if let Err(error) = redis.connect().await {
                    tracing::warn!(
                        redis = redis.url(),
                        %error,
                        "Redis does not answer: limiting locally at rate / fleet size until it does"
                    );
                }
                Some(Limit::Fleet(fleet.name("per-client").layer()))
            }
            Ok(None) => config
                .rate_limit()
                .map(|limit| Limit::Local(limit.name("per-client").layer())),
            Err(error) => return Err(start_up(error)),
        };
        // The contract's lines, once every listener accepts.
        builder
            .announce(std::io::stdout().lock())
            .map_err(|e| start_up(format_args!("cannot write to stdout: {e}")))?;
        Ok::<_, Failed>((builder, limit))
    })?;
    // What `--check-config` warns about, now that the server is up.
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    // Only the layers asked for: a layer that does nothing still costs its wrapping.
    let metrics = config
        .admin
        .map(|_| HttpMetricsLayer::new().route_fn(routes::template));
    let per_core = config.per_core.then_some(cores);
    // One service per runtime (per core), each layer shared by every clone.
    macro_rules! serve {
        ($($layer:ident),*) => {
            builder.run(runtime, per_core, move || {
                ServiceBuilder::new()$(.layer($layer.clone()))*.service_fn(routes::route)
            })
        };
    }
    let served = match (metrics, limit) {
        (Some(metrics), Some(Limit::Local(limit))) => serve!(metrics, limit),
        (Some(metrics), Some(Limit::Fleet(limit))) => serve!(metrics, limit),
        (Some(metrics), None) => serve!(metrics),
        (None, Some(Limit::Local(limit))) => serve!(limit),
        (None, Some(Limit::Fleet(limit))) => serve!(limit),
        (None, None) => serve!(),
    };
    Ok(served?)
}
