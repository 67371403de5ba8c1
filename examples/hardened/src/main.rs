//! portcullis's reference server: the full hardened stack behind a stable command line.
//!
//! Run it:
//!
//! ```text
//! cargo run --release -p hardened -- --listen 127.0.0.1:8080 --header-timeout 5s
//! ```
//!
//! Poke it:
//!
//! ```text
//! curl http://127.0.0.1:8080/                         # hello
//! curl 'http://127.0.0.1:8080/slow?ms=500'            # ok, after half a second
//! curl -N 'http://127.0.0.1:8080/stream?n=5&ms=200'   # five lines, 200 ms apart
//! curl --data-binary @Cargo.toml http://127.0.0.1:8080/echo
//! curl --http2-prior-knowledge http://127.0.0.1:8080/ # h2c
//! curl http://127.0.0.1:9090/metrics                  # with --admin 127.0.0.1:9090
//! curl -i http://127.0.0.1:8080/                      # with --rate 1/m: the second is a 429
//! curl --cacert ca.pem https://localhost:8443/        # with --tls-cert/--tls-key
//! kill -TERM <pid>                                    # graceful drain; exit 0 when clean
//! ```
//!
//! `--tls-cert cert.pem --tls-key key.pem` serves HTTPS (HTTP/2 or HTTP/1.1 by ALPN) on every
//! listener, TLS 1.2 and 1.3 only; SIGHUP or a change of either file (a symlink swap included)
//! reloads them, and a bad new pair leaves the old one in service. `--handshake-timeout`
//! (default 10 s) bounds each handshake.
//!
//! `--rate 100/s --burst 20` limits each client address (IPv6: each /64) and answers 429 with
//! `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` fields past it. `--max-conns`
//! (default 10 000) and `--max-conns-per-ip` close connections over the caps as soon as they
//! are accepted. `--trusted-proxy CIDR` names the proxies whose `Forwarded` /
//! `X-Forwarded-For` is believed (read from the right); with `--proxy-protocol` they must
//! also open every connection with a PROXY protocol header naming the client.
//!
//! Started by systemd with sockets (`LISTEN_FDS`, socket activation), it serves those instead
//! of binding `--listen`. With `Type=notify` (`NOTIFY_SOCKET`) it reports `READY=1` once
//! listening and `STOPPING=1` at shutdown, and pings the watchdog when `WatchdogSec=` is set.
//!
//! Once every listener accepts it prints `listening on http://IP:PORT`, one line per `--listen`
//! address (or per inherited socket), then `admin on http://IP:PORT` with `--admin`: that
//! listener serves `/metrics` (Prometheus), `/livez` and `/readyz`, and stays up through the
//! drain so the not-ready state can be seen.
//! SIGTERM or SIGINT starts a graceful shutdown and a second one forces it. Exit status: 0
//! after a clean drain, 1 when connections were forced closed (or a per-core thread failed
//! while serving), 2 for bad usage or a failed start-up, with one `error: ` line on stderr
//! naming the problem.
//!
//! Copy this crate out of the repository to start your own server: only the `path` entries
//! of the portcullis dependency need to go.

mod cli;
mod routes;

use std::io::Write;
use std::num::NonZeroUsize;
use std::process::ExitCode;
use std::sync::Arc;

use portcullis::limit::client::TrustedProxies;
use portcullis::listen::SocketActivation;
use portcullis::metrics::{Admin, HttpMetricsLayer, PrometheusExporter};
use portcullis::prelude::*;
use portcullis::server::ShutdownPhase;
use portcullis::shutdown::{Shutdown, systemd};

