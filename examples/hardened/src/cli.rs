//! The command line and `--config` file: the stable contract documented in
//! docs/architecture.md and docs/configuration.md. Flags override the file; the file
//! overrides the defaults (`portcullis::config::ServerConfig`, which reads, checks and applies
//! the file). Failures are one `error: ` line naming the flag or key, and exit status 2 (bad
//! usage, start-up) or 1 (while serving).

use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;
use portcullis::config::ServerConfig;
use portcullis::limit::Quota;
use portcullis::limit::client::IpNet;
use portcullis::listen::parse_duration;

/// portcullis's reference server: the full hardened stack behind a stable command line.
///
/// Durations are written 250ms, 5s, 1m30s; 0s turns a timeout off. Every flag can also come
/// from --config FILE (docs/configuration.md); a flag given overrides the file.
#[derive(Debug, Parser)]
#[command(name = "hardened", version, about, long_about)]
struct Flags {
    /// Listen address; repeatable. Port 0 picks a free port. [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Admin listener serving /metrics (Prometheus), /livez and /readyz; off unless given.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Deadline for a whole request head, and for the start of a new connection; 0s: off. [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    header_timeout: Option<Duration>,
    /// Close connections with no request in progress after this long; 0s: off. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    idle_timeout: Option<Duration>,
    /// After a shutdown signal, keep accepting and serving this long (readiness already off) before closing the listeners. [default: 0s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    drain_delay: Option<Duration>,
    /// After a shutdown signal, force the remaining connections closed after this long. [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    drain_timeout: Option<Duration>,
    /// SO_REUSEPORT sockets (each with its own accept loop) per listen address; --per-core uses one per core. [default: cores]
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroUsize>)]
    acceptors: Option<NonZeroUsize>,
    /// One single-threaded runtime per core, each with its own listeners and service.
    #[arg(long)]
    per_core: bool,
    /// PEM certificate chain: serve TLS on every --listen (SIGHUP or a file change reloads it); needs --tls-key.
    #[arg(long, value_name = "PATH")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert; keep it readable by this user only.
    #[arg(long, value_name = "PATH")]
    tls_key: Option<PathBuf>,
    /// Deadline for the TLS handshake of a new connection; 0s: off. [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    handshake_timeout: Option<Duration>,
    /// Minimum rate of a request body, over the time the application waits for it (B/s; also written 240B/s); below it 408 and the connection closed; 0: off. [default: 240]
    #[arg(long, value_name = "B/s", value_parser = byte_rate)]
    min_body_rate: Option<u32>,
    /// Minimum rate at which clients must take responses (B/s): a write the socket does not take gets the grace, longer at this rate for its size; 0: off. [default: 240]
    #[arg(long, value_name = "B/s", value_parser = byte_rate)]
    min_response_rate: Option<u32>,
    /// Grace period of both minimum rates. [default: 5s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    min_rate_grace: Option<Duration>,
    /// Per-client request rate limit, answered 429 past it: N/s, N/m or N/h (also N/sec, N/second, N/min, N/minute, N/hour), optionally followed by "burst B"; off unless given.
    #[arg(long, value_name = "N/s", value_parser = quota)]
    rate: Option<Quota>,
    /// Requests a client may send at once after a quiet period; needs --rate. [default: the rate's N]
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroU32>)]
    burst: Option<NonZeroU32>,
    /// Descriptor use (percent of the soft RLIMIT_NOFILE) at which the overload manager closes idle keep-alive connections, longest idle first, and stops keeping new ones alive. [default: 90]
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    overload_fds: Option<u8>,
    /// The executable a zero-downtime upgrade (SIGUSR2) starts with these arguments and every listening socket. [default: this one]
    #[arg(long, value_name = "PATH")]
    upgrade_exec: Option<PathBuf>,
    /// How long the new process of an upgrade has to report ready; past it, it is killed and this one serves on. [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    upgrade_timeout: Option<Duration>,
    /// A Unix socket on which to hand every listening socket to a server this one did not start; started with the same path while another serves there, this one takes over from it. [default: none]
    #[arg(long, value_name = "PATH")]
    upgrade_socket: Option<PathBuf>,
    /// Connections open at once; more are closed as soon as they are accepted. [default: 10000]
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroUsize>)]
    max_conns: Option<NonZeroUsize>,
    /// Connections open at once from one client address (IPv6: one /64); off unless given.
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroU32>)]
    max_conns_per_ip: Option<NonZeroU32>,
    /// Peers whose Forwarded / X-Forwarded-For / PROXY header is believed (a CIDR range or an address); repeatable.
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    trusted_proxy: Vec<IpNet>,
    /// Expect a PROXY protocol header (v1 or v2) on connections from --trusted-proxy peers.
    #[arg(long)]
    proxy_protocol: bool,
    /// Serve only clients inside this range (a CIDR range or an address), checked at accept; repeatable, added to the file's list.
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    allow: Vec<IpNet>,
    /// Refuse clients inside this range at accept, before any byte is read or written; wins over --allow; repeatable, added to the file's list.
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    deny: Vec<IpNet>,
    /// Ban a client refused this many times within --ban-window (429s, --max-conns-per-ip refusals, malformed requests, failed TLS handshakes); off unless given.
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroU32>)]
    ban_after: Option<NonZeroU32>,
    /// The window the --ban-after refusals must fall in. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    ban_window: Option<Duration>,
    /// Length of a first ban; doubled on each repeat within a day. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    ban_for: Option<Duration>,
    /// Ceiling of a doubled ban. [default: 1h]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    ban_max: Option<Duration>,
    /// Clients never banned (a CIDR range or an address; trusted proxies never are either); repeatable.
    #[arg(long, value_name = "CIDR", value_parser = cidr)]
    ban_exempt: Vec<IpNet>,
    /// Redis keeping the --rate limit for every instance that shares it: redis://HOST:PORT/DB, with :PASSWORD@ before HOST if it needs one (several, comma-separated: a Redis Cluster's seed nodes); off unless given.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Instances sharing the --redis quota: while Redis is slow or down each one limits locally at rate / N. [default: 1]
    #[arg(long, value_name = "N", value_parser = at_least_one::<NonZeroU32>)]
    fleet_size: Option<NonZeroU32>,
    /// Deadline of every Redis call: the longest a request waits for Redis before it is decided locally. [default: 5ms]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    redis_timeout: Option<Duration>,
    /// A dependency /readyz waits for: tcp://HOST:PORT (the connection is accepted) or http://HOST:PORT/PATH (a 2xx answer), checked every 1s in the background; not ready until it has succeeded once, down after 3 failures, up after 2 successes; repeatable.
    #[arg(long, value_name = "URL", value_parser = check_url)]
    ready_requires: Vec<String>,
    /// TOML file with the same settings; keys are the flag names without the leading dashes.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the flags and the config file without serving: errors and warnings on stderr, exit 0 (no errors) or 2.
    #[arg(long)]
    check_config: bool,
}

