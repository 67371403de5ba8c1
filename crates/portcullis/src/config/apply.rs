//! [`ServerConfig::apply`]: the settings handed to a [`Builder`], and the pieces that are not
//! the builder's (the rate limit layer, the listener options).

use std::fmt;
use std::num::NonZeroUsize;
use std::time::Duration;

use portcullis_limit::client::TrustedProxies;
use portcullis_limit::client::{ClientIp, IpNet};
use portcullis_limit::filter::Rule;
use portcullis_limit::{
    BanPolicy, Bans, ConnLimits, FilterRules, IpFilter, RateLimitBuilder, RateLimitLayer,
};
use portcullis_listen::ListenerConfig;
use portcullis_listen::proxy::ProxyProtocol;
use portcullis_server::{Builder, HttpConfig, MinRate};
use portcullis_tls::{TlsAcceptor, TlsConfig, TlsError};

use super::{Issue, ServerConfig};

/// The stand-in for "no handshake deadline" (`handshake-timeout = "0s"`): about 30 years,
/// which still fits an `Instant`.
const NEVER: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// Why [`ServerConfig::apply`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ApplyError {
    /// Settings that do not go together (`tls-cert` without `tls-key`, `burst` without
    /// `rate`, ...): the first of [`ServerConfig::check`]'s errors.
    Invalid(Issue),
    /// A listener could not be bound, an address not resolved, the admin exporter not
    /// installed (the error names the address).
    Server(portcullis_server::Error),
    /// The TLS certificate or key could not be loaded (the error names the file).
    Tls(TlsError),
}

impl fmt::Display for ApplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(issue) => issue.fmt(f),
            Self::Server(error) => error.fmt(f),
            Self::Tls(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for ApplyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Invalid(_) => None,
            Self::Server(error) => Some(error),
            Self::Tls(error) => Some(error),
        }
    }
}

impl From<portcullis_server::Error> for ApplyError {
    fn from(error: portcullis_server::Error) -> Self {
        Self::Server(error)
    }
}

impl From<TlsError> for ApplyError {
    fn from(error: TlsError) -> Self {
        Self::Tls(error)
    }
}

fn filter_rules(allow: &[IpNet], deny: &[IpNet]) -> FilterRules {
    let rules = allow.iter().fold(FilterRules::new(), |rules, net| {
        rules.allow(Rule::new(*net))
    });
    deny.iter()
        .fold(rules, |rules, net| rules.deny(Rule::new(*net)))
}

/// SIGHUP: the file's `allow` and `deny` again, plus what `allow` and `deny` held at start
/// beyond the file's lists of then.
fn reload_filter(filter: &IpFilter, source: &super::FilterSource, allow: &[IpNet], deny: &[IpNet]) {
    let extra = |now: &[IpNet], from_file: &[IpNet]| -> Vec<IpNet> {
        now.iter()
            .filter(|net| !from_file.contains(net))
            .copied()
            .collect()
    };
    match ServerConfig::from_file(&source.path) {
        Ok(fresh) => {
            let mut allow_now = fresh.allow;
            allow_now.extend(extra(allow, &source.allow));
            let mut deny_now = fresh.deny;
            deny_now.extend(extra(deny, &source.deny));
            tracing::info!(
                file = %source.path.display(),
                allow = allow_now.len(),
                deny = deny_now.len(),
                "connection filter reloaded"
            );
            filter.replace(filter_rules(&allow_now, &deny_now));
        }
        Err(error) => {
            tracing::error!(%error, "connection filter not reloaded; the lists in force stay");
        }
    }
}

/// A zero timeout is "off": the server's "never".
fn or_never(timeout: Duration, never: Duration) -> Duration {
    if timeout.is_zero() { never } else { timeout }
}

