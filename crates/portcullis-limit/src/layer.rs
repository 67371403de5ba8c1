//! [`RateLimitLayer`], the tower layer of a rate limit, and [`RateLimitBuilder`], its
//! configuration.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use http::Response;
use ipnet::IpNet;
use tokio_util::sync::CancellationToken;

use crate::Quota;
use crate::client::{ClientIp, KeyPrefix, TrustedProxies};
use crate::housekeeping;
use crate::key::KeyBy;
use crate::limiter::{DEFAULT_MAX_KEYS, Limited};
use crate::service::RateLimit;
use crate::state::Shared;

/// Rewrites the 429 response the layer built (adds a body, a content type); see
/// [`RateLimitBuilder::on_limited`].
pub(crate) type Hook = dyn Fn(&Rejection, Response<Bytes>) -> Response<Bytes> + Send + Sync;

/// A request the layer refused: what the [`RateLimitBuilder::on_limited`] hook is told.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Rejection {
    /// The limiter's name.
    pub limiter: &'static str,
    /// The quota that was exceeded.
    pub quota: Quota,
    /// How long until one more request of this key would be allowed.
    pub limited: Limited,
    /// The resolved client address.
    pub client: IpAddr,
}

/// The configuration of a rate limit, made by [`RateLimitLayer::per_client`],
/// [`RateLimitLayer::global`] or [`RateLimitLayer::keyed_by`] and turned into the layer by
/// [`RateLimitBuilder::layer`].
///
/// ```
/// use portcullis_limit::RateLimitLayer;
///
/// let layer = RateLimitLayer::per_client("100/s burst 20".parse()?)
///     .name("api")
///     .trusted_proxies(["10.0.0.0/8".parse()?])
///     .exempt_path("/healthz")
///     .layer();
/// // let app = axum::Router::new()....layer(layer.clone());
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// `C` is the clock the limiter reads time from: [`DefaultClock`] unless
/// [`RateLimitBuilder::clock`] says otherwise (tests pass a
/// [`FakeRelativeClock`](crate::clock::FakeRelativeClock)).
#[derive(Clone)]
pub struct RateLimitBuilder<C: Clock = DefaultClock> {
    pub(crate) quota: Quota,
    pub(crate) key_by: KeyBy,
    pub(crate) name: &'static str,
    pub(crate) client_ip: ClientIp,
    pub(crate) prefix: KeyPrefix,
    pub(crate) max_keys: NonZeroUsize,
    pub(crate) dry_run: bool,
    pub(crate) exempt_paths: Vec<String>,
    pub(crate) exempt_clients: Vec<IpNet>,
    pub(crate) on_limited: Option<Arc<Hook>>,
    pub(crate) clock: C,
}

