//! Fleet-wide rate limits kept in Redis (crate feature `redis`): one quota across every
//! instance that shares the Redis, and a local fallback that never fails or stalls a request.
//!
//! ```no_run
//! use std::num::NonZeroU32;
//!
//! use portcullis_limit::RateLimitLayer;
//! use portcullis_limit::fleet::RedisConfig;
//!
//! # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
//! // One link to Redis for the process, shared by every fleet limit.
//! let redis = RedisConfig::new("redis://127.0.0.1:6379/")?.build();
//! // Try once at start-up; if Redis is down the limit is local until it answers.
//! if let Err(error) = redis.connect().await {
//!     eprintln!("Redis unreachable, limiting locally for now: {error}");
//! }
//! // 100/s per client across a fleet of 20 instances (5/s each while Redis fails).
//! let limit = RateLimitLayer::per_client("100/s".parse()?)
//!     .name("api")
//!     .fleet(&redis)
//!     .fleet_size(NonZeroU32::new(20).expect("not zero"))
//!     .layer();
//! // let app = ServiceBuilder::new().layer(limit).service(app);
//! # let _ = limit;
//! # Ok(())
//! # }
//! ```
//!
//! # How a check goes
//!
//! A request that is not exempt (paths, clients: the same rules as [`RateLimitLayer`](crate::RateLimitLayer)) costs
//! one `EVALSHA` of a GCRA script on the multiplexed connection that every check of the
//! process shares (pipelined: concurrent checks do not wait for each other's round trips).
//! The script reads the time from Redis' `TIME`, so the instances' clocks never matter;
//! stores the key's theoretical arrival time in milliseconds (microsecond resolution) with an
//! expiry at the moment the key would be fresh again, so idle keys cost Redis nothing; and
//! answers either "allowed" or the milliseconds until one more request would be, rounded up
//! (so `Retry-After`, in whole seconds rounded up again, never sends a polite client into
//! another 429). Refused requests get the same 429 as a local limit: `Retry-After`,
//! `RateLimit-Policy` with the fleet's quota, `RateLimit`.
//!
//! Keys are `PREFIX:LIMITER:QUOTA:{KEY}` ([`RedisConfig::key_prefix`],
//! [`RateLimitBuilder::name`], the quota as `INTERVALnBURSTb`, and `ip:ADDRESS`, `k:HEX` of
//! the application's key, or `global`): one key per script call, its slot chosen by the
//! client's part alone, so a Redis Cluster puts different clients on different nodes.
//! Instances share a quota when they use the same prefix, limiter name and quota.
//!
//! # When Redis fails
//!
//! Every call has a deadline ([`RedisConfig::timeout`], default [`DEFAULT_REDIS_TIMEOUT`]).
//! A call that misses it, or fails, is decided locally at once: the instance's own limiter at
//! rate / fleet size ([`Quota::share`]), keyed the same way. After
//! [`DEFAULT_BREAKER_FAILURES`] failures in a row, or at once when the connection is lost, a
//! circuit breaker opens: checks are local without calling Redis, and one task probes Redis
//! every [`DEFAULT_BREAKER_COOLDOWN`] (reconnecting when needed) until it answers; then the
//! checks are shared again. The script is loaded on every connection and reloaded the moment
//! Redis answers `NOSCRIPT` (after a restart, a failover or `SCRIPT FLUSH`), inside the same
//! call's deadline, so a lost script costs one extra round trip and never an error.
//!
//! So a request waits for Redis at most one deadline, and is never answered 5xx because of
//! it. [`FleetBuilder::fail_closed`] makes a limit refuse (429, `Retry-After: 1`) instead of
//! falling back, for quotas that must never be exceeded across the fleet.
//!
//! # Metrics
//!
//! Redis calls by outcome ([`REDIS_CALLS_TOTAL`](crate::metrics::REDIS_CALLS_TOTAL)), their
//! latency, script loads, whether the link is connected, the breaker, whether the fallback is
//! active, and per limiter where each check was decided
//! ([`FLEET_CHECKS_TOTAL`]); the limiter's allowed and
//! limited counts are the local limit's ([`REQUESTS_TOTAL`](crate::metrics::REQUESTS_TOTAL)).
//! docs/fleet-limits.md has the alerts.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use http::{Request, Response};

