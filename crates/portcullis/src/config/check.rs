//! [`ServerConfig::check`]: what would stop the server from starting, and what is dangerous.
//!
//! Errors are what [`ServerConfig::apply`] or the server would refuse: settings that need
//! each other, TLS files that cannot be loaded. Warnings are combinations that start fine
//! and fail in production; each says what to change:
//!
//! | setting | warned when | why |
//! |---|---|---|
//! | `header-timeout`, `idle-timeout`, `handshake-timeout` | `0s` (off) | a client holds a connection (a descriptor, memory) for as long as it likes |
//! | `min-body-rate`, `min-response-rate` | `0` (off) | a client trickling a body, or not reading its response, holds a connection for as long as it likes |
//! | `max-conns` | above half of the soft `RLIMIT_NOFILE` | descriptors run out before the cap refuses anyone: accepts fail for everyone |
//! | `trusted-proxy` | covers every IPv4 or IPv6 address | any client names its own address: per-client limits and logs believe it |
//! | `drain-delay` + `drain-timeout` | above 30 s | Kubernetes' default grace period: the process is killed mid-drain |
//! | `tls-key` | readable by group or others | the private key is exposed to other users of the host |
//! | `admin` | not a loopback address | `/metrics` and the admin routes are reachable from the network |
//! | `ban-after` | 1 | a single 429 or dropped TLS handshake locks a client out |
//! | `ban-window`, `ban-for`, `ban-max`, `ban-exempt` | set without `ban-after` | they do nothing |
//! | `ban-max` | below `ban-for` | bans never escalate |
//! | `allow` | given, without the loopback range | the server's own health checks from the host are refused |
//! | `fleet-size`, `redis-timeout` | set without `redis` | they do nothing |
//! | `redis` | without `fleet-size` | while Redis fails every instance limits at the whole rate |
//! | `redis-timeout` | above 50 ms | every request may wait that long for a slow Redis before it is decided locally |
//! | `ready-requires` | set without `admin` | `/readyz` is served only on the admin listener: nothing reads the checks |

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use portcullis_limit::client::IpNet;

use super::ServerConfig;

/// Kubernetes' default `terminationGracePeriodSeconds`.
const GRACE_PERIOD: Duration = Duration::from_secs(30);

/// What [`ServerConfig::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// What would stop the server from starting.
    pub errors: Vec<Issue>,
    /// Dangerous combinations: the server starts, but should not be run like this.
    pub warnings: Vec<Issue>,
}

impl Report {
    /// No errors (there may be warnings).
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// One problem of a configuration: the setting it is about, what is wrong and what to change.
///
/// `Display` names settings as TOML keys (`` `max-conns` ``);
/// [`to_flag_string`](Self::to_flag_string) names them as command-line flags
/// (`'--max-conns'`), for programs whose flags are the keys with dashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    setting: &'static str,
    parts: Vec<Part>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Key(&'static str),
}

impl Issue {
    /// An issue about `setting`, whose message starts with that setting's name.
    fn about(setting: &'static str) -> Self {
        Self {
            setting,
            parts: vec![Part::Key(setting)],
        }
    }

    /// An issue about `setting` with this message.
    fn plain(setting: &'static str, text: String) -> Self {
        Self {
            setting,
            parts: vec![Part::Text(text)],
        }
    }

    fn text(mut self, text: impl Into<String>) -> Self {
        self.parts.push(Part::Text(text.into()));
        self
    }

    fn key(mut self, key: &'static str) -> Self {
        self.parts.push(Part::Key(key));
        self
    }

    /// The key of the setting this is about (`"max-conns"`).
    #[must_use]
    pub fn setting(&self) -> &'static str {
        self.setting
    }

    /// The message with settings named as flags: `'--tls-cert' needs '--tls-key'`.
    #[must_use]
    pub fn to_flag_string(&self) -> String {
        self.render(|key| format!("'--{key}'"))
    }

    fn render(&self, key: impl Fn(&str) -> String) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Key(name) => key(name),
            })
            .collect()
    }
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(|key| format!("`{key}`")))
    }
}

