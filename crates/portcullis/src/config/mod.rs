//! One TOML file for every setting of the composed server: [`ServerConfig`].
//!
//! The keys are the command-line flags of the reference server (`examples/hardened`) without
//! their leading dashes, so a file, a command line and the documentation all use one name
//! for each setting (`docs/configuration.md` lists every key with its type, default and
//! meaning):
//!
//! ```toml
//! listen = ["0.0.0.0:8443"]
//! admin = "127.0.0.1:9090"
//! header-timeout = "5s"
//! tls-cert = "/etc/portcullis/cert.pem"
//! tls-key = "/etc/portcullis/key.pem"
//! rate = "100/s"
//! burst = 20
//! max-conns-per-ip = 100
//! trusted-proxy = ["10.0.0.0/8"]
//! ```
//!
//! A key left out keeps the default of the block it configures, the same value the builder
//! uses when its setter is not called: `ServerConfig::default()` is exactly what a
//! [`Builder`](crate::server::Builder) does on its own. Durations are strings (`"250ms"`,
//! `"5s"`, `"1m30s"`); `"0s"` turns a timeout off. A key that is not one of these is an
//! error, never silently ignored: a typo would otherwise leave a limit at its default.
//!
//! Three steps, each usable alone:
//!
//! 1. [`ServerConfig::from_file`] (or [`from_toml_str`](ServerConfig::from_toml_str), or
//!    serde: `ServerConfig` deserializes from any format, as a table of a larger file for
//!    example) reads the settings; an error names the file, the line and the key. Every field
//!    is public, so command-line flags override the file by assignment.
//! 2. [`ServerConfig::check`] finds what would stop the server from starting (errors) and
//!    the dangerous combinations (warnings), each [`Issue`] naming the setting and what to
//!    change.
//! 3. [`ServerConfig::apply`] hands every setting to a [`Builder`](crate::server::Builder):
//!    listeners, admin listener, HTTP deadlines, drain, connection caps, TLS, PROXY protocol.
//!    The rate limit is a tower layer of the application: [`ServerConfig::rate_limit`], or
//!    with `redis` (crate feature `redis`) [`ServerConfig::fleet_limit`].
//!
//! ```no_run
//! use portcullis::config::ServerConfig;
//! use portcullis::prelude::*;
//!
//! # async fn run() -> Result<std::process::ExitCode, Box<dyn std::error::Error>> {
//! let mut config = ServerConfig::from_file("/etc/portcullis/server.toml")?;
//! config.max_conns = 20_000.try_into()?; // a flag overrides the file
//! let report = config.check();
//! for warning in &report.warnings {
//!     eprintln!("warning: {warning}");
//! }
//! if let Some(error) = report.errors.first() {
//!     return Err(error.to_string().into());
//! }
//! let service = tower::service_fn(|_request: http::Request<portcullis::server::RequestBody>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//! });
//! let builder = Server::builder().graceful(Shutdown::from_signals()?);
//! let served = config.apply(builder)?.serve(service).await?;
//! Ok(served.exit_code())
//! # }
//! ```

mod apply;
mod check;
mod de;
mod error;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use portcullis_limit::Quota;
use portcullis_limit::client::IpNet;

pub use apply::ApplyError;

/// The default `redis-timeout`: 5 ms (`portcullis_limit::fleet::DEFAULT_REDIS_TIMEOUT`).
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(5);

/// The default of `overload-fds`: act at 90 % of the descriptor limit, which leaves a tenth
/// of the descriptors for new clients while idle ones are reclaimed.
pub const DEFAULT_OVERLOAD_FDS: u8 = 90;
pub use check::{Issue, Report};
pub use error::ConfigError;