use crate::Quota;
use crate::body::LimitBody;
use crate::housekeeping;
use crate::key::Key;
use crate::layer::{RateLimitBuilder, Rejection};
use crate::limiter::Limited;
use crate::metrics::{FLEET_CHECKS_TOTAL, LABEL_DECIDED, LABEL_LIMITER};
use crate::state::Shared;

mod breaker;
mod future;
mod link;

pub use future::FleetFuture;
use link::{Link, Outcome};

/// How long a check waits for Redis by default: 5 ms, a few round trips on a local network.
/// Past it the check is decided locally; the request never waits longer because of Redis.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(5);

/// Failed or late calls in a row that open the circuit breaker by default: 5. One slow call
/// is noise; five in a row mean Redis is in trouble, and every further call would cost its
/// request the whole deadline.
pub const DEFAULT_BREAKER_FAILURES: NonZeroU32 = match NonZeroU32::new(5) {
    Some(n) => n,
    None => unreachable!(),
};

/// How often Redis is probed while the breaker is open, by default: every 500 ms.
pub const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_millis(500);

/// How long making a connection (and loading the script on it) may take by default: 1 s.
/// Only the recovery task and [`Redis::connect`] wait for it, never a request.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The first part of every key by default.
pub const DEFAULT_KEY_PREFIX: &str = "portcullis";

/// A Redis URL that cannot be used. The message names the URL (its password hidden).
#[derive(Debug)]
pub struct RedisUrlError {
    url: String,
    source: redis::RedisError,
}

impl fmt::Display for RedisUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid Redis URL {}: {} (expected redis://[:PASSWORD@]HOST[:PORT][/DB] or redis+unix:///PATH)",
            self.url, self.source
        )
    }
}

impl std::error::Error for RedisUrlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// The URLs of a comma-separated list: split only where a new `redis` URL begins, so a comma
/// inside a password never splits (and never prints part of it).
fn split_nodes(list: &str) -> Vec<&str> {
    let mut nodes = Vec::new();
    let mut start = 0;
    for (at, _) in list.match_indices(',') {
        if list[at + 1..].trim_start().starts_with("redis") {
            nodes.push(list[start..at].trim());
            start = at + 1;
        }
    }
    nodes.push(list[start..].trim());
    nodes
}

/// `url` with the password of its user information replaced by `***`.
fn shown(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// What a link connects to.
#[derive(Clone)]
pub(crate) enum Target {
    /// One Redis (a primary, or a proxy in front of several).
    Single(redis::Client),
    /// A Redis Cluster, from its seed nodes (the client is made on connecting, with the
    /// link's timeouts).
    Cluster(Vec<redis::ConnectionInfo>),
}

/// The configuration of a [`Redis`] link: the URL, the deadline, the breaker.
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) target: Target,
    pub(crate) shown: String,
    pub(crate) timeout: Duration,
    pub(crate) failures: NonZeroU32,
    pub(crate) cooldown: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) prefix: String,
}

impl RedisConfig {
    /// The Redis at `url` (`redis://[:PASSWORD@]HOST[:PORT][/DB]` or `redis+unix:///PATH`;
    /// this build has no TLS to Redis), or, given several URLs separated
    /// by commas, the Redis Cluster they are seed nodes of (as [`RedisConfig::cluster`]).
    /// Nothing is connected yet.
    ///
    /// # Errors
    ///
    /// [`RedisUrlError`] naming the URL when it cannot be parsed.
    pub fn new(url: &str) -> Result<Self, RedisUrlError> {
        let nodes = split_nodes(url);
        if nodes.len() > 1 {
            return Self::cluster(nodes);
        }
        let client = redis::Client::open(url).map_err(|source| RedisUrlError {
            url: shown(url),
            source,
        })?;
        Ok(Self::with_target(Target::Single(client), shown(url)))
    }