impl ServerConfig {
    /// Hands every setting to `builder`: the HTTP deadlines, the drain delay and deadline,
    /// the connection caps (trusted proxies exempt from the per-client one), TLS on every
    /// listener (with `tls-cert`), PROXY protocol (with `proxy-protocol`), the listeners and
    /// the admin listener. Under systemd socket activation (`LISTEN_FDS`) the inherited
    /// sockets are served instead of binding `listen`.
    ///
    /// Call it after [`Builder::graceful`], which replaces the drain settings. It binds
    /// sockets and loads the TLS files; [`check`](Self::check) first to report every
    /// problem at once. The rate limit is the application's layer:
    /// [`rate_limit`](Self::rate_limit).
    ///
    /// # Errors
    ///
    /// [`ApplyError::Invalid`] for the first error of [`check`](Self::check) about the
    /// settings themselves (`tls-cert` without `tls-key`, say), [`ApplyError::Tls`] when the certificate or key cannot be loaded,
    /// [`ApplyError::Server`] when an address cannot be bound.
    pub fn apply(&self, builder: Builder) -> Result<Builder, ApplyError> {
        if let Some(issue) = self.settings_errors().into_iter().next() {
            return Err(ApplyError::Invalid(issue));
        }
        let mut builder = builder
            .http(self.http_config())
            .drain_delay(self.drain_delay)
            .drain_timeout(self.drain_timeout)
            .connection_limits(self.conn_limits())
            .overload(self.overload())
            .upgrade(self.upgrade());
        if let Some(tls) = self.tls_acceptor()? {
            builder = builder.tls(tls);
        }
        if self.proxy_protocol {
            builder =
                builder.proxy_protocol(ProxyProtocol::new(self.trusted_proxy.iter().copied()));
        }
        let options = self.listener_config();
        let (mut builder, inherited) = builder.listen_inherited(&options)?;
        if !inherited {
            for addr in &self.listen {
                builder = builder.listen_with(*addr, &options)?;
            }
        }
        // Read from a file, the server always has a filter (empty if need be), so that a
        // SIGHUP after the file gained its first rule applies it.
        let filter = match &self.source {
            Some(_) => Some(IpFilter::new(filter_rules(&self.allow, &self.deny))),
            None => self.ip_filter(),
        };
        if let Some(filter) = filter {
            builder = builder.filter(filter.clone());
            if let Some(source) = self.source.clone() {
                let (allow, deny) = (self.allow.clone(), self.deny.clone());
                builder = builder.on_reload(move || reload_filter(&filter, &source, &allow, &deny));
            }
        }
        if let Some(bans) = self.bans() {
            builder = builder.bans(bans);
        }
        for check in self.health_checks() {
            builder = builder.health_check(check);
        }
        if let Some(addr) = self.admin {
            builder = builder.admin(addr)?;
        }
        Ok(builder)
    }

    /// The checks of `ready-requires`, with the defaults of [`portcullis_health::Check`]
    /// (every 1 s, 1 s timeout, down after 3 failures, up after 2 successes), each critical.
    /// Only called once `settings_errors` found every URL valid.
    fn health_checks(&self) -> Vec<portcullis_health::Check> {
        self.ready_requires
            .iter()
            .filter_map(|url| portcullis_health::checks::from_url(url).ok())
            .collect()
    }

    /// The connection filter of `allow` and `deny`, or `None` when both are empty.
    ///
    /// [`apply`](Self::apply) gives it to the server and, for settings read with
    /// [`from_file`](Self::from_file), re-reads both lists from the file on every SIGHUP
    /// (keeping the entries that did not come from the file, such as flags); a file that no
    /// longer parses keeps the lists in force, with an error logged.
    #[must_use]
    pub fn ip_filter(&self) -> Option<IpFilter> {
        (!self.allow.is_empty() || !self.deny.is_empty())
            .then(|| IpFilter::new(filter_rules(&self.allow, &self.deny)))
    }

    /// The temporary bans of `ban-after`, `ban-window`, `ban-for`, `ban-max` and
    /// `ban-exempt`, believing the forwarding headers of `trusted-proxy` peers (never banned
    /// themselves), or `None` without `ban-after`.
    #[must_use]
    pub fn bans(&self) -> Option<Bans> {
        let after = self.ban_after?;
        let mut policy = BanPolicy::new(after.get())
            .window(self.ban_window)
            .ban_for(self.ban_for)
            .max_ban(self.ban_max)
            .client_ip(ClientIp::new(TrustedProxies::new(
                self.trusted_proxy.iter().copied(),
            )));
        for net in &self.ban_exempt {
            policy = policy.exempt(*net);
        }
        Some(policy.build())
    }

    /// The HTTP settings: `header-timeout` and `idle-timeout` (zero: never), the minimum
    /// rates (`min-body-rate`, `min-response-rate`, zero: off, after `min-rate-grace`), the
    /// rest [`HttpConfig`]'s defaults.
    pub fn http_config(&self) -> HttpConfig {
        HttpConfig::default()
            .header_timeout(or_never(self.header_timeout, Duration::MAX))
            .idle_timeout(or_never(self.idle_timeout, Duration::MAX))
            .min_body_rate(MinRate::new(self.min_body_rate, self.min_rate_grace))
            .min_response_rate(MinRate::new(self.min_response_rate, self.min_rate_grace))
    }