fn duration(value: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|e| e.to_string())
}

/// Bytes per second: `240`, or `240B/s`.
fn byte_rate(value: &str) -> Result<u32, String> {
    let digits = value.trim().trim_end_matches("B/s").trim_end();
    digits.parse().map_err(|_| {
        format!("invalid rate {value:?}: expected bytes per second, such as 240 or 240B/s")
    })
}

fn quota(value: &str) -> Result<Quota, String> {
    value
        .parse()
        .map_err(|e: portcullis::limit::QuotaError| e.to_string())
}

fn at_least_one<T: FromStr>(value: &str) -> Result<T, String> {
    value
        .trim()
        .parse()
        .map_err(|_| match value.trim().parse::<u64>() {
            Ok(0) => "must be at least 1".to_owned(),
            Ok(_) => "too large".to_owned(),
            Err(_) => "expected a whole number, at least 1".to_owned(),
        })
}

/// A URL of `--ready-requires`, checked as the server will read it.
fn check_url(text: &str) -> Result<String, String> {
    portcullis::health::checks::from_url(text).map(|_| text.to_owned())
}

/// A CIDR range, or a single address (a /32 or /128).
fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| "expected a CIDR range like 10.0.0.0/8 or an address".to_owned())
}

impl Flags {
    /// Every flag given replaces the file's (or the default) value; `--allow` and `--deny`
    /// add to the file's lists.
    fn override_file(self, config: &mut ServerConfig) {
        if !self.listen.is_empty() {
            config.listen = self.listen;
        }
        if !self.trusted_proxy.is_empty() {
            config.trusted_proxy = self.trusted_proxy;
        }
        if !self.ban_exempt.is_empty() {
            config.ban_exempt = self.ban_exempt;
        }
        if !self.ready_requires.is_empty() {
            config.ready_requires = self.ready_requires;
        }
        // Added to the file's lists, which a SIGHUP re-reads (these stay).
        config.allow.extend(self.allow);
        config.deny.extend(self.deny);
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(value) = self.$field { config.$field = value; })* };
        }
        set!(
            header_timeout,
            idle_timeout,
            drain_delay,
            drain_timeout,
            handshake_timeout,
            min_body_rate,
            min_response_rate,
            min_rate_grace,
            overload_fds,
            upgrade_timeout,
            max_conns,
            ban_window,
            ban_for,
            ban_max,
            redis_timeout
        );
        macro_rules! set_some {
            ($($field:ident),*) => { $(if self.$field.is_some() { config.$field = self.$field; })* };
        }
        set_some!(
            admin,
            acceptors,
            tls_cert,
            tls_key,
            rate,
            burst,
            max_conns_per_ip,
            ban_after,
            redis,
            fleet_size,
            upgrade_exec,
            upgrade_socket
        );
        config.per_core |= self.per_core;
        config.proxy_protocol |= self.proxy_protocol;
    }
}