    /// The Redis Cluster whose seed nodes are at `urls`: keys are spread over its slots, a
    /// check goes to the node holding its key (redirections followed by the `redis` crate).
    ///
    /// # Errors
    ///
    /// [`RedisUrlError`] naming the URL that cannot be parsed, or the list when it is empty.
    pub fn cluster<'a>(urls: impl IntoIterator<Item = &'a str>) -> Result<Self, RedisUrlError> {
        let urls: Vec<&str> = urls.into_iter().collect();
        let list = urls
            .iter()
            .map(|url| shown(url))
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::with_capacity(urls.len());
        for url in &urls {
            let node = redis::IntoConnectionInfo::into_connection_info(*url).map_err(|source| {
                RedisUrlError {
                    url: shown(url),
                    source,
                }
            })?;
            nodes.push(node);
        }
        if nodes.is_empty() {
            return Err(RedisUrlError {
                url: list,
                source: redis::RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "no seed node",
                )),
            });
        }
        Ok(Self::with_target(Target::Cluster(nodes), list))
    }

    fn with_target(target: Target, shown: String) -> Self {
        Self {
            target,
            shown,
            timeout: DEFAULT_REDIS_TIMEOUT,
            failures: DEFAULT_BREAKER_FAILURES,
            cooldown: DEFAULT_BREAKER_COOLDOWN,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            prefix: DEFAULT_KEY_PREFIX.to_owned(),
        }
    }

    /// The deadline of every check's call (default [`DEFAULT_REDIS_TIMEOUT`]): the longest a
    /// request waits for Redis. Zero is raised to 1 ms.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The breaker: open after `failures` failed or late calls in a row (default
    /// [`DEFAULT_BREAKER_FAILURES`]), probing every `cooldown` while open (default
    /// [`DEFAULT_BREAKER_COOLDOWN`], at least 10 ms).
    #[must_use]
    pub fn breaker(mut self, failures: NonZeroU32, cooldown: Duration) -> Self {
        self.failures = failures;
        self.cooldown = cooldown.max(Duration::from_millis(10));
        self
    }

    /// How long making a connection may take (default [`DEFAULT_CONNECT_TIMEOUT`]).
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The first part of every key (default [`DEFAULT_KEY_PREFIX`]): instances share quotas
    /// only with instances of the same prefix.
    #[must_use]
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The link. It connects on the first check made inside a tokio runtime (or on
    /// [`Redis::connect`]); until then checks are local.
    #[must_use]
    pub fn build(self) -> Redis {
        Redis {
            link: Arc::new(Link::new(self)),
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.shown)
            .field("timeout", &self.timeout)
            .field("failures", &self.failures)
            .field("cooldown", &self.cooldown)
            .field("connect_timeout", &self.connect_timeout)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The link to one Redis, shared by every fleet limit that uses it (clones share it): one
/// multiplexed connection, the breaker and its recovery task. See the [module](self) docs.
#[derive(Clone)]
pub struct Redis {
    link: Arc<Link>,
}

impl Redis {
    /// The URL, its password hidden.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.link.config.shown
    }

    /// Whether checks go to Redis now: connected, breaker closed.
    #[must_use]
    pub fn available(&self) -> bool {
        self.link.available()
    }

    /// One attempt to connect now (at start-up, to begin shared), loading the script, then one
    /// check on a probe key under the deadline; checks are shared from its success on. On
    /// failure checks stay local and the link keeps trying on its own once checks come.
    ///
    /// # Errors
    ///
    /// Redis' error, or a timeout after [`RedisConfig::connect_timeout`].
    pub async fn connect(&self) -> Result<(), redis::RedisError> {
        let timeout = self.link.config.connect_timeout;
        match tokio::time::timeout(timeout, self.link.connect()).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {timeout:?}"),
                )));
            }
        }
        // Shared only once a check's call fits the deadline.
        self.link.probe().await.map_err(|why| {
            redis::RedisError::from(std::io::Error::other(format!(
                "connected, but the first check failed: {why}"
            )))
        })
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.link.config.shown)
            .field("available", &self.available())
            .finish()
    }
}

impl<C: Clock> RateLimitBuilder<C> {
    /// This limit, kept in `redis` for every instance sharing it (crate feature `redis`);
    /// see [`fleet`](crate::fleet).
    #[must_use]
    pub fn fleet(self, redis: &Redis) -> FleetBuilder<C> {
        FleetBuilder {
            limit: self,
            redis: redis.clone(),
            size: NonZeroU32::MIN,
            fail_closed: false,
        }
    }
}

/// The configuration of a fleet limit, made by [`RateLimitBuilder::fleet`].
pub struct FleetBuilder<C: Clock = DefaultClock> {
    limit: RateLimitBuilder<C>,
    redis: Redis,
    size: NonZeroU32,
    fail_closed: bool,
}

impl<C: Clock> FleetBuilder<C> {
    /// The limiter's name ([`RateLimitBuilder::name`]): the `limiter` label and part of every
    /// Redis key.
    #[must_use]
    pub fn name(mut self, name: &'static str) -> Self {
        self.limit = self.limit.name(name);
        self
    }

