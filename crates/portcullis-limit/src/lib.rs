//! Rate limits, connection caps and load shedding that cannot be spoofed and cannot eat memory.
//!
//! - [`RateLimitLayer`] is a tower layer enforcing a keyed GCRA limit (on
//!   [governor](https://docs.rs/governor)) per client address, per header value, per key of
//!   the application's choosing, or global; it wraps services in [`RateLimit`]. Refused
//!   requests get `429` with `Retry-After` and the IETF `RateLimit-Policy` / `RateLimit`
//!   fields. The limiter state is shared by every clone of the layer, so a router that clones
//!   it per route still enforces one limit.
//! - [`client::ClientIp`] resolves the client address: the TCP peer, unless the peer is a
//!   trusted proxy, in which case `Forwarded` / `X-Forwarded-For` / `X-Real-IP` are read from
//!   the right, skipping trusted hops. IPv6 clients aggregate to their /64.
//! - [`KeyedLimiter`] holds at most a fixed number of keys; housekeeping, which the rate limit
//!   starts by itself, evicts idle ones.
//! - [`ConnLimiter`] caps connections globally and per client, checked right after accept;
//!   [`HandshakeLimiter`] caps concurrent TLS handshakes.
//! - [`LoadShedLayer`] caps requests in flight and answers `503` past it instead of queueing.
//! - [`IpFilter`] is the connection filter: CIDR allow and deny lists ([`FilterRules`]),
//!   checked at accept in one binary search, reloaded atomically.
//! - [`Bans`] are temporary, escalating bans of clients refused too often ([`BanPolicy`]),
//!   with bounded memory and an admin API ([`Bans::answer`]).
//! - [`fleet`] (feature `redis`) keeps a rate limit in Redis for a whole fleet of instances,
//!   falling back to rate / fleet size locally whenever Redis is slow or down.
//!
//! It does not accept connections, read PROXY protocol headers (portcullis-listen does) or
//! terminate TLS (portcullis-tls does); portcullis-server wires them together. It never
//! installs a metrics recorder.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//!
//! use http::{Request, Response, StatusCode};
//! use portcullis_limit::{ConnLimits, LoadShedLayer, PeerAddr, RateLimitLayer};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Two requests a minute per client; our load balancers live in 10.0.0.0/8.
//! let rate_limit = RateLimitLayer::per_client("2/m".parse()?)
//!     .name("api")
//!     .trusted_proxies(["10.0.0.0/8".parse()?])
//!     .exempt_path("/healthz")
//!     .layer();
//! let app = service_fn(|_request: Request<()>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("hello\n")))
//! });
//! // At most 1 000 requests in flight, then the rate limit, then the application.
//! let service = LoadShedLayer::new(1_000).layer(rate_limit.layer(app));
//!
//! for expected in [StatusCode::OK, StatusCode::OK, StatusCode::TOO_MANY_REQUESTS] {
//!     // portcullis-server inserts the peer address; another server can do it itself.
//!     let mut request = Request::get("/").body(())?;
//!     request.extensions_mut().insert(PeerAddr("203.0.113.7:40000".parse()?));
//!     let response = service.clone().oneshot(request).await?;
//!     assert_eq!(response.status(), expected);
//! }
//!
//! // Connection caps, checked by the server right after accept.
//! let connections = ConnLimits::new(10_000).per_client(100.try_into()?).build();
//! let permit = connections.try_acquire("203.0.113.7".parse()?)?;
//! assert_eq!(connections.open_from("203.0.113.7".parse()?), 1);
//! drop(permit);
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! The middleware has tower's shape:
//!
//! | type | what it is |
//! |---|---|
//! | [`RateLimitBuilder`] | the configuration: quota, key, trusted proxies, exemptions, the clock; made by [`RateLimitLayer::per_client`], [`RateLimitLayer::global`] or [`RateLimitLayer::keyed_by`] |
//! | [`RateLimitLayer`] | `Clone + Debug`, an `Arc` over the shared state: the limiter, the metric handles, the housekeeping switch |
//! | [`RateLimit<S>`](RateLimit) | the service; [`future::ResponseFuture`] its future |
//! | [`LoadShedLayer`] / [`LoadShed<S>`](LoadShed) | the in-flight limit; [`future::LoadShedFuture`] its future |
//! | [`ConnLimits`] / [`ConnLimiter`] | connection caps: plain configuration, and the shared handle built from it |
//!
//! Configuration and shared state are different types: a builder makes new state once
//! ([`RateLimitBuilder::layer`], [`ConnLimits::build`]); the handles it returns only clone
//! the `Arc`, so no clone can end up counting apart from the others.
//!
//! **Housekeeping.** A keyed limiter evicts keys whose state is back to a fresh key's (so
//! eviction changes no decision). The first request checked inside a tokio runtime spawns a
//! task doing so every [`DEFAULT_HOUSEKEEPING_INTERVAL`]; it holds only a weak reference and
//! ends with the last clone of the layer, or with its runtime. The hot path pays one relaxed
//! atomic load for it. An application that wants it elsewhere spawns
//! [`RateLimitLayer::housekeeping`], which turns the automatic task off. Why a task started
//! lazily rather than a process-wide registry or eviction amortised over requests: see
//! [`RateLimitLayer`]'s docs and the `housekeeping` module's source.
//!
//! **Time** is read from a governor [`clock::Clock`]: [`clock::DefaultClock`] unless
//! [`RateLimitBuilder::clock`] (or [`KeyedLimiter::with_clock`]) injects another, such as
//! [`clock::FakeRelativeClock`] in tests, which advance it instead of sleeping.
//!
//! # Memory
//!
//! Every per-key table is bounded: the keyed limiter by its key cap (see [`KeyedLimiter`] for
//! the overflow policy), the per-client connection table by the global connection cap (an
//! entry lives only while its client has a connection open).
//!
//! # Metrics
//!
//! Emitted through the [`metrics`](https://docs.rs/metrics) facade only; [`metrics`] lists
//! every name, [`metrics::describe`] registers units and help, and [`metrics::register`]
//! creates the series of closed label sets at 0. Handles are resolved on first use (the first
//! request checked, the first rejection, the first shed request), not when a limiter is built,
//! so building it before or after the recorder is installed makes no difference; install the
//! recorder before serving.
//!
//! # Types from other crates
//!
//! Public signatures use, besides this crate's and std's types:
//!
//! - [`http`] (re-exported): `Request`, `Response`, `HeaderMap`, `HeaderName`, `HeaderValue`,
//!   `Method`, `Uri`, `Extensions`;
//! - [`Bytes`] (re-exported from `bytes`): the body of the responses the layers write;
//! - [`CancellationToken`] (re-exported from `tokio-util`): stops
//!   [`RateLimitLayer::housekeeping`];
//! - [`client::IpNet`] (re-exported from `ipnet`): trusted and exempt address ranges;
//! - [`clock::Clock`], [`clock::DefaultClock`], [`clock::FakeRelativeClock`],
//!   [`clock::Reference`] (re-exported from `governor`): the limiters' clocks;
//! - the traits this crate implements: tower's `Layer` and `Service`, `http_body::Body` (for
//!   [`LimitBody`]), and with `serde`, `Deserialize`.
//!
//! # Crate features
//!
//! - `serde`: [`Quota`] deserializes from its string form (`"100/s burst 20"`).
//! - `axum`: the layer reads the peer address from axum's `ConnectInfo<SocketAddr>` when no
//!   [`PeerAddr`] extension is present.
//! - `redis`: [`fleet`], fleet-wide limits in Redis (on the `redis` crate with tokio).

