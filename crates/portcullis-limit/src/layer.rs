//! [`RateLimit`]: the configuration, and the tower layer and service it builds.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use ipnet::IpNet;
use pin_project_lite::pin_project;
use tokio_util::sync::CancellationToken;

use crate::Quota;
use crate::body::LimitBody;
use crate::client::{ClientIp, KeyPrefix, TrustedProxies};
use crate::key::{Key, KeyBy, MAX_KEY_LEN, PeerAddr, RequestInfo};
use crate::limiter::{DEFAULT_MAX_KEYS, GlobalLimiter, KeyedLimiter, Limited};
use crate::metrics::{
    KEY_OVERFLOW_TOTAL, KEYS, KEYS_EVICTED_TOTAL, LABEL_LIMITER, LABEL_RESULT, REQUESTS_TOTAL,
};

/// How often housekeeping evicts idle keys by default: every 10 s. A key is idle once its
/// state is back to a fresh key's, so eviction changes no decision; the period only bounds how
/// long dead keys occupy the table.
pub const DEFAULT_HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(10);

/// Rewrites the 429 response the layer built (adds a body, a content type); see
/// [`RateLimit::on_limited`].
type Hook = dyn Fn(&Rejection, Response<Bytes>) -> Response<Bytes> + Send + Sync;

/// A request the layer refused: what the [`RateLimit::on_limited`] hook is told.
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

/// A request rate limit, built into a tower layer with [`RateLimit::layer`].
///
/// ```
/// use portcullis_limit::{Quota, RateLimit};
///
/// let limit = RateLimit::per_client("100/s burst 20".parse()?)
///     .name("api")
///     .trusted_proxies(["10.0.0.0/8".parse()?])
///     .exempt_path("/healthz");
/// let layer = limit.layer();
/// // let app = axum::Router::new()....layer(layer.clone());
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
#[derive(Clone)]
pub struct RateLimit {
    quota: Quota,
    key_by: KeyBy,
    name: &'static str,
    client_ip: ClientIp,
    prefix: KeyPrefix,
    max_keys: NonZeroUsize,
    dry_run: bool,
    exempt_paths: Vec<String>,
    exempt_clients: Vec<IpNet>,
    on_limited: Option<Arc<Hook>>,
}

impl RateLimit {
    /// `quota` per client address.
    pub fn per_client(quota: Quota) -> Self {
        Self::keyed_by(quota, KeyBy::Client)
    }

    /// `quota` for all requests together.
    pub fn global(quota: Quota) -> Self {
        Self::keyed_by(quota, KeyBy::Global)
    }

    /// `quota` per key.
    pub fn keyed_by(quota: Quota, key_by: KeyBy) -> Self {
        Self {
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
        }
    }

    /// The limiter's name: the `limiter` metric label and the policy name in the
    /// `RateLimit-Policy` field (default `default`). Keep it a short token.
    #[must_use]
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }

    /// Believe forwarding headers from peers in these ranges (default: none, the TCP peer is
    /// the client). See [`ClientIp`].
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

    /// How client addresses aggregate into keys (default IPv4 /32, IPv6 /64).
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The most keys tracked at once (default [`DEFAULT_MAX_KEYS`]); see
    /// [`KeyedLimiter`] for what happens past it.
    #[must_use]
    pub fn max_keys(mut self, max_keys: NonZeroUsize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Counts requests that would be refused (`result="dry_run_limited"`) but lets them
    /// through: to try a limit on live traffic before enforcing it.
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

    /// Rewrites every 429 response: called with the rejection and the response portcullis built
    /// (status, `Retry-After`, `RateLimit-Policy`, `RateLimit`, a short text body); returns
    /// the response to send.
    #[must_use]
    pub fn on_limited(
        mut self,
        hook: impl Fn(&Rejection, Response<Bytes>) -> Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.on_limited = Some(Arc::new(hook));
        self
    }

    /// The tower layer enforcing this limit. Call it once and clone the layer: each call makes
    /// a new, independent limiter.
    pub fn layer(self) -> RateLimitLayer {
        let limiter = match self.key_by {
            KeyBy::Global => Limiter::Direct(GlobalLimiter::new(self.quota)),
            _ => Limiter::Keyed(KeyedLimiter::with_max_keys(self.quota, self.max_keys)),
        };
        let policy = format!(
            "\"{}\";q={};w={}",
            self.name,
            self.quota.rate(),
            self.quota.per().seconds()
        );
        let counter = |result: &'static str| metrics::counter!(REQUESTS_TOTAL, LABEL_LIMITER => self.name, LABEL_RESULT => result);
        RateLimitLayer {
            shared: Arc::new(Shared {
                policy: HeaderValue::from_str(&policy).ok(),
                allowed: counter("allowed"),
                limited: counter("limited"),
                dry_run_limited: counter("dry_run_limited"),
                keys: metrics::gauge!(KEYS, LABEL_LIMITER => self.name),
                evicted: metrics::counter!(KEYS_EVICTED_TOTAL, LABEL_LIMITER => self.name),
                overflowed: metrics::counter!(KEY_OVERFLOW_TOTAL, LABEL_LIMITER => self.name),
                warned_no_peer: AtomicBool::new(false),
                limiter,
                config: self,
            }),
        }
    }
}