    /// The link to Redis this limit uses.
    #[must_use]
    pub fn redis(&self) -> &Redis {
        &self.redis
    }

    /// How many instances share the quota (default 1): while Redis fails each enforces
    /// [`Quota::share`] of it, so the fleet together stays near the quota.
    #[must_use]
    pub fn fleet_size(mut self, size: NonZeroU32) -> Self {
        self.size = size;
        self
    }

    /// Refuse (429, `Retry-After: 1`) instead of limiting locally while Redis cannot decide
    /// (default `false`): for a quota that must never be exceeded, at the price of refusing
    /// everything while Redis is down.
    #[must_use]
    pub fn fail_closed(mut self, fail_closed: bool) -> Self {
        self.fail_closed = fail_closed;
        self
    }

    /// The tower layer. Call it once and clone the layer.
    #[must_use]
    pub fn layer(self) -> FleetLimitLayer<C>
    where
        C: Clone,
    {
        let quota = self.limit.quota;
        let name = self.limit.name;
        let local = quota.share(self.size);
        let global = matches!(self.limit.key_by, crate::KeyBy::Global);
        let interval_nanos = u64::try_from(quota.interval().as_nanos()).unwrap_or(u64::MAX);
        // PREFIX:NAME:QUOTA:{KEY}. The quota is part of the key so that two limits of one
        // name (two unnamed ones) with different quotas never share a state; braces in the
        // prefix or the name would move the hash tag, so they are replaced.
        let tag_safe = |text: &str| text.replace(['{', '}'], "_");
        let prefix = format!(
            "{}:{}:{}n{}b:{{",
            tag_safe(&self.redis.link.config.prefix),
            tag_safe(name),
            interval_nanos,
            quota.max_burst()
        )
        .into_bytes();
        FleetLimitLayer {
            shared: Arc::new(FleetShared {
                local: Arc::new(Shared::with_local_quota(self.limit, local)),
                redis: self.redis,
                interval_nanos,
                burst: quota.max_burst().get(),
                global,
                local_quota: local,
                size: self.size,
                fail_closed: self.fail_closed,
                key_prefix: prefix.into_boxed_slice(),
                metrics: OnceLock::new(),
            }),
        }
    }
}

impl<C: Clock> fmt::Debug for FleetBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBuilder")
            .field("limit", &self.limit)
            .field("redis", &self.redis)
            .field("size", &self.size)
            .field("fail_closed", &self.fail_closed)
            .finish()
    }
}

/// Where checks were decided, per limiter; resolved on first use.
struct FleetMetrics {
    redis: metrics::Counter,
    local: metrics::Counter,
}

pub(crate) struct FleetShared<C: Clock> {
    /// The limit as a local one: exemptions, keys, responses, metrics, and the fallback
    /// limiter at rate / fleet size.
    pub(crate) local: Arc<Shared<C>>,
    redis: Redis,
    interval_nanos: u64,
    burst: u32,
    local_quota: Quota,
    size: NonZeroU32,
    fail_closed: bool,
    /// A global limit: one Redis key for every request.
    global: bool,
    /// `PREFIX:LIMITER:QUOTA:{`; the key and `}` follow.
    key_prefix: Box<[u8]>,
    metrics: OnceLock<FleetMetrics>,
}

impl<C: Clock> FleetShared<C> {
    fn metrics(&self) -> &FleetMetrics {
        self.metrics.get_or_init(|| {
            let name = self.local.config.name;
            let decided = |at: &'static str| metrics::counter!(FLEET_CHECKS_TOTAL, LABEL_LIMITER => name, LABEL_DECIDED => at);
            FleetMetrics {
                redis: decided("redis"),
                local: decided("local"),
            }
        })
    }

    /// The call deciding `key` in Redis, or `None` to decide locally now.
    fn begin(&self, key: &Key) -> Option<link::Call> {
        let mut redis_key = Vec::with_capacity(self.key_prefix.len() + 48);
        redis_key.extend_from_slice(&self.key_prefix);
        if self.global {
            // One state for everyone, whatever client the exemptions resolved.
            redis_key.extend_from_slice(b"global");
        } else {
            key.write_to(&mut redis_key);
        }
        redis_key.push(b'}');
        self.redis
            .link
            .begin(redis_key, self.interval_nanos, self.burst)
    }

