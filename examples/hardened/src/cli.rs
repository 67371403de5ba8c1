//! The command line and `--config` file: the stable contract documented in
//! docs/architecture.md. Flags override the file; the file overrides the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use keel::listen::parse_duration;
use serde::Deserialize;

/// keel's reference server: the full hardened stack behind a stable command line.
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
}

/// What `parse` decided.
pub(crate) enum Parsed {
    /// Run with these settings.
    Run(Settings),
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
    Ok(Parsed::Run(Settings {
        listen,
        admin: flags.admin.or(file.admin),
        header_timeout: flags
            .header_timeout
            .or(from_file(&file.header_timeout, "header-timeout")?)
            .unwrap_or(keel::server::DEFAULT_HEADER_TIMEOUT),
        idle_timeout: flags
            .idle_timeout
            .or(from_file(&file.idle_timeout, "idle-timeout")?)
            .unwrap_or(keel::server::DEFAULT_IDLE_TIMEOUT),
        drain_delay: flags
            .drain_delay
            .or(from_file(&file.drain_delay, "drain-delay")?)
            .unwrap_or(Duration::ZERO),
        drain_timeout: flags
            .drain_timeout
            .or(from_file(&file.drain_timeout, "drain-timeout")?)
            .unwrap_or(keel::server::DEFAULT_DRAIN_TIMEOUT),
        acceptors,
        per_core: flags.per_core || file.per_core.unwrap_or(false),
    }))
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