fn main() -> ExitCode {
    let settings = match cli::parse() {
        Ok(cli::Parsed::Run(settings)) => settings,
        Ok(cli::Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(message) => return usage_error(&message),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(*settings) {
        Ok(report) => {
            tracing::info!(?report, "drained");
            report.exit_code()
        }
        Err(Failure::Usage(message)) => usage_error(&message),
        Err(Failure::Serving(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

/// Why `run` failed: before serving (exit 2) or while serving (exit 1).
enum Failure {
    Usage(String),
    Serving(String),
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::Usage(message)
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

fn run(settings: cli::Settings) -> Result<ServeReport, Failure> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    let acceptors = if settings.per_core {
        cores
    } else {
        NonZeroUsize::new(settings.acceptors).unwrap_or(NonZeroUsize::MIN)
    };
    let http = HttpConfig::default()
        .header_timeout(settings.header_timeout)
        .idle_timeout(settings.idle_timeout);
    // With an admin listener, metrics go to a Prometheus exporter that it serves; without one
    // no recorder is installed and the HTTP metrics layer is switched off.
    let exporter = match settings.admin {
        Some(_) => {
            let exporter = PrometheusExporter::install().map_err(|e| e.to_string())?;
            portcullis::server::metrics::describe_all();
            portcullis::server::metrics::register_all();
            Some(exporter)
        }
        None => None,
    };
    // Built after the recorder is installed; every clone (one per core) shares its series.
    // Without an admin listener nothing could read the metrics: no layer at all.
    let metrics = exporter
        .as_ref()
        .map(|_| HttpMetricsLayer::new().route_fn(routes::template));
    // One limiter for the whole process, shared by every clone (and every core).
    let rate_limit = settings.rate.map(|quota| {
        RateLimit::per_client(quota)
            .name("per-client")
            .trusted_proxies(settings.trusted_proxies.iter().copied())
            .layer()
    });
    // TLS on every listener: the files are read and checked now, so a bad file ends start-up
    // with one line naming it. Built after the recorder, so its metrics reach the exporter.
    let tls = match &settings.tls {
        Some((cert, key)) => Some(
            TlsConfig::from_pem_files(cert, key)
                .and_then(|config| config.handshake_timeout(settings.handshake_timeout).build())
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut conn_limits = ConnLimiter::new(settings.max_conns);
    if let Some(max) = settings.max_conns_per_ip {
        // A trusted proxy carries many clients: only they are capped, not the proxy.
        conn_limits = conn_limits
            .per_client(max)
            .exempt_from_per_client(TrustedProxies::new(
                settings.trusted_proxies.iter().copied(),
            ));
    }

    // Signals are hooked before the first listener accepts, so a SIGTERM that arrives as soon
    // as we are reachable is a graceful shutdown, never the default action (and as PID 1 in a
    // container there is no default action at all).
    let builder = runtime.block_on(async {
        // SIGTERM/SIGINT start the drain, the next one forces it.
        let shutdown = Shutdown::from_signals()
            .map_err(|e| format!("cannot install signal handlers: {e}"))?
            .drain_delay(settings.drain_delay)
            .drain_timeout(settings.drain_timeout);
        let background_stop = shutdown.token();
        // SIGHUP reloads the certificate. It is caught from here on, before any listener is
        // bound, so a HUP sent as soon as the listener lines appear never kills the process;
        // without TLS there is nothing to reload and it is only logged.
        let sighup: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match &tls {
            Some(tls) => Box::pin(
                tls.reload_on_sighup(background_stop.clone())
                    .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?,
            ),
            None => Box::pin(ignore_sighup(background_stop.clone())?),
        };
        let config = ListenerConfig::default().acceptors(acceptors);
        let mut builder = Server::builder()
            .http(http)
            .graceful(shutdown)
            // No route reads ConnInfo or PeerAddr: skip those per-request extensions. The rate
            // limit finds the client in the connection's scope instead.
            .conn_info(false)
            .peer_addr(false)
            .connection_limits(conn_limits);
        if let Some(tls) = &tls {
            builder = builder.tls(tls.clone());
        }
        if settings.proxy_protocol {
            builder = builder
                .proxy_protocol(ProxyProtocol::new(settings.trusted_proxies.iter().copied()));
        }
        let mut lines = String::new();
        // Started by systemd with sockets (LISTEN_FDS)? Serve those instead of binding.
        match SocketActivation::from_env().map_err(|e| e.to_string())? {
            Some(mut activation) if !activation.is_empty() => {
                for listener in activation.take_all(&config).map_err(|e| e.to_string())? {
                    lines.push_str(&format!(
                        "listening on {scheme}://{}\n",
                        listener.local_addr()
                    ));
                    builder = builder.listener(listener);
                }
            }
            _ => {
                for addr in &settings.listen {
                    let listeners = config.bind(*addr).map_err(|e| e.to_string())?;
                    if let Some(first) = listeners.first() {
                        lines
                            .push_str(&format!("listening on {scheme}://{}\n", first.local_addr()));
                    }
                    builder = builder.listeners(listeners);
                }
            }
        }
        if let (Some(addr), Some(exporter)) = (settings.admin, &exporter) {
            let listener = Listener::bind(addr).map_err(|e| e.to_string())?;
            // The admin line comes after every listener line.
            lines.push_str(&format!("admin on http://{}\n", listener.local_addr()));
            builder = builder.admin(listener, Admin::new().prometheus(exporter));
        }
        let mut stdout = std::io::stdout().lock();
        stdout
            .write_all(lines.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
        Ok::<_, String>((builder, background_stop, sighup))
    })?;
    let (builder, background_stop, sighup) = builder;
    // Background work, until the shutdown: the exporter's upkeep folds histogram samples into
    // their buckets even when nobody scrapes; the limiter's housekeeping evicts idle keys.
    // Started by the first service made, on the runtime that serves (a core's, per core).
    let mut background: Vec<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
    if let Some(exporter) = &exporter {
        background.push(Box::pin(
            exporter.clone().run_upkeep(background_stop.clone()),
        ));
    }
    if let Some(tls) = &tls {
        // A changed certificate or key file (a symlink swap included) is live after two 500 ms
        // polls agree on it: well within the 2 s the command line promises.
        background.push(Box::pin(tls.watch(background_stop.clone())));
    }
    background.push(sighup);
    if let Some(limit) = &rate_limit {
        background.push(Box::pin(limit.housekeeping(
            portcullis::limit::DEFAULT_HOUSEKEEPING_INTERVAL,
            background_stop.clone(),
        )));
    }
    let background = Arc::new(std::sync::Mutex::new(Some(background)));
    let start_background = move || {
        let tasks = background
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        for task in tasks.into_iter().flatten() {
            tokio::spawn(task);
        }
    };

    // Under systemd with Type=notify: READY=1 now that every listener accepts, STOPPING=1 when
    // the shutdown begins, and WATCHDOG=1 pings at half of WatchdogSec= from a task of the
    // serving runtime, so the pings stop when the runtime does.
    let notifier = systemd::Notifier::from_env()
        .map_err(|e| e.to_string())?
        .map(Arc::new);
    if let Some(notifier) = &notifier {
        if let Err(error) = notifier.ready() {
            tracing::warn!(%error, "cannot notify systemd");
        }
        if let Some(interval) = systemd::watchdog_interval() {
            let notifier = Arc::clone(notifier);
            runtime.spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                loop {
                    ticks.tick().await;
                    if let Err(error) = notifier.watchdog() {
                        tracing::warn!(%error, "cannot send the systemd watchdog ping");
                    }
                }
            });
        }
    }
    // STOPPING=1 as the shutdown begins, and a STATUS= line for `systemctl status` at every
    // phase and every second of the drain (with the connections still open).
    let builder = match notifier {
        Some(notifier) => {
            let stopping_sent = std::sync::atomic::AtomicBool::new(false);
            let progress = Arc::clone(&notifier);
            builder
                .on_drain_progress(std::time::Duration::from_secs(1), move |drain| {
                    if drain.finished {
                        return; // the phase hook reports "drained"
                    }
                    let status = format!(
                        "draining: {} connection{} open, {} s to the deadline",
                        drain.open,
                        if drain.open == 1 { "" } else { "s" },
                        drain.remaining.as_secs()
                    );
                    if let Err(error) = progress.status(&status) {
                        tracing::warn!(%error, "cannot notify systemd");
                    }
                })
                .on_phase(move |phase| {
                    let stopping = matches!(phase, ShutdownPhase::Delay | ShutdownPhase::Drain);
                    if stopping
                        && !stopping_sent.swap(true, std::sync::atomic::Ordering::Relaxed)
                        && let Err(error) = notifier.stopping()
                    {
                        tracing::warn!(%error, "cannot notify systemd");
                    }
                    let status = match phase {
                        ShutdownPhase::Running => "serving",
                        ShutdownPhase::Delay => "shutting down: readiness off, still serving",
                        ShutdownPhase::Drain => "draining connections",
                        _ => "drained",
                    };
                    if let Err(error) = notifier.status(status) {
                        tracing::warn!(%error, "cannot notify systemd");
                    }
                })
        }
        None => builder,
    };
    // The metrics layer (naming each request's route template, so 429s count too), the rate
    // limit, then the routes. Each layer only when configured: a layer that does nothing
    // still costs its wrapping on every request.
    let per_core = settings.per_core;
    let served = match (metrics, rate_limit) {
        (Some(metrics), Some(limit)) => serve(builder, runtime, per_core, cores, move || {
            start_background();
            tower::ServiceBuilder::new()
                .layer(metrics.clone())
                .layer(limit.clone())
                .service_fn(routes::route)
        }),
        (Some(metrics), None) => serve(builder, runtime, per_core, cores, move || {
            start_background();
            tower::ServiceBuilder::new()
                .layer(metrics.clone())
                .service_fn(routes::route)
        }),
        (None, Some(limit)) => serve(builder, runtime, per_core, cores, move || {
            start_background();
            tower::ServiceBuilder::new()
                .layer(limit.clone())
                .service_fn(routes::route)
        }),
        (None, None) => serve(builder, runtime, per_core, cores, move || {
            start_background();
            tower::service_fn(routes::route)
        }),
    };
    served.map_err(|error| match error {
        portcullis::server::Error::CorePanicked { .. } => Failure::Serving(error.to_string()),
        _ => Failure::Usage(error.to_string()),
    })
}

/// Catches SIGHUP when there is nothing to reload (no TLS), so it does not end the process.
fn ignore_sighup(
    stop: tokio_util::sync::CancellationToken,
) -> Result<impl Future<Output = ()> + Send + 'static, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    Ok(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = hangups.recv() => if received.is_none() { return },
            }
            tracing::info!("SIGHUP received: nothing to reload without --tls-cert");
        }
    })
}

/// Serves the services `app` makes: on `runtime`, or with one runtime per core.
fn serve<F, S, B>(
    builder: portcullis::server::Builder,
    runtime: tokio::runtime::Runtime,
    per_core: bool,
    cores: NonZeroUsize,
    app: F,
) -> Result<ServeReport, portcullis::server::Error>
where
    F: Fn() -> S + Send + Sync + 'static,
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<portcullis::server::BoxError>,
{
    if per_core {
        let served = builder.serve_per_core(cores, app);
        drop(runtime);
        served
    } else {
        // `app` may spawn tasks: make it inside the runtime.
        let service = {
            let _entered = runtime.enter();
            app()
        };
        runtime.block_on(builder.serve(service))
    }
}