/// Every setting of the composed server, keyed like the reference server's flags.
///
/// Each field's documentation gives its TOML key and default; the defaults are the blocks'
/// own (`ServerConfig::default()` configures a [`Builder`](crate::server::Builder) exactly as
/// leaving its setters alone would), except `listen`, which a builder has no default for.
/// The struct is `#[non_exhaustive]` so that settings can be added: start from
/// [`ServerConfig::default`] or a file and assign fields.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// `listen`: the addresses served; port 0 picks a free port. Default `["127.0.0.1:8080"]`,
    /// loopback, so that nothing is exposed by accident. Under systemd socket activation
    /// (`LISTEN_FDS`) the inherited sockets are served instead.
    #[serde(deserialize_with = "de::addrs")]
    pub listen: Vec<SocketAddr>,
    /// `admin`: the admin listener (`/metrics`, `/livez`, `/readyz`). Default none.
    #[serde(deserialize_with = "de::addr")]
    pub admin: Option<SocketAddr>,
    /// `header-timeout`: deadline for a whole request head, and for the start of a new
    /// connection ([`HttpConfig::header_timeout`](crate::server::HttpConfig::header_timeout)).
    /// Default 10 s; zero turns it off.
    #[serde(deserialize_with = "de::duration")]
    pub header_timeout: Duration,
    /// `idle-timeout`: how long a connection with no request in progress stays open
    /// ([`HttpConfig::idle_timeout`](crate::server::HttpConfig::idle_timeout)). Default 60 s;
    /// zero turns it off.
    #[serde(deserialize_with = "de::duration")]
    pub idle_timeout: Duration,
    /// `drain-delay`: after the shutdown began, how long the server keeps accepting (readiness
    /// already off) before its listeners close
    /// ([`Builder::drain_delay`](crate::server::Builder::drain_delay)). Default 0 s.
    #[serde(deserialize_with = "de::duration")]
    pub drain_delay: Duration,
    /// `drain-timeout`: how long the drain may take before the remaining connections are
    /// closed by force ([`Builder::drain_timeout`](crate::server::Builder::drain_timeout)).
    /// Default 30 s; zero forces them at once.
    #[serde(deserialize_with = "de::duration")]
    pub drain_timeout: Duration,
    /// `tls-cert`: PEM certificate chain; with `tls-key`, every listener serves TLS and the
    /// files are watched and reloaded. Default none (plain HTTP).
    pub tls_cert: Option<PathBuf>,
    /// `tls-key`: PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls-cert`. Default none.
    pub tls_key: Option<PathBuf>,
    /// `handshake-timeout`: deadline for the TLS handshake of a new connection
    /// ([`TlsConfig::handshake_timeout`](crate::tls::TlsConfig::handshake_timeout)). Default
    /// 10 s; zero turns it off.
    #[serde(deserialize_with = "de::duration")]
    pub handshake_timeout: Duration,
    /// `min-body-rate`: the minimum rate of a request body in bytes per second, over the time
    /// the application waits for it, once `min-rate-grace` has passed
    /// ([`HttpConfig::min_body_rate`](crate::server::HttpConfig::min_body_rate)). Default 240;
    /// zero turns it off.
    pub min_body_rate: u32,
    /// `min-response-rate`: the minimum rate in bytes per second at which clients must take
    /// responses, once `min-rate-grace` has passed
    /// ([`HttpConfig::min_response_rate`](crate::server::HttpConfig::min_response_rate)).
    /// Default 240; zero turns it off.
    pub min_response_rate: u32,
    /// `min-rate-grace`: the grace period of both minimum rates. Default 5 s.
    #[serde(deserialize_with = "de::duration")]
    pub min_rate_grace: Duration,
    /// `rate`: the per-client request rate (`"100/s"`, `"600/m"`, `"1000/h"`, optionally
    /// `"100/s burst 20"`; see [`Quota`]). Default none (no rate limit).
    #[serde(deserialize_with = "de::quota")]
    pub rate: Option<Quota>,
    /// `burst`: requests a client may send at once after a quiet period; overrides a burst
    /// given in `rate`. Default: the rate's count.
    #[serde(deserialize_with = "de::nonzero_u32")]
    pub burst: Option<NonZeroU32>,
    /// `max-conns`: connections open at once; more are closed as soon as they are accepted.
    /// Default [`DEFAULT_MAX_CONNECTIONS`](crate::limit::DEFAULT_MAX_CONNECTIONS) (10 000).
    #[serde(deserialize_with = "de::nonzero_usize")]
    pub max_conns: NonZeroUsize,
    /// `max-conns-per-ip`: connections open at once from one client address (IPv6: one /64);
    /// trusted proxies are exempt. Default none (no per-client cap).
    #[serde(deserialize_with = "de::nonzero_u32")]
    pub max_conns_per_ip: Option<NonZeroU32>,
    /// `trusted-proxy`: peers whose `Forwarded` / `X-Forwarded-For` (and, with
    /// `proxy-protocol`, PROXY) header names the client; a bare address is a /32 or /128.
    /// Default none: every peer is its own client.
    #[serde(deserialize_with = "de::nets")]
    pub trusted_proxy: Vec<IpNet>,
    /// `proxy-protocol`: connections from `trusted-proxy` peers must start with a PROXY v1/v2
    /// header. Default `false`.
    pub proxy_protocol: bool,
    /// `acceptors`: `SO_REUSEPORT` sockets (each with its own accept loop) per listen
    /// address. Default none: one per core
    /// ([`ListenerConfig`](crate::listen::ListenerConfig)'s default).
    #[serde(deserialize_with = "de::nonzero_usize_opt")]
    pub acceptors: Option<NonZeroUsize>,
    /// `per-core`: one single-threaded runtime per core, each with its own listeners (then
    /// `acceptors` is one per core). Default `false`.
    pub per_core: bool,
    /// `allow`: the only client ranges served (checked at accept, after a trusted PROXY
    /// header names the client); a bare address is a /32 or /128. Default none: every client
    /// is served. Re-read from the file on SIGHUP.
    #[serde(deserialize_with = "de::nets")]
    pub allow: Vec<IpNet>,
    /// `deny`: client ranges refused at accept, before any byte is read or written; deny
    /// wins over `allow`. Default none. Re-read from the file on SIGHUP.
    #[serde(deserialize_with = "de::nets")]
    pub deny: Vec<IpNet>,
    /// `ban-after`: a client refused this many times within `ban-window` (429s, per-client
    /// connection cap refusals, malformed requests, failed TLS handshakes) is banned. Default
    /// none: no bans.
    #[serde(deserialize_with = "de::nonzero_u32")]
    pub ban_after: Option<NonZeroU32>,
    /// `ban-window`: the window the `ban-after` refusals must fall in. Default 60 s.
    #[serde(deserialize_with = "de::duration")]
    pub ban_window: Duration,
    /// `ban-for`: the length of a first ban; each repeat ban within a day doubles it.
    /// Default 60 s.
    #[serde(deserialize_with = "de::duration")]
    pub ban_for: Duration,
    /// `ban-max`: the ceiling of a doubled ban. Default 1 h.
    #[serde(deserialize_with = "de::duration")]
    pub ban_max: Duration,
    /// `ban-exempt`: clients never banned (trusted proxies never are either). Default none.
    #[serde(deserialize_with = "de::nets")]
    pub ban_exempt: Vec<IpNet>,
    /// `redis`: the Redis that keeps the `rate` limit for every instance sharing it
    /// (`redis://[:PASSWORD@]HOST[:PORT][/DB]`, or comma-separated URLs of a Redis Cluster's
    /// seed nodes; crate feature `redis`,
    /// [`ServerConfig::fleet_limit`]). Default none: each instance limits alone.
    pub redis: Option<String>,
    /// `fleet-size`: how many instances share the `redis` quota; while Redis fails each one
    /// limits locally at `rate` / `fleet-size`. Default 1.
    #[serde(deserialize_with = "de::nonzero_u32")]
    pub fleet_size: Option<NonZeroU32>,
    /// `redis-timeout`: the deadline of every Redis call, the longest a request waits for
    /// Redis before it is decided locally. Default 5 ms.
    #[serde(deserialize_with = "de::duration")]
    pub redis_timeout: Duration,
    /// `ready-requires`: dependencies `/readyz` waits for, each `tcp://HOST:PORT` (the
    /// connection is accepted) or `http://HOST:PORT/PATH` (a 2xx answer), checked in the
    /// background every second with a one-second timeout: not ready until each has
    /// succeeded once, down after 3 failures in a row, up again after 2 successes. A probe
    /// never runs a check, and `/livez` never depends on one. Default none.
    pub ready_requires: Vec<String>,
    /// `overload-fds`: the descriptor use, in percent of the soft `RLIMIT_NOFILE`, at which
    /// the overload manager closes idle keep-alive connections (longest idle first) and
    /// stops keeping new ones alive; timeouts shrink from 10 points below it, accepting stops
    /// halfway from it to 100 ([`Overload::descriptors_at`](portcullis_health::Overload::descriptors_at)).
    /// 1 to 100. Default 90.
    pub overload_fds: u8,
    /// `upgrade-exec`: the executable a zero-downtime upgrade (SIGUSR2) starts with the
    /// server's arguments and listening sockets. Default none: the server's own.
    pub upgrade_exec: Option<PathBuf>,
    /// `upgrade-timeout`: how long the new process of an upgrade has to report ready
    /// before it is killed and this one serves on. Default 30 s.
    #[serde(deserialize_with = "de::duration")]
    pub upgrade_timeout: Duration,
    /// `upgrade-socket`: a Unix socket path on which the server hands its sockets to a
    /// process it did not start (a new container sharing the socket's volume); a server
    /// started with the same path while another serves there takes over from it. Default
    /// none.
    pub upgrade_socket: Option<PathBuf>,
    /// The file these settings were read from and its own `allow` and `deny` lists, for the
    /// SIGHUP reload of the filter.
    #[serde(skip)]
    source: Option<FilterSource>,
}

