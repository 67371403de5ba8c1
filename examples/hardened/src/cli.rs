//! The command line and `--config` file: the stable contract documented in
//! docs/architecture.md. Flags override the file; the file overrides the defaults. Failures
//! are one `error: ` line and exit status 2 (bad usage, start-up) or 1 (while serving).

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use portcullis::limit::client::IpNet;
use portcullis::limit::{DEFAULT_MAX_CONNECTIONS, Quota};
use portcullis::listen::parse_duration;
use serde::Deserialize;

/// portcullis's reference server: the full hardened stack behind a stable command line.
#[derive(Debug, Parser)]
#[command(name = "hardened", version, about)]
struct Flags {
    /// Listen address; repeatable. Port 0 picks a free port. [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Admin listener serving /metrics (Prometheus), /livez and /readyz; off unless given.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Deadline for a whole request head, and for the start of a new connection. [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    header_timeout: Option<Duration>,
    /// Close connections with no request in progress after this long. [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    idle_timeout: Option<Duration>,
    /// After a shutdown signal, keep accepting and serving this long (readiness already off) before closing the listeners. [default: 0s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    drain_delay: Option<Duration>,
    /// After a shutdown signal, force the remaining connections closed after this long. [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    drain_timeout: Option<Duration>,
    /// SO_REUSEPORT sockets (each with its own accept loop) per listen address; --per-core uses one per core. [default: cores]
    #[arg(long, value_name = "N")]
    acceptors: Option<usize>,
    /// One single-threaded runtime per core, each with its own listeners and service.
    #[arg(long)]
    per_core: bool,
    /// PEM certificate chain: serve TLS on every --listen (SIGHUP or a file change reloads it).
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Deadline for the TLS handshake of a new connection. [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = duration)]
    handshake_timeout: Option<Duration>,
    /// Per-client request rate limit: N/s, N/m or N/h (answered 429 past it); off unless given.
    #[arg(long, value_name = "N/s")]
    rate: Option<String>,
    /// Requests a client may send at once after a quiet period. [default: the rate's N]
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
    /// Connections open at once; more are closed as soon as they are accepted. [default: 10000]
    #[arg(long, value_name = "N")]
    max_conns: Option<usize>,
    /// Connections open at once from one client address (IPv6: one /64); off unless given.
    #[arg(long, value_name = "N")]
    max_conns_per_ip: Option<u32>,
    /// Peers whose Forwarded / X-Forwarded-For / PROXY header is believed; repeatable.
    #[arg(long, value_name = "CIDR")]
    trusted_proxy: Vec<String>,
    /// Expect a PROXY protocol header (v1 or v2) on connections from --trusted-proxy peers.
    #[arg(long)]
    proxy_protocol: bool,
    /// TOML file with the same settings; keys are the flag names without the leading dashes.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn duration(value: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|e| e.to_string())
}

/// The `--config` file.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
struct File {
    listen: Option<Vec<SocketAddr>>,
    admin: Option<SocketAddr>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    drain_delay: Option<String>,
    drain_timeout: Option<String>,
    acceptors: Option<usize>,
    per_core: Option<bool>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    handshake_timeout: Option<String>,
    rate: Option<String>,
    burst: Option<u32>,
    max_conns: Option<usize>,
    max_conns_per_ip: Option<u32>,
    trusted_proxy: Option<Vec<String>>,
    proxy_protocol: Option<bool>,
}

/// Everything the server needs, resolved from defaults, the file and the flags.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) listen: Vec<SocketAddr>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) drain_delay: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) acceptors: usize,
    pub(crate) per_core: bool,
    /// Certificate chain and key files, when serving TLS.
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) handshake_timeout: Duration,
    /// The per-client request quota, burst included.
    pub(crate) rate: Option<Quota>,
    pub(crate) max_conns: usize,
    pub(crate) max_conns_per_ip: Option<NonZeroU32>,
    pub(crate) trusted_proxies: Vec<IpNet>,
    pub(crate) proxy_protocol: bool,
}

/// What `parse` decided.
pub(crate) enum Parsed {
    /// Run with these settings.
    Run(Box<Settings>),
    /// `--help` or `--version`: print this on stdout and exit successfully.
    Print(String),
}