impl fmt::Debug for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
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

enum Limiter {
    Direct(GlobalLimiter),
    Keyed(KeyedLimiter<Key>),
}

struct Shared {
    config: RateLimit,
    limiter: Limiter,
    policy: Option<HeaderValue>,
    allowed: metrics::Counter,
    limited: metrics::Counter,
    dry_run_limited: metrics::Counter,
    keys: metrics::Gauge,
    evicted: metrics::Counter,
    overflowed: metrics::Counter,
    warned_no_peer: AtomicBool,
}

impl Shared {
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
                "a request carries no peer address (portcullis_limit::PeerAddr); such requests share \
                 one rate-limit bucket"
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
    fn check<B>(&self, request: &Request<B>) -> Result<(), Rejection> {
        let config = &self.config;
        if !config.exempt_paths.is_empty() && self.is_exempt_path(request.uri().path()) {
            return Ok(());
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
            return Ok(());
        }
        let checked = match &self.limiter {
            Limiter::Direct(limiter) => limiter.check(),
            Limiter::Keyed(limiter) => {
                let key = self.key(request, client);
                limiter.check(&key)
            }
        };
        match checked {
            Ok(()) => {
                self.allowed.increment(1);
                Ok(())
            }
            Err(_) if config.dry_run => {
                self.dry_run_limited.increment(1);
                Ok(())
            }
            Err(limited) => {
                self.limited.increment(1);
                Err(Rejection {
                    limiter: config.name,
                    quota: config.quota,
                    limited,
                    client,
                })
            }
        }
    }

    fn key<B>(&self, request: &Request<B>, client: IpAddr) -> Key {
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

    fn response(&self, rejection: &Rejection) -> Response<Bytes> {
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

    fn housekeeping(&self) {
        if let Limiter::Keyed(limiter) = &self.limiter {
            let evicted = limiter.evict_idle();
            self.evicted.increment(evicted);
            self.keys.set(limiter.len() as f64);
            self.overflowed.absolute(limiter.overflowed());
        }
    }
}

/// The tower layer of a [`RateLimit`]; clones share one limiter.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

impl RateLimitLayer {
    /// Keys with a state of their own now (0 for a global limit).
    pub fn keys(&self) -> usize {
        match &self.shared.limiter {
            Limiter::Direct(_) => 0,
            Limiter::Keyed(limiter) => limiter.len(),
        }
    }

    /// One housekeeping pass: evicts idle keys and updates the key gauges.
    pub fn evict_idle(&self) {
        self.shared.housekeeping();
    }

    /// Runs housekeeping every `every` until `stop` is cancelled (spawn it next to the server
    /// and pass the shutdown token). Without it, idle keys are never evicted and the table
    /// fills up to its cap.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops housekeeping; nothing is left half done.
    pub fn housekeeping(
        &self,
        every: Duration,
        stop: CancellationToken,
    ) -> impl Future<Output = ()> + Send + 'static {
        let shared = Arc::clone(&self.shared);
        async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = ticks.tick() => shared.housekeeping(),
                }
            }
        }
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("config", &self.shared.config)
            .field("keys", &self.keys())
            .finish()
    }
}

impl<S> tower_layer::Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service of a [`RateLimitLayer`].
#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for RateLimitService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitService")
            .field("inner", &self.inner)
            .field("limiter", &self.shared.config.name)
            .finish()
    }
}

impl<S, ReqB, ResB> tower_service::Service<Request<ReqB>> for RateLimitService<S>
where
    S: tower_service::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<LimitBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        match self.shared.check(&request) {
            Ok(()) => ResponseFuture::inner(self.inner.call(request)),
            Err(rejection) => ResponseFuture::refused(self.shared.response(&rejection)),
        }
    }
}

pin_project! {
    /// The response future of [`RateLimitService`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Inner {
            #[pin]
            future: F,
        },
        Refused {
            response: Option<Response<Bytes>>,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn refused(response: Response<Bytes>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<LimitBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => future
                .poll(cx)
                .map(|result| result.map(|response| response.map(LimitBody::inner))),
            StateProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .map(|response| response.map(LimitBody::full))
                .unwrap_or_else(|| Response::new(LimitBody::full(Bytes::new()))))),
        }
    }
}