/// Where the filter lists are re-read from on SIGHUP, and the lists given elsewhere (flags)
/// that every reload keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FilterSource {
    path: PathBuf,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
            admin: None,
            header_timeout: portcullis_server::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: portcullis_server::DEFAULT_IDLE_TIMEOUT,
            drain_delay: portcullis_shutdown::DEFAULT_DRAIN_DELAY,
            drain_timeout: portcullis_server::DEFAULT_DRAIN_TIMEOUT,
            tls_cert: None,
            tls_key: None,
            handshake_timeout: portcullis_tls::DEFAULT_HANDSHAKE_TIMEOUT,
            min_body_rate: portcullis_server::DEFAULT_MIN_RATE.bytes_per_second(),
            min_response_rate: portcullis_server::DEFAULT_MIN_RATE.bytes_per_second(),
            min_rate_grace: portcullis_server::DEFAULT_MIN_RATE.grace(),
            rate: None,
            burst: None,
            max_conns: NonZeroUsize::new(portcullis_limit::DEFAULT_MAX_CONNECTIONS)
                .unwrap_or(NonZeroUsize::MIN),
            max_conns_per_ip: None,
            trusted_proxy: Vec::new(),
            proxy_protocol: false,
            acceptors: None,
            per_core: false,
            allow: Vec::new(),
            deny: Vec::new(),
            ban_after: None,
            ban_window: portcullis_limit::DEFAULT_BAN_WINDOW,
            ban_for: portcullis_limit::DEFAULT_BAN_FOR,
            ban_max: portcullis_limit::DEFAULT_BAN_MAX,
            ban_exempt: Vec::new(),
            redis: None,
            fleet_size: None,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            ready_requires: Vec::new(),
            overload_fds: DEFAULT_OVERLOAD_FDS,
            upgrade_exec: None,
            upgrade_timeout: portcullis_server::upgrade::DEFAULT_UPGRADE_TIMEOUT,
            upgrade_socket: None,
            source: None,
        }
    }
}

