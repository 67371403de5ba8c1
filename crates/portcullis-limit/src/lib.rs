//! Rate limits, connection caps and load shedding that cannot be spoofed and cannot eat memory.
//!
//! - [`RateLimitLayer`] is a tower layer: a keyed GCRA limit (on
//!   [governor](https://docs.rs/governor)) per client address, per header value, per key of
//!   the application's choosing, or global. Refused requests get `429` with `Retry-After` and
//!   the IETF `RateLimit-Policy` / `RateLimit` fields. The limiter state is shared by every
//!   clone of the layer, so a router that clones it per route still enforces one limit.
//! - [`client::ClientIp`] resolves the client address: the TCP peer, unless the peer is a
//!   trusted proxy, in which case `Forwarded` / `X-Forwarded-For` / `X-Real-IP` are read from
//!   the right, skipping trusted hops. IPv6 clients aggregate to their /64.
//! - [`KeyedLimiter`] holds at most a fixed number of keys; housekeeping evicts idle ones.
//! - [`ConnLimiter`] caps connections globally and per client, checked right after accept;
//!   [`HandshakeLimiter`] caps concurrent TLS handshakes.
//! - [`LoadShedLayer`] caps requests in flight and answers `503` past it instead of queueing.
//!
//! It does not accept connections, read PROXY protocol headers (portcullis-listen does) or terminate
//! TLS (portcullis-tls does); portcullis-server wires them together.
//!
//! # Example
//!
//! ```
//! use portcullis_limit::{ConnLimits, RateLimitLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = RateLimitLayer::per_client("100/s burst 20".parse()?)
//!     .trusted_proxies(["10.0.0.0/8".parse()?])
//!     .exempt_path("/healthz")
//!     .layer();
//! // app.layer(layer) ...
//! let connections = ConnLimits::new(10_000).per_client(100.try_into()?).build();
//! # let _ = connections;
//! # Ok(())
//! # }
//! ```
//!
//! # Memory
//!
//! Every per-key table is bounded: the keyed limiter by its key cap (see [`KeyedLimiter`] for
//! the overflow policy), the per-client connection table by the global connection cap (an
//! entry lives only while its client has a connection open).
//!
//! # Metrics
//!
//! Every type resolves its metric handles when it is built ([`RateLimitBuilder::layer`],
//! [`ConnLimiter::new`], [`HandshakeLimiter::new`], [`LoadShedLayer::new`]), with the recorder
//! installed at that moment: install the recorder first. [`metrics`] lists every name.
//!
//! # Crate features
//!
//! - `serde`: [`Quota`] deserializes from its string form (`"100/s burst 20"`).
//! - `axum`: the layer reads the peer address from axum's `ConnectInfo<SocketAddr>` when no
//!   [`PeerAddr`] extension is present.

mod body;
pub mod client;
pub mod clock;
mod conn;
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

pub use body::LimitBody;
pub use conn::{
    ConnLimiter, ConnLimits, ConnPermit, ConnRejected, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_HANDSHAKES, HandshakeLimiter, HandshakePermit,
};
pub use key::{Key, KeyBy, MAX_KEY_LEN, PeerAddr, RequestInfo};
pub use layer::{DEFAULT_HOUSEKEEPING_INTERVAL, RateLimitBuilder, RateLimitLayer, Rejection};
pub use limiter::{DEFAULT_MAX_KEYS, GlobalLimiter, KeyedLimiter, Limited};
pub use quota::{Per, Quota, QuotaError};
pub use service::RateLimit;
pub use shed::{LoadShed, LoadShedLayer};