pub mod ban;
mod body;
pub mod client;
pub mod clock;
mod conn;
pub mod filter;
#[cfg(feature = "redis")]
pub mod fleet;
pub mod future;
mod housekeeping;
mod key;
mod layer;
mod limiter;
mod loom;
pub mod metrics;
mod quota;
mod service;
mod shed;
mod state;
mod store;

/// Internals public only for the fuzz targets (`fuzz/fuzz_targets/forwarded.rs`): not part of
/// the API, no stability promise. Applications use [`client::ClientIp`].
#[doc(hidden)]
pub mod internal {
    pub use crate::client::elements::{RevElements, parse_forwarded_element, parse_xff_element};
}

pub use ban::{
    BAN_HISTORY, BANS_PATH, BanEntry, BanPolicy, BanReason, Bans, DEFAULT_BAN_FOR, DEFAULT_BAN_MAX,
    DEFAULT_BAN_WINDOW, DEFAULT_MAX_BANS, DEFAULT_MAX_OFFENDERS, Strike,
};
pub use body::LimitBody;
pub use bytes::Bytes;
pub use conn::{
    ConnLimiter, ConnLimits, ConnPermit, ConnRejected, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDSHAKES, HandshakeLimiter, HandshakePermit,
};
pub use filter::{FilterRules, IpFilter};
pub use http;
pub use key::{Key, KeyBy, MAX_KEY_LEN, PeerAddr, RequestInfo};
pub use layer::{DEFAULT_HOUSEKEEPING_INTERVAL, RateLimitBuilder, RateLimitLayer, Rejection};
pub use limiter::{DEFAULT_MAX_KEYS, GlobalLimiter, KeyedLimiter, Limited};
pub use quota::{Per, Quota, QuotaError};
pub use service::RateLimit;
pub use shed::{LoadShed, LoadShedLayer};
pub use tokio_util::sync::CancellationToken;