/// Parses the process arguments and the config file they name.
///
/// # Errors
///
/// One line describing the first problem: a bad flag, an unreadable or invalid config file.
pub(crate) fn parse() -> Result<Parsed, String> {
    let flags = match Flags::try_parse() {
        Ok(flags) => flags,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                return Ok(Parsed::Print(error.render().to_string()));
            }
            let rendered = error.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid arguments");
            return Err(first.trim_start_matches("error: ").to_owned());
        }
    };
    let file = match &flags.config {
        Some(path) => read_file(path)?,
        None => File::default(),
    };
    let from_file = |value: &Option<String>, key: &str| -> Result<Option<Duration>, String> {
        value
            .as_deref()
            .map(|v| parse_duration(v).map_err(|e| format!("invalid `{key}` in config file: {e}")))
            .transpose()
    };
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let listen = if !flags.listen.is_empty() {
        flags.listen
    } else if let Some(listen) = file.listen.filter(|l| !l.is_empty()) {
        listen
    } else {
        vec![SocketAddr::from(([127, 0, 0, 1], 8080))]
    };
    let acceptors = flags.acceptors.or(file.acceptors).unwrap_or(cores);
    if acceptors == 0 {
        return Err("invalid value '0' for '--acceptors': must be at least 1".to_owned());
    }
    let rate = match flags.rate.as_deref().or(file.rate.as_deref()) {
        Some(text) => Some(
            text.parse::<Quota>()
                .map_err(|e| format!("invalid value for '--rate': {e}"))?,
        ),
        None => None,
    };
    let burst = flags.burst.or(file.burst);
    let rate = match (rate, burst) {
        (Some(quota), Some(burst)) => Some(quota.burst(
            NonZeroU32::new(burst).ok_or("invalid value '0' for '--burst': must be at least 1")?,
        )),
        (Some(quota), None) => Some(quota),
        (None, Some(_)) => return Err("'--burst' needs '--rate'".to_owned()),
        (None, None) => None,
    };
    let max_conns = flags
        .max_conns
        .or(file.max_conns)
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_conns == 0 {
        return Err("invalid value '0' for '--max-conns': must be at least 1".to_owned());
    }
    let max_conns_per_ip = match flags.max_conns_per_ip.or(file.max_conns_per_ip) {
        Some(n) => Some(NonZeroU32::new(n).ok_or(
            "invalid value '0' for '--max-conns-per-ip': must be at least 1 (leave it out for no cap)",
        )?),
        None => None,
    };
    let trusted = if flags.trusted_proxy.is_empty() {
        file.trusted_proxy.unwrap_or_default()
    } else {
        flags.trusted_proxy
    };
    let trusted_proxies = trusted
        .iter()
        .map(|cidr| parse_cidr(cidr))
        .collect::<Result<Vec<_>, _>>()?;
    let tls = match (
        flags.tls_cert.or(file.tls_cert),
        flags.tls_key.or(file.tls_key),
    ) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => return Err("'--tls-cert' and '--tls-key' go together".to_owned()),
    };
    let handshake_timeout = flags
        .handshake_timeout
        .or(from_file(&file.handshake_timeout, "handshake-timeout")?)
        .unwrap_or(portcullis::tls::DEFAULT_HANDSHAKE_TIMEOUT);
    let proxy_protocol = flags.proxy_protocol || file.proxy_protocol.unwrap_or(false);
    if proxy_protocol && trusted_proxies.is_empty() {
        return Err("'--proxy-protocol' needs at least one '--trusted-proxy'".to_owned());
    }
    Ok(Parsed::Run(Box::new(Settings {
        listen,
        admin: flags.admin.or(file.admin),
        header_timeout: flags
            .header_timeout
            .or(from_file(&file.header_timeout, "header-timeout")?)
            .unwrap_or(portcullis::server::DEFAULT_HEADER_TIMEOUT),
        idle_timeout: flags
            .idle_timeout
            .or(from_file(&file.idle_timeout, "idle-timeout")?)
            .unwrap_or(portcullis::server::DEFAULT_IDLE_TIMEOUT),
        drain_delay: flags
            .drain_delay
            .or(from_file(&file.drain_delay, "drain-delay")?)
            .unwrap_or(Duration::ZERO),
        drain_timeout: flags
            .drain_timeout
            .or(from_file(&file.drain_timeout, "drain-timeout")?)
            .unwrap_or(portcullis::server::DEFAULT_DRAIN_TIMEOUT),
        acceptors,
        per_core: flags.per_core || file.per_core.unwrap_or(false),
        tls,
        handshake_timeout,
        rate,
        max_conns,
        max_conns_per_ip,
        trusted_proxies,
        proxy_protocol,
    })))
}

/// A CIDR range, or a single address (a /32 or /128).
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!("invalid value '{text}' for '--trusted-proxy': expected a CIDR range like 10.0.0.0/8 or an address")
        })
}

fn read_file(path: &Path) -> Result<File, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map(|span| {
                let line = text[..span.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        format!(
            "invalid config file {}: {}{at}",
            path.display(),
            e.message().trim().replace('\n', " ")
        )
    })
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

impl From<portcullis::server::Error> for Failed {
    fn from(error: portcullis::server::Error) -> Self {
        // A core that died while serving is a serving failure; anything else is start-up.
        let serving = matches!(error, portcullis::server::Error::CorePanicked { .. });
        Failed(error.to_string(), if serving { 1 } else { 2 })
    }
}