impl ServerConfig {
    /// Checks the settings without serving: the errors that would stop start-up, and the
    /// dangerous combinations (see the table in this module's documentation of what is
    /// warned and why). Reads the TLS files (to load them as the server would, and to look
    /// at the key's permissions) and the process's descriptor limit; binds nothing.
    #[must_use]
    pub fn check(&self) -> Report {
        let mut report = Report::default();
        self.check_errors(&mut report.errors);
        self.check_warnings(&mut report.warnings, soft_nofile_limit());
        report
    }

    fn check_errors(&self, errors: &mut Vec<Issue>) {
        errors.extend(self.settings_errors());
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key)
            && let Err(error) = portcullis_tls::TlsConfig::from_pem_files(cert, key)
                .and_then(portcullis_tls::TlsConfig::build)
        {
            // The error names the file; the issue is about the setting that named it.
            let setting = match error.path() == Some(key.as_path()) {
                true => "tls-key",
                false => "tls-cert",
            };
            errors.push(Issue::plain(setting, error.to_string()));
        }
    }

    /// The errors of settings that do not go together; no I/O.
    pub(super) fn settings_errors(&self) -> Vec<Issue> {
        let mut errors = Vec::new();
        if self.listen.is_empty() {
            errors.push(Issue::about("listen").text(" is empty: give at least one address"));
        }
        if !(1..=100).contains(&self.overload_fds) {
            errors.push(Issue::plain(
                "overload-fds",
                format!("is {}: give a percentage from 1 to 100", self.overload_fds),
            ));
        }
        if self.upgrade_timeout.is_zero() {
            errors.push(Issue::about("upgrade-timeout").text(
                " is 0: give the new process of an upgrade time to become ready (default 30s)",
            ));
        }
        if self.burst.is_some() && self.rate.is_none() {
            errors.push(Issue::about("burst").text(" needs ").key("rate"));
        }
        if self.proxy_protocol && self.trusted_proxy.is_empty() {
            errors.push(
                Issue::about("proxy-protocol")
                    .text(" needs at least one ")
                    .key("trusted-proxy")
                    .text(" (the peers whose PROXY header is believed)"),
            );
        }
        if let Some(url) = &self.redis {
            if self.rate.is_none() {
                errors.push(Issue::about("redis").text(" needs ").key("rate"));
            }
            if let Some(why) = redis_url_error(url) {
                errors.push(Issue::plain("redis", why));
            }
        }
        for url in &self.ready_requires {
            if let Err(why) = portcullis_health::checks::from_url(url) {
                errors.push(Issue::plain("ready-requires", why));
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => errors.push(Issue::about("tls-cert").text(" needs ").key("tls-key")),
            (None, Some(_)) => errors.push(Issue::about("tls-key").text(" needs ").key("tls-cert")),
            _ => {}
        }
        errors
    }

    fn check_warnings(&self, warnings: &mut Vec<Issue>, nofile: Option<u64>) {
        let off = |setting, default: &str, why: &str| {
            Issue::about(setting).text(format!(
                " is off (0s): {why}; set it to a few seconds (the default is {default})"
            ))
        };
        if self.header_timeout.is_zero() {
            let why = "a client can take forever to send a request head (slowloris), holding a connection";
            warnings.push(off("header-timeout", "10s", why));
        }
        if self.idle_timeout.is_zero() {
            let why = "idle keep-alive connections are never closed and pin descriptors and memory";
            warnings.push(off("idle-timeout", "60s", why));
        }
        if self.handshake_timeout.is_zero() && self.tls_cert.is_some() {
            let why = "a client can stall its TLS handshake forever, holding a connection";
            warnings.push(off("handshake-timeout", "10s", why));
        }
        let rate_off = |setting, why: &str| {
            Issue::about(setting).text(format!(
                " is off (0): {why}; set it to a few hundred bytes per second (the default is 240)"
            ))
        };
        if self.min_body_rate == 0 {
            let why = "a client can trickle a request body a byte at a time, holding a connection";
            warnings.push(rate_off("min-body-rate", why));
        }
        if self.min_response_rate == 0 {
            let why = "a client that stops reading a response holds its connection and buffers";
            warnings.push(rate_off("min-response-rate", why));
        }
        if let Some(issue) = max_conns_warning(self.max_conns.get(), nofile) {
            warnings.push(issue);
        }
        if !self.ready_requires.is_empty() && self.admin.is_none() {
            warnings.push(
                Issue::about("ready-requires")
                    .text(" is set without ")
                    .key("admin")
                    .text(": /readyz is served only on the admin listener, so nothing reads the checks; set an admin address"),
            );
        }
        for net in self.trusted_proxy.iter().filter(|net| covers_everyone(net)) {
            warnings.push(Issue::about("trusted-proxy").text(format!(
                " {net} trusts every peer: any client can name its own address in a forwarding \
                 (or PROXY) header and so escape per-client limits; list only your proxies' ranges"
            )));
        }
        let drain = self.drain_delay.saturating_add(self.drain_timeout);
        if drain > GRACE_PERIOD {
            warnings.push(
                Issue::about("drain-delay")
                    .text(" + ")
                    .key("drain-timeout")
                    .text(format!(
                        " is {}, above 30s (Kubernetes' default grace period): the process is \
                         killed mid-drain; shorten them to 30s in total, or raise \
                         terminationGracePeriodSeconds (or systemd's TimeoutStopSec) above it",
                        seconds(drain)
                    )),
            );
        }
        if let Some(key) = &self.tls_key
            && let Some(mode) = group_or_other_readable(key)
        {
            warnings.push(Issue::about("tls-key").text(format!(
                " {} is readable by group or others (mode {mode:o}): other users of the host \
                 can copy the private key; make it readable by the server's user only \
                 (chmod 600)",
                key.display()
            )));
        }
        self.ban_warnings(warnings);
        self.redis_warnings(warnings);
        if !self.allow.is_empty()
            && !self
                .allow
                .iter()
                .any(|net| net.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)))
        {
            warnings.push(Issue::about("allow").text(
                " has no loopback range: checks from the host itself (a local load balancer, curl on the machine) are refused; add 127.0.0.1 if they should be served",
            ));
        }
        if let Some(admin) = self.admin
            && !admin.ip().to_canonical().is_loopback()
        {
            warnings.push(Issue::about("admin").text(format!(
                " {admin} is not a loopback address: /metrics and the admin routes are \
                 reachable from the network; bind it to 127.0.0.1 or [::1] (scrape through \
                 a local agent) or firewall the port"
            )));
        }
    }
}