    /// The overload manager: [`Overload::default`](portcullis_health::Overload::default)
    /// with its descriptor ladder at `overload-fds` percent.
    #[must_use]
    pub fn overload(&self) -> portcullis_health::Overload {
        portcullis_health::Overload::default()
            .descriptors_at(f64::from(self.overload_fds.clamp(1, 100)) / 100.0)
    }

    /// Zero-downtime upgrades on SIGUSR2: `upgrade-exec` (default: the server's own
    /// executable) with the server's arguments, ready within `upgrade-timeout`; and on the
    /// `upgrade-socket`, when set, for a process the server did not start.
    #[must_use]
    pub fn upgrade(&self) -> portcullis_server::Upgrade {
        let mut upgrade = portcullis_server::Upgrade::new().timeout(self.upgrade_timeout);
        if let Some(exec) = &self.upgrade_exec {
            upgrade = upgrade.exec(exec);
        }
        if let Some(socket) = &self.upgrade_socket {
            upgrade = upgrade.socket(socket);
        }
        upgrade
    }

    /// The connection caps: `max-conns`, and `max-conns-per-ip` with the trusted proxies
    /// exempt (a proxy carries many clients).
    #[must_use]
    pub fn conn_limits(&self) -> ConnLimits {
        let limits = ConnLimits::new(self.max_conns.get());
        match self.max_conns_per_ip {
            Some(max) => limits
                .per_client(max)
                .exempt_from_per_client(TrustedProxies::new(self.trusted_proxy.iter().copied())),
            None => limits,
        }
    }

    /// The listener options: `acceptors` sockets per address (one per core by default and
    /// with `per-core`).
    #[must_use]
    pub fn listener_config(&self) -> ListenerConfig {
        let cores = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
        let acceptors = match self.per_core {
            true => cores,
            false => self.acceptors.unwrap_or(cores),
        };
        ListenerConfig::default().acceptors(acceptors)
    }

    /// The TLS acceptor of `tls-cert` and `tls-key` with `handshake-timeout` (zero: never),
    /// or `None` without them. Only called once `settings_errors` found both or neither.
    fn tls_acceptor(&self) -> Result<Option<TlsAcceptor>, TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        TlsConfig::from_pem_files(cert, key)?
            .handshake_timeout(or_never(self.handshake_timeout, NEVER))
            .build()
            .map(Some)
    }

    /// The per-client rate limit of `rate` and `burst`, believing the forwarding headers of
    /// `trusted-proxy` peers, or `None` without a rate. Finish it with
    /// [`RateLimitBuilder::layer`] and put the layer in the application's stack.
    #[must_use]
    pub fn rate_limit(&self) -> Option<RateLimitBuilder> {
        let quota = self.quota()?;
        Some(RateLimitLayer::per_client(quota).trusted_proxies(self.trusted_proxy.iter().copied()))
    }
}

#[cfg(feature = "redis")]
impl ServerConfig {
    /// The `rate` limit kept in `redis` for the whole fleet (`fleet-size` instances, each
    /// falling back to `rate` / `fleet-size` while Redis fails; every call under
    /// `redis-timeout`), or `None` without `redis` or `rate`. Finish it with
    /// [`FleetBuilder::layer`](portcullis_limit::fleet::FleetBuilder::layer); call
    /// [`Redis::connect`](portcullis_limit::fleet::Redis::connect) on the builder's
    /// [`redis`](portcullis_limit::fleet::FleetBuilder::redis) at start-up to begin shared.
    ///
    /// # Errors
    ///
    /// The URL cannot be parsed (the error names it).
    pub fn fleet_limit(
        &self,
    ) -> Result<Option<portcullis_limit::fleet::FleetBuilder>, portcullis_limit::fleet::RedisUrlError>
    {
        let (Some(url), Some(limit)) = (&self.redis, self.rate_limit()) else {
            return Ok(None);
        };
        let redis = portcullis_limit::fleet::RedisConfig::new(url)?
            .timeout(self.redis_timeout)
            .build();
        Ok(Some(limit.fleet(&redis).fleet_size(
            self.fleet_size.unwrap_or(std::num::NonZeroU32::MIN),
        )))
    }
}