/// What `parse` decided.
pub(crate) enum Parsed {
    /// Run with these settings; log the warnings once serving.
    Run(Box<ServerConfig>, Vec<String>),
    /// `--help` or `--version`: print this on stdout and exit successfully.
    Print(String),
    /// `--check-config` is done and printed its findings: exit with this status.
    Exit(ExitCode),
}

/// Parses the process arguments and the config file they name, and checks the result.
///
/// # Errors
///
/// One line naming the flag or the key: a bad flag, an unreadable or invalid config file,
/// settings that do not go together, TLS files that cannot be loaded.
pub(crate) fn parse() -> Result<Parsed, String> {
    let flags = match Flags::try_parse() {
        Ok(flags) => flags,
        Err(error) => return usage(&error),
    };
    let check_only = flags.check_config;
    let mut config = match &flags.config {
        Some(path) => ServerConfig::from_file(path).map_err(|e| e.to_string())?,
        None => ServerConfig::default(),
    };
    flags.override_file(&mut config);
    let report = config.check();
    let warnings = report.warnings.iter().map(|w| w.to_flag_string());
    if check_only {
        for error in &report.errors {
            eprintln!("error: {}", error.to_flag_string());
        }
        warnings.for_each(|warning| eprintln!("warning: {warning}"));
        return Ok(Parsed::Exit(ExitCode::from(if report.is_ok() {
            0
        } else {
            2
        })));
    }
    match report.errors.first() {
        Some(error) => Err(error.to_flag_string()),
        None => Ok(Parsed::Run(Box::new(config), warnings.collect())),
    }
}

/// clap's error as one line: its message, with the arguments it lists on the following lines
/// (the missing ones, say) and its tips, without the usage and the pointer to `--help`.
fn usage(error: &clap::Error) -> Result<Parsed, String> {
    use clap::error::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return Ok(Parsed::Print(error.render().to_string()));
    }
    let rendered = error.render().to_string();
    let line = rendered
        .lines()
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| match line.strip_prefix("tip: ") {
            Some(tip) => format!("({tip})"),
            None => line.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    Err(line.trim_start_matches("error: ").to_owned())
}

/// Why `run` failed: the one line to print, and the exit status (2: start-up, 1: serving).
pub(crate) struct Failed(pub(crate) String, pub(crate) u8);

impl Failed {
    /// Prints the `error: ` line and gives the exit status.
    pub(crate) fn exit(self) -> std::process::ExitCode {
        eprintln!("error: {}", self.0);
        std::process::ExitCode::from(self.1)
    }
}

/// A start-up failure.
pub(crate) fn start_up(error: impl std::fmt::Display) -> Failed {
    Failed(error.to_string(), 2)
}

impl From<portcullis::config::ApplyError> for Failed {
    fn from(error: portcullis::config::ApplyError) -> Self {
        Failed(error.to_string(), 2)
    }
}

impl From<portcullis::server::Error> for Failed {
    fn from(error: portcullis::server::Error) -> Self {
        // A core that died while serving is a serving failure; anything else is start-up.
        let serving = matches!(error, portcullis::server::Error::CorePanicked { .. });
        Failed(error.to_string(), if serving { 1 } else { 2 })
    }
}
