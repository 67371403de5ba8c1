//! The state every clone of a [`RateLimitLayer`](crate::RateLimitLayer) and its services
//! share: the configuration, the limiter, the metric handles and the housekeeping switch.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use governor::clock::Clock;
use http::{HeaderValue, Request, Response, StatusCode, header};

use crate::Quota;
use crate::housekeeping::Housekeeping;
use crate::key::{Key, KeyBy, MAX_KEY_LEN, PeerAddr, RequestInfo};
use crate::layer::{RateLimitBuilder, Rejection};
use crate::limiter::{GlobalLimiter, KeyedLimiter, Limited};
use crate::metrics::{
    KEY_OVERFLOW_TOTAL, KEYS, KEYS_EVICTED_TOTAL, LABEL_LIMITER, LABEL_RESULT, REQUESTS_TOTAL,
};

pub(crate) enum Limiter<C: Clock> {
    Direct(GlobalLimiter<C>),
    Keyed(KeyedLimiter<Key, C>),
}

/// The metric handles of one rate limit, resolved on first use (a check or a housekeeping
/// pass) against the recorder installed then, so that building the layer before the
/// recorder is installed loses nothing.
struct Metrics {
    allowed: metrics::Counter,
    limited: metrics::Counter,
    dry_run_limited: metrics::Counter,
    keys: metrics::Gauge,
    evicted: metrics::Counter,
    overflowed: metrics::Counter,
}

impl Metrics {
    fn resolve(name: &'static str) -> Self {
        let counter = |result: &'static str| metrics::counter!(REQUESTS_TOTAL, LABEL_LIMITER => name, LABEL_RESULT => result);
        Self {
            allowed: counter("allowed"),
            limited: counter("limited"),
            dry_run_limited: counter("dry_run_limited"),
            keys: metrics::gauge!(KEYS, LABEL_LIMITER => name),
            evicted: metrics::counter!(KEYS_EVICTED_TOTAL, LABEL_LIMITER => name),
            overflowed: metrics::counter!(KEY_OVERFLOW_TOTAL, LABEL_LIMITER => name),
        }
    }
}

pub(crate) struct Shared<C: Clock> {
    pub(crate) config: RateLimitBuilder<C>,
    pub(crate) limiter: Limiter<C>,
    pub(crate) housekeeping: Housekeeping,
    policy: Option<HeaderValue>,
    metrics: OnceLock<Metrics>,
    warned_no_peer: AtomicBool,
}

impl<C: Clock + Clone> Shared<C> {
    pub(crate) fn new(config: RateLimitBuilder<C>) -> Self {
        let local = config.quota;
        Self::with_local_quota(config, local)
    }

    /// The state of a limit whose local limiter enforces `local` while its responses and
    /// metrics speak of `config.quota` (a fleet limit's fallback: rate / fleet size).
    pub(crate) fn with_local_quota(config: RateLimitBuilder<C>, local: Quota) -> Self {
        let limiter = match config.key_by {
            KeyBy::Global => {
                Limiter::Direct(GlobalLimiter::with_clock(local, config.clock.clone()))
            }
            _ => Limiter::Keyed(KeyedLimiter::with_clock(
                local,
                config.max_keys,
                config.clock.clone(),
            )),
        };
        let policy = format!(
            "\"{}\";q={};w={}",
            config.name,
            config.quota.rate(),
            config.quota.per().seconds()
        );
        Self {
            // A global limit has no keys to evict.
            housekeeping: Housekeeping::new(matches!(limiter, Limiter::Keyed(_))),
            policy: HeaderValue::from_str(&policy).ok(),
            metrics: OnceLock::new(),
            warned_no_peer: AtomicBool::new(false),
            limiter,
            config,
        }
    }
}

impl<C: Clock> Shared<C> {
    fn metrics(&self) -> &Metrics {
        self.metrics
            .get_or_init(|| Metrics::resolve(self.config.name))
    }

    pub(crate) fn keys(&self) -> usize {
        match &self.limiter {
            Limiter::Direct(_) => 0,
            Limiter::Keyed(limiter) => limiter.len(),
        }
    }