impl ServerConfig {
    fn ban_warnings(&self, warnings: &mut Vec<Issue>) {
        let Some(after) = self.ban_after else {
            let defaults = Self::default();
            let set = [
                ("ban-window", self.ban_window != defaults.ban_window),
                ("ban-for", self.ban_for != defaults.ban_for),
                ("ban-max", self.ban_max != defaults.ban_max),
                ("ban-exempt", !self.ban_exempt.is_empty()),
            ];
            for (setting, _) in set.into_iter().filter(|(_, set)| *set) {
                warnings.push(
                    Issue::about(setting)
                        .text(" does nothing without ")
                        .key("ban-after")
                        .text(": set it (say 20) to turn bans on, or remove this setting"),
                );
            }
            return;
        };
        if after.get() == 1 {
            warnings.push(Issue::about("ban-after").text(
                " is 1: a single refusal (one 429, one dropped TLS handshake) bans a client; use 10 or more so that only clients that keep failing are banned",
            ));
        }
        if self.ban_max < self.ban_for {
            warnings.push(
                Issue::about("ban-max")
                    .text(format!(" ({}) is below ", seconds(self.ban_max)))
                    .key("ban-for")
                    .text(format!(
                        " ({}): repeat bans never grow; raise it above ban-for",
                        seconds(self.ban_for)
                    )),
            );
        }
    }
}

/// `max-conns` above half of the soft descriptor limit: the other half is for everything else
/// a connection can need (the upstream it calls, files, the listeners themselves).
fn max_conns_warning(max_conns: usize, nofile: Option<u64>) -> Option<Issue> {
    let soft = nofile?;
    let max = u64::try_from(max_conns).unwrap_or(u64::MAX);
    (max > soft / 2).then(|| {
        Issue::about("max-conns").text(format!(
            " is {max_conns}, above half of the soft descriptor limit (RLIMIT_NOFILE {soft}): \
             descriptors run out before the cap refuses anyone; lower it to {} or raise the \
             limit to at least {} (LimitNOFILE= under systemd, ulimit -n)",
            soft / 2,
            max.saturating_mul(2)
        ))
    })
}

