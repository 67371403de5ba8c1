//! What the two peer servers share: their command line, the metric names they record, and
//! the per-IP connection count a limit needs.
//!
//! Both answer `GET /`, the request the benchmark sends, with 200 `hello\n` (`text/plain`)
//! like the baseline and the reference server, and paths they have no route for with 404
//! (the frameworks differ on the rest: axum answers `HEAD /` too and other methods on `/`
//! with 405, actix answers those with 404; the reference server also has `/slow`, `/stream`
//! and `/echo`, which the benchmark never requests). Both record the request-duration histogram (method, status, route)
//! and the in-flight gauge into metrics-exporter-prometheus and serve `/metrics` on the admin
//! address; both limit requests per client IP (`--rate`, requests per second) and print
//! `listening on http://IP:PORT` once they accept.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// The request-duration histogram, as the reference server names it.
pub const REQUEST_DURATION: &str = "http_server_request_duration_seconds";
/// The in-flight gauge.
pub const ACTIVE_REQUESTS: &str = "http_server_active_requests";
/// The buckets of the histogram, as the reference server's.
pub const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The command line of a peer server.
#[derive(Clone, Debug)]
pub struct Args {
    /// `--listen ADDR`.
    pub listen: SocketAddr,
    /// `--admin ADDR`: where `/metrics` is served.
    pub admin: SocketAddr,
    /// `--workers N`.
    pub workers: usize,
    /// `--rate N`: requests per second per client IP.
    pub rate: u64,
    /// `--max-conns-per-ip N`.
    pub max_conns_per_ip: usize,
}

const USAGE: &str =
    "usage: PEER [--listen ADDR] [--admin ADDR] [--workers N] [--rate N] [--max-conns-per-ip N]";

impl Args {
    /// The process's arguments; exits with a usage line when they are wrong.
    #[must_use]
    pub fn from_env() -> Self {
        match Self::parse(std::env::args().skip(1)) {
            Ok(args) => args,
            Err(message) => {
                eprintln!("{message}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }

    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, String> {
        let mut parsed = Self {
            listen: ([127, 0, 0, 1], 8080).into(),
            admin: ([127, 0, 0, 1], 0).into(),
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            rate: 1_000_000_000,
            max_conns_per_ip: 10_000,
        };
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("bad {flag} {value:?}: {e}");
            match flag.as_str() {
                "--listen" => parsed.listen = value.parse().map_err(|e| bad(&e))?,
                "--admin" => parsed.admin = value.parse().map_err(|e| bad(&e))?,
                "--workers" => parsed.workers = value.parse().map_err(|e| bad(&e))?,
                "--rate" => parsed.rate = value.parse().map_err(|e| bad(&e))?,
                "--max-conns-per-ip" => {
                    parsed.max_conns_per_ip = value.parse().map_err(|e| bad(&e))?;
                }
                _ => return Err(format!("unknown flag {flag}")),
            }
        }
        if parsed.workers == 0 || parsed.rate == 0 || parsed.max_conns_per_ip == 0 {
            return Err("--workers, --rate and --max-conns-per-ip must be positive".into());
        }
        Ok(parsed)
    }
}

/// Open connections per client IP, for a per-IP connection limit neither peer has built in.
#[derive(Clone, Debug, Default)]
pub struct PerIp {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One counted connection: uncounted when dropped.
#[derive(Debug)]
pub struct Counted {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIp {
    /// Counts a connection from `ip`, or refuses it (`None`) when `ip` has `max` open.
    #[must_use]
    pub fn admit(&self, ip: IpAddr, max: usize) -> Option<Counted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Counted {
            open: Arc::clone(&self.open),
            ip,
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One request as the peers' metrics middleware sees it: in the in-flight gauge from
/// [`start`](Self::start) to [`finish`](Self::finish), then in the duration histogram.
#[derive(Debug)]
pub struct Tracked {
    method: String,
    route: String,
    started: Instant,
    active: metrics::Gauge,
}

impl Tracked {
    /// A request of `method` matching `route` (its template) starts.
    #[must_use]
    pub fn start(method: String, route: String) -> Self {
        let active = metrics::gauge!(ACTIVE_REQUESTS, "http_request_method" => method.clone());
        active.increment(1.0);
        Self {
            method,
            route,
            started: Instant::now(),
            active,
        }
    }

    /// The request ends with `status` (`None`: the handler failed, nothing is recorded).
    pub fn finish(self, status: Option<u16>) {
        self.active.decrement(1.0);
        if let Some(status) = status {
            metrics::histogram!(
                REQUEST_DURATION,
                "http_request_method" => self.method,
                "http_response_status_code" => status.to_string(),
                "http_route" => self.route,
            )
            .record(self.started.elapsed());
        }
    }
}

/// Installs metrics-exporter-prometheus as the recorder, with the histogram's buckets, and
/// keeps its upkeep running every 5 s on a thread (what its own HTTP listener would do).
pub fn install_metrics() -> metrics_exporter_prometheus::PrometheusHandle {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(BUCKETS)
        .and_then(|builder| builder.install_recorder())
        .unwrap_or_else(|e| panic!("metrics-exporter-prometheus: {e}"));
    let upkeep = handle.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            upkeep.run_upkeep();
        }
    });
    handle
}