    fn peer(&self, extensions: &http::Extensions) -> IpAddr {
        if let Some(PeerAddr(addr)) = extensions.get::<PeerAddr>() {
            return addr.ip();
        }
        if let Some(addr) = PeerAddr::current() {
            return addr.ip();
        }
        #[cfg(feature = "axum")]
        if let Some(axum::extract::ConnectInfo(addr)) =
            extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        {
            return addr.ip();
        }
        if !self.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                limiter = self.config.name,
                "a request carries no peer address (portcullis_limit::PeerAddr); such requests \
                 share one rate-limit bucket"
            );
        }
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    }

    fn is_exempt_path(&self, path: &str) -> bool {
        self.config.exempt_paths.iter().any(|exempt| {
            if exempt.ends_with('/') {
                path.starts_with(exempt.as_str())
            } else {
                path == exempt
            }
        })
    }

    /// Checks one request; `Ok` to pass it on.
    pub(crate) fn check<B>(&self, request: &Request<B>) -> Result<(), Rejection> {
        let Some(client) = self.subject(request) else {
            return Ok(());
        };
        let checked = match &self.limiter {
            Limiter::Direct(limiter) => limiter.check(),
            Limiter::Keyed(limiter) => {
                let key = self.key(request, client);
                limiter.check(&key)
            }
        };
        self.record(checked, client)
    }

    /// The client a request counts against, or `None` when it is exempt (by path or client).
    #[inline]
    pub(crate) fn subject<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        let config = &self.config;
        if !config.exempt_paths.is_empty() && self.is_exempt_path(request.uri().path()) {
            return None;
        }
        let needs_client =
            !matches!(config.key_by, KeyBy::Global) || !config.exempt_clients.is_empty();
        let client = if needs_client {
            let peer = self.peer(request.extensions());
            config.client_ip.resolve(peer, request.headers())
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        if config
            .exempt_clients
            .iter()
            .any(|range| range.contains(&client))
        {
            return None;
        }
        Some(client)
    }

    /// Counts a decision in the metrics and applies dry-run mode: `Ok` to pass the request on.
    #[inline]
    pub(crate) fn record(
        &self,
        checked: Result<(), Limited>,
        client: IpAddr,
    ) -> Result<(), Rejection> {
        let config = &self.config;
        let metrics = self.metrics();
        match checked {
            Ok(()) => {
                metrics.allowed.increment(1);
                Ok(())
            }
            Err(_) if config.dry_run => {
                metrics.dry_run_limited.increment(1);
                Ok(())
            }
            Err(limited) => {
                metrics.limited.increment(1);
                Err(Rejection {
                    limiter: config.name,
                    quota: config.quota,
                    limited,
                    client,
                })
            }
        }
    }

    /// The local decision for `key` (the key of [`Shared::key`]; ignored by a global limit).
    #[cfg(feature = "redis")]
    pub(crate) fn check_local(&self, key: &Key) -> Result<(), Limited> {
        match &self.limiter {
            Limiter::Direct(limiter) => limiter.check(),
            Limiter::Keyed(limiter) => limiter.check(key),
        }
    }

    pub(crate) fn key<B>(&self, request: &Request<B>, client: IpAddr) -> Key {
        let client = self.config.prefix.apply(client);
        let custom = match &self.config.key_by {
            KeyBy::Client | KeyBy::Global => None,
            KeyBy::Header(name) => request
                .headers()
                .get(name)
                .filter(|value| value.len() <= MAX_KEY_LEN)
                .and_then(|value| Key::bytes(value.as_bytes())),
            KeyBy::Custom(extract) => extract(&RequestInfo {
                method: request.method(),
                uri: request.uri(),
                headers: request.headers(),
                extensions: request.extensions(),
                client,
            }),
        };
        custom.unwrap_or_else(|| Key::ip(client))
    }

    /// The 429 response for `rejection`, through the application's hook if it set one.
    pub(crate) fn response(&self, rejection: &Rejection) -> Response<Bytes> {
        let retry_after = rejection.limited.retry_after_secs();
        let mut response = Response::new(Bytes::from_static(b"too many requests\n"));
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        if let Some(policy) = &self.policy {
            headers.insert("ratelimit-policy", policy.clone());
        }
        if let Ok(state) =
            HeaderValue::from_str(&format!("\"{}\";r=0;t={retry_after}", self.config.name))
        {
            headers.insert("ratelimit", state);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match &self.config.on_limited {
            Some(hook) => hook(rejection, response),
            None => response,
        }
    }

    /// One housekeeping pass: evicts idle keys and updates the key metrics.
    pub(crate) fn housekeeping_pass(&self) {
        if let Limiter::Keyed(limiter) = &self.limiter {
            let evicted = limiter.evict_idle();
            let metrics = self.metrics();
            metrics.evicted.increment(evicted);
            metrics.keys.set(limiter.len() as f64);
            metrics.overflowed.absolute(limiter.overflowed());
        }
    }
}