impl ServerConfig {
    fn redis_warnings(&self, warnings: &mut Vec<Issue>) {
        if self.redis.is_none() {
            if self.fleet_size.is_some() {
                warnings.push(
                    Issue::about("fleet-size")
                        .text(" is set without ")
                        .key("redis")
                        .text(": it does nothing"),
                );
            }
            if self.redis_timeout != super::DEFAULT_REDIS_TIMEOUT {
                warnings.push(
                    Issue::about("redis-timeout")
                        .text(" is set without ")
                        .key("redis")
                        .text(": it does nothing"),
                );
            }
        } else {
            if self.fleet_size.is_none() {
                warnings.push(Issue::about("redis").text(" is set without ").key("fleet-size").text(
                    ": while Redis fails each instance limits at the whole rate, so the fleet \
                     lets its size times the rate through; set it to the number of instances",
                ));
            }
            if self.redis_timeout > REDIS_TIMEOUT_WARNING {
                warnings.push(Issue::about("redis-timeout").text(format!(
                    " is {}: while Redis is slow every rate-limited request waits that long before \
                 it is decided locally; a few milliseconds (the default is 5ms) is enough for a \
                 Redis on the same network",
                    humantime_ms(self.redis_timeout)
                )));
            }
        }
    }
}

/// The `redis-timeout` above which a slow Redis visibly slows every request.
const REDIS_TIMEOUT_WARNING: Duration = Duration::from_millis(50);

fn humantime_ms(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// Why `url` cannot be used as `redis`, or `None`.
#[cfg(feature = "redis")]
fn redis_url_error(url: &str) -> Option<String> {
    portcullis_limit::fleet::RedisConfig::new(url)
        .err()
        .map(|error| error.to_string())
}

/// Why `url` cannot be used as `redis`: without the crate feature, never.
#[cfg(not(feature = "redis"))]
fn redis_url_error(_url: &str) -> Option<String> {
    Some("`redis` needs portcullis built with the `redis` feature".to_owned())
}

/// Whether `net` holds every IPv4 address (also as IPv4-mapped IPv6) or every IPv6 address.
fn covers_everyone(net: &IpNet) -> bool {
    let mapped = |last: u32| IpAddr::V6(Ipv4Addr::from(last).to_ipv6_mapped());
    net.prefix_len() == 0 || (net.contains(&mapped(0)) && net.contains(&mapped(u32::MAX)))
}

fn seconds(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{}ms", millis)
    }
}

/// The soft `RLIMIT_NOFILE` of this process, from `/proc/self/limits` (Linux); `None` when
/// unlimited or unknown.
fn soft_nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_nofile(&limits)
}

fn parse_nofile(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The permission bits of `path` when group or others may read it.
#[cfg(unix)]
fn group_or_other_readable(path: &std::path::Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn group_or_other_readable(_path: &std::path::Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_soft_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_nofile(limits), Some(1024));
        assert_eq!(
            parse_nofile(
                "Max open files            unlimited            unlimited            files\n"
            ),
            None
        );
    }

    #[test]
    fn max_conns_is_compared_with_half_the_soft_limit() {
        assert!(max_conns_warning(512, Some(1024)).is_none());
        let issue = max_conns_warning(513, Some(1024)).expect("warned");
        assert_eq!(issue.setting(), "max-conns");
        assert!(issue.to_string().contains("lower it to 512"), "{issue}");
        assert!(max_conns_warning(usize::MAX, None).is_none());
    }

    #[test]
    fn everyone_ranges_are_told_apart_from_wide_ones() {
        // ::/64 holds every IPv4-mapped address.
        for net in ["0.0.0.0/0", "::/0", "::ffff:0:0/96", "::/64"] {
            assert!(covers_everyone(&net.parse().expect("net")), "{net}");
        }
        assert!(!covers_everyone(&"2001:db8::/32".parse().expect("net")));
        assert!(!covers_everyone(&"10.0.0.0/8".parse().expect("net")));
        assert!(!covers_everyone(&"128.0.0.0/1".parse().expect("net")));
    }
}