impl ServerConfig {
    /// Every key of the file, in the order of the documentation.
    pub const KEYS: &'static [&'static str] = &[
        "listen",
        "admin",
        "header-timeout",
        "idle-timeout",
        "drain-delay",
        "drain-timeout",
        "tls-cert",
        "tls-key",
        "handshake-timeout",
        "min-body-rate",
        "min-response-rate",
        "min-rate-grace",
        "rate",
        "burst",
        "max-conns",
        "max-conns-per-ip",
        "trusted-proxy",
        "proxy-protocol",
        "acceptors",
        "per-core",
        "allow",
        "deny",
        "ban-after",
        "ban-window",
        "ban-for",
        "ban-max",
        "ban-exempt",
        "redis",
        "fleet-size",
        "redis-timeout",
        "ready-requires",
        "overload-fds",
        "upgrade-exec",
        "upgrade-timeout",
        "upgrade-socket",
    ];

    /// Reads the settings from TOML text; keys left out keep their defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the line and the key: invalid TOML, an unknown key, a value of
    /// the wrong type or out of range (a bad duration, a zero cap, a bad address).
    pub fn from_toml_str(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|error| ConfigError::from_toml(None, text, &error))
    }

    /// Reads the settings from the TOML file at `path`; keys left out keep their defaults.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file: it cannot be read, or (with the line and the key) any
    /// error of [`from_toml_str`](Self::from_toml_str).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::read(path, e))?;
        let mut config: Self = toml::from_str(&text)
            .map_err(|error| ConfigError::from_toml(Some(path), &text, &error))?;
        config.source = Some(FilterSource {
            path: path.to_path_buf(),
            allow: config.allow.clone(),
            deny: config.deny.clone(),
        });
        Ok(config)
    }

    /// The file these settings were read with [`from_file`](Self::from_file) from.
    #[must_use]
    pub fn source(&self) -> Option<&Path> {
        self.source.as_ref().map(|source| source.path.as_path())
    }

    /// The rate limit's quota: `rate`, with `burst` when given.
    #[must_use]
    pub fn quota(&self) -> Option<Quota> {
        let quota = self.rate?;
        Some(match self.burst {
            Some(burst) => quota.burst(burst),
            None => quota,
        })
    }
}

#[cfg(test)]
mod tests;