    /// The decision for a check whose call came to `outcome` (`None`: no call was made).
    pub(crate) fn decide(
        &self,
        outcome: Option<Outcome>,
        key: &Key,
        client: std::net::IpAddr,
    ) -> Result<(), Rejection> {
        let checked = match outcome {
            Some(Outcome::Decided(checked)) => {
                self.metrics().redis.increment(1);
                checked
            }
            Some(Outcome::Failed) | None => {
                self.metrics().local.increment(1);
                if self.fail_closed {
                    Err(Limited::new(Duration::from_secs(1)))
                } else {
                    self.local.check_local(key)
                }
            }
        };
        self.local.record(checked, client)
    }
}

/// A fleet-wide rate limit as a tower layer, made by [`FleetBuilder::layer`]; it wraps
/// services in [`FleetLimit`]. Clones share the limit (and the link to Redis).
pub struct FleetLimitLayer<C: Clock = DefaultClock> {
    shared: Arc<FleetShared<C>>,
}

impl<C: Clock> Clone for FleetLimitLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: Clock> FleetLimitLayer<C> {
    /// The quota each instance enforces while Redis cannot decide.
    #[must_use]
    pub fn local_quota(&self) -> Quota {
        self.shared.local_quota
    }

    /// The link to Redis.
    #[must_use]
    pub fn redis(&self) -> &Redis {
        &self.shared.redis
    }
}

impl<C: Clock> fmt::Debug for FleetLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetLimitLayer")
            .field("limiter", &self.shared.local.config.name)
            .field("quota", &self.shared.local.config.quota)
            .field("fleet_size", &self.shared.size)
            .field("local_quota", &self.shared.local_quota)
            .field("fail_closed", &self.shared.fail_closed)
            .field("redis", &self.shared.redis)
            .finish()
    }
}

impl<S, C: Clock> tower_layer::Layer<S> for FleetLimitLayer<C> {
    type Service = FleetLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        FleetLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Enforces a fleet-wide rate limit on the requests to `S`; made by [`FleetLimitLayer`].
///
/// `S` must be `Clone`: a request waiting for Redis keeps the service that was ready when it
/// was called (tower's usual pattern), and a clone takes its place.
pub struct FleetLimit<S, C: Clock = DefaultClock> {
    inner: S,
    shared: Arc<FleetShared<C>>,
}

impl<S: Clone, C: Clock> Clone for FleetLimit<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, C: Clock> fmt::Debug for FleetLimit<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.shared.local.config.name)
            .finish()
    }
}

impl<S, C, ReqB, ResB> tower_service::Service<Request<ReqB>> for FleetLimit<S, C>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    C: Clock + Send + Sync + 'static,
{
    type Response = Response<LimitBody<ResB>>;
    type Error = S::Error;
    type Future = FleetFuture<S, ReqB, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        housekeeping::ensure_started(&shared.local);
        let Some(client) = shared.local.subject(&request) else {
            return FleetFuture::inner(self.inner.call(request));
        };
        let key = shared.local.key(&request, client);
        match shared.begin(&key) {
            Some(call) => {
                let clone = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, clone);
                FleetFuture::checking(call, ready, request, key, client, Arc::clone(shared))
            }
            None => match shared.decide(None, &key, client) {
                Ok(()) => FleetFuture::inner(self.inner.call(request)),
                Err(rejection) => FleetFuture::refused(shared.local.response(&rejection)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            shown("redis://:hunter2@db:6379/0"),
            "redis://:***@db:6379/0"
        );
        assert_eq!(shown("redis://app:hunter2@db/"), "redis://app:***@db/");
        assert_eq!(shown("redis://db:6379"), "redis://db:6379");
        assert_eq!(shown("redis://user@db"), "redis://user@db");
        assert_eq!(shown("redis://:p@ss@db/"), "redis://:***@db/");
    }

    #[test]
    fn lists_split_only_where_a_url_begins() {
        use super::split_nodes;
        assert_eq!(split_nodes("redis://a:1/"), ["redis://a:1/"]);
        assert_eq!(
            split_nodes("redis://a:1/, redis://b:2/,rediss://c:3/"),
            ["redis://a:1/", "redis://b:2/", "rediss://c:3/"]
        );
        assert_eq!(split_nodes("redis://:pa,ss@db/"), ["redis://:pa,ss@db/"]);
    }
}