impl<C: Clock> RateLimitBuilder<C> {
    /// The limiter's name: the `limiter` metric label and the policy name in the
    /// `RateLimit-Policy` field (default `default`). Keep it a short token.
    #[must_use]
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Believe forwarding headers from peers in these ranges (default: none, the TCP peer is
    /// the client: nothing a client writes is believed unless you say whom to believe). See
    /// [`ClientIp`].
    #[must_use]
    pub fn trusted_proxies(mut self, trusted: impl IntoIterator<Item = IpNet>) -> Self {
        self.client_ip = ClientIp::new(TrustedProxies::new(trusted));
        self
    }

    /// How the client address is resolved, in full.
    #[must_use]
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// How client addresses aggregate into keys (default IPv4 /32, IPv6 /64, because an IPv6
    /// host usually holds a whole /64 and could otherwise rotate through it).
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The most keys tracked at once (default [`DEFAULT_MAX_KEYS`]); see
    /// [`KeyedLimiter`](crate::KeyedLimiter) for what happens past it.
    #[must_use]
    pub fn max_keys(mut self, max_keys: NonZeroUsize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Counts requests that would be refused (`result="dry_run_limited"`) but lets them
    /// through: to try a limit on live traffic before enforcing it (default `false`).
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Never limits requests for `path`; a path ending in `/` exempts everything under it
    /// (`"/internal/"`). For health checks and the like.
    #[must_use]
    pub fn exempt_path(mut self, path: impl Into<String>) -> Self {
        self.exempt_paths.push(path.into());
        self
    }

    /// Never limits requests from clients in `range` (monitoring, an internal network).
    #[must_use]
    pub fn exempt_clients(mut self, range: IpNet) -> Self {
        self.exempt_clients.push(range);
        self
    }

    /// Rewrites every 429 response: called with the rejection and the response portcullis
    /// built (status, `Retry-After`, `RateLimit-Policy`, `RateLimit`, a short text body);
    /// returns the response to send.
    #[must_use]
    pub fn on_limited(
        mut self,
        hook: impl Fn(&Rejection, Response<Bytes>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_limited = Some(Arc::new(hook));
        self
    }

    /// Reads time from `clock` (a governor [`Clock`](crate::clock::Clock), cloned for the
    /// limiter) instead of [`DefaultClock`]: the seam for tests, which pass a
    /// [`FakeRelativeClock`](crate::clock::FakeRelativeClock) and advance it instead of
    /// sleeping. Housekeeping still runs on tokio's timer; only the limiter's arithmetic reads
    /// this clock.
    #[must_use]
    pub fn clock<C2: Clock>(self, clock: C2) -> RateLimitBuilder<C2> {
        RateLimitBuilder {
            quota: self.quota,
            key_by: self.key_by,
            name: self.name,
            client_ip: self.client_ip,
            prefix: self.prefix,
            max_keys: self.max_keys,
            dry_run: self.dry_run,
            exempt_paths: self.exempt_paths,
            exempt_clients: self.exempt_clients,
            on_limited: self.on_limited,
            clock,
        }
    }

    /// The quota.
    #[must_use]
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The tower layer enforcing this limit. Call it once and clone the layer: each call makes
    /// a new, independent limiter.
    #[must_use]
    pub fn layer(self) -> RateLimitLayer<C>
    where
        C: Clone,
    {
        RateLimitLayer {
            shared: Arc::new(Shared::new(self)),
        }
    }
}

impl<C: Clock> fmt::Debug for RateLimitBuilder<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("key_by", &self.key_by)
            .field("client_ip", &self.client_ip)
            .field("max_keys", &self.max_keys)
            .field("dry_run", &self.dry_run)
            .field("exempt_paths", &self.exempt_paths)
            .field("exempt_clients", &self.exempt_clients)
            .finish_non_exhaustive()
    }
}

/// A request rate limit as a tower layer; it wraps services in [`RateLimit`].
///
/// ```
/// use portcullis_limit::RateLimitLayer;
///
/// let layer = RateLimitLayer::per_client("100/s burst 20".parse()?).name("api").layer();
/// # let _ = layer;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// The layer holds the limiter behind an `Arc`: every clone of it, and every service it makes
/// (a router cloning it per route, per connection), counts against the same limit.
///
/// A request over the limit is answered `429 Too Many Requests` with
///
/// - `Retry-After: N`: whole seconds until one more request is allowed, rounded up, never 0;
/// - `RateLimit-Policy: "NAME";q=RATE;w=WINDOW` and `RateLimit: "NAME";r=0;t=N`, the fields of
///   the IETF draft `draft-ietf-httpapi-ratelimit-headers`: the quota is `RATE` requests per
///   `WINDOW` seconds (1, 60 or 3600 as written in the [`Quota`]), none remain, and `N` seconds
///   until one is allowed again.
///
/// # Housekeeping
///
/// A keyed limiter must evict idle keys now and then, or the table fills to its cap and every
/// new client ends up in the shared overflow state. Nobody has to remember it: the first
/// request checked inside a tokio runtime spawns a housekeeping task on that runtime, every
/// [`DEFAULT_HOUSEKEEPING_INTERVAL`]. The task holds no strong reference to the limiter: it
/// ends when the last clone of the layer and of its services is dropped, and with its
/// runtime (the next request checked in another runtime starts it again there). The runtime
/// needs its time driver (`enable_time`; `#[tokio::main]` has it): without one tokio panics
/// when the task's timer is made, which turns housekeeping off with an error logged (under
/// `panic = "abort"` that panic ends the process).
///
/// To run housekeeping elsewhere (on a schedule of your own, on another runtime), spawn
/// [`RateLimitLayer::housekeeping`] instead; from that call on the automatic task never starts
/// (and one already running stops at its next tick). [`RateLimitLayer::evict_idle`] runs one
/// pass by hand.
pub struct RateLimitLayer<C: Clock = DefaultClock> {
    shared: Arc<Shared<C>>,
}

impl<C: Clock> Clone for RateLimitLayer<C> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// How often housekeeping evicts idle keys by default: every 10 s. A key is idle once its
/// state is back to a fresh key's, so eviction changes no decision; the period only bounds how
/// long dead keys occupy the table.
pub const DEFAULT_HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

impl RateLimitLayer {
    /// `quota` per client address.
    #[must_use]
    pub fn per_client(quota: Quota) -> RateLimitBuilder {
        Self::keyed_by(quota, KeyBy::Client)
    }

    /// `quota` for all requests together.
    #[must_use]
    pub fn global(quota: Quota) -> RateLimitBuilder {
        Self::keyed_by(quota, KeyBy::Global)
    }

    /// `quota` per key.
    #[must_use]
    pub fn keyed_by(quota: Quota, key_by: KeyBy) -> RateLimitBuilder {
        RateLimitBuilder {
            quota,
            key_by,
            name: "default",
            client_ip: ClientIp::new(TrustedProxies::none()),
            prefix: KeyPrefix::default(),
            max_keys: DEFAULT_MAX_KEYS,
            dry_run: false,
            exempt_paths: Vec::new(),
            exempt_clients: Vec::new(),
            on_limited: None,
            clock: DefaultClock::default(),
        }
    }
}

impl<C: Clock> RateLimitLayer<C> {
    /// Keys with a state of their own now (0 for a global limit).
    #[must_use]
    pub fn keys(&self) -> usize {
        self.shared.keys()
    }

    /// One housekeeping pass now: evicts idle keys and updates the key gauges.
    pub fn evict_idle(&self) {
        self.shared.housekeeping_pass();
    }
}

impl<C> RateLimitLayer<C>
where
    C: Clock + Send + Sync + 'static,
{
    /// Runs housekeeping every `every` until `stop` is cancelled or the last clone of the
    /// layer and its services is dropped, for an application that wants it on a runtime or a
    /// schedule of its choosing. Calling it turns the automatic housekeeping off for good
    /// (see [Housekeeping](RateLimitLayer#housekeeping)), even if the future is never polled.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops housekeeping; nothing is left half done.
    pub fn housekeeping(
        &self,
        every: Duration,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        housekeeping::managed(&self.shared, every, stop)
    }
}

impl<C: Clock> fmt::Debug for RateLimitLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared.config)
            .field("keys", &self.keys())
            .field("housekeeping", &self.shared.housekeeping)
            .finish()
    }
}

impl<S, C: Clock> tower_layer::Layer<S> for RateLimitLayer<C> {
    type Service = RateLimit<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}
