//! Connection caps checked right after accept: [`ConnLimiter`], and the TLS handshake cap
//! [`HandshakeLimiter`].

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{OnceLock, PoisonError};

use crate::client::{KeyPrefix, TrustedProxies};
use crate::loom::{Arc, AtomicUsize, Mutex, Ordering};
use crate::metrics::{CONNECTIONS_REJECTED_TOTAL, LABEL_REASON};

/// How many locks the per-client table is split into: connections from different clients
/// rarely wait for each other.
const SHARDS: usize = 64;

/// The default global connection cap: 10 000, far above what one process serves well yet
/// below the descriptor limit a service is usually given (`LimitNOFILE=65536`), so the cap, not
/// `EMFILE`, is what a flood meets first.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

/// The default cap on concurrent TLS handshakes: 1 024. It leaves room for a reconnect storm
/// of a large fleet, while handshakes in progress beyond it (each a few hundred microseconds
/// of public-key work) would only queue for the CPU past their deadline.
pub const DEFAULT_MAX_HANDSHAKES: usize = 1024;

/// Why a connection was refused. Its [`ConnRejected::reason`] is the metric label value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnRejected {
    /// The global cap was reached.
    MaxConnections,
    /// The client (its address, aggregated to the key prefix) reached its own cap.
    MaxConnectionsPerClient,
}

impl ConnRejected {
    /// The value of the `reason` label: `max_conns` or `max_conns_per_ip`.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            ConnRejected::MaxConnections => "max_conns",
            ConnRejected::MaxConnectionsPerClient => "max_conns_per_ip",
        }
    }
}

impl fmt::Display for ConnRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnRejected::MaxConnections => f.write_str("the global connection cap is reached"),
            ConnRejected::MaxConnectionsPerClient => {
                f.write_str("the client's connection cap is reached")
            }
        }
    }
}

impl std::error::Error for ConnRejected {}

/// The configuration of a [`ConnLimiter`]: a global connection cap and, optionally, a
/// per-client one. Plain data; [`ConnLimits::build`] makes the shared limiter.
///
/// ```
/// use portcullis_limit::{ConnLimiter, ConnLimits};
/// use portcullis_limit::client::TrustedProxies;
///
/// let limiter: ConnLimiter = ConnLimits::new(10_000)
///     .per_client(100.try_into()?)
///     .exempt_from_per_client(TrustedProxies::new(["10.0.0.0/8".parse()?]))
///     .build();
/// # let _ = limiter;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    max_total: usize,
    per_client: Option<NonZeroU32>,
    prefix: KeyPrefix,
    exempt: TrustedProxies,
}

impl ConnLimits {
    /// At most `max_total` connections at once; no per-client cap until
    /// [`ConnLimits::per_client`] sets one.
    #[must_use]
    pub fn new(max_total: usize) -> Self {
        Self {
            max_total,
            per_client: None,
            prefix: KeyPrefix::default(),
            exempt: TrustedProxies::none(),
        }
    }

    /// At most `max` connections per client too (default: no per-client cap, since behind a
    /// proxy that is not exempt every client would share the proxy's).
    #[must_use]
    pub fn per_client(mut self, max: NonZeroU32) -> Self {
        self.per_client = Some(max);
        self
    }

    /// Peers in these ranges are not held to the per-client cap: a reverse proxy or load
    /// balancer carries many clients over its connections. Usually the same ranges as the
    /// trusted proxies. The global cap still counts them. Default: nothing is exempt.
    #[must_use]
    pub fn exempt_from_per_client(mut self, ranges: TrustedProxies) -> Self {
        self.exempt = ranges;
        self
    }

    /// Aggregates client addresses to `prefix` for the per-client cap (default IPv4 /32, IPv6
    /// /64, so one host cannot escape its cap by rotating through its /64).
    #[must_use]
    pub fn key_prefix(mut self, prefix: KeyPrefix) -> Self {
        self.prefix = prefix;
        self
    }

    /// The global cap.
    #[must_use]
    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// The per-client cap, if any.
    #[must_use]
    pub fn max_per_client(&self) -> Option<NonZeroU32> {
        self.per_client
    }

    /// The limiter enforcing these caps. Each call makes a new, independent one: build it once
    /// and clone the [`ConnLimiter`].
    #[must_use]
    pub fn build(self) -> ConnLimiter {
        let hasher = foldhash::fast::RandomState::default();
        let per_client = self.per_client.map(|max| PerClient {
            max: max.get(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
        });
        ConnLimiter {
            inner: Arc::new(Inner {
                total: AtomicUsize::new(0),
                per_client,
                limits: self,
                metrics: OnceLock::new(),
            }),
        }
    }
}

impl From<ConnLimits> for ConnLimiter {
    fn from(limits: ConnLimits) -> Self {
        limits.build()
    }
}

/// Global and per-client connection caps: the shared handle, built from [`ConnLimits`].
///
/// [`ConnLimiter::try_acquire`] is called right after accept, before anything is read from the
/// connection or any TLS work is done; over a cap it fails at once and the caller closes the
/// connection. The returned [`ConnPermit`] is held for the connection's life and released when
/// dropped, however the connection ends (a panic in its task included).
///
/// Per-client counts live in a table that only holds clients with at least one open
/// connection: the entry goes with the client's last connection, so the table is bounded by
/// the global cap. Clients are keyed by address aggregated to a [`KeyPrefix`] (IPv6 /64 by
/// default), so one host cannot escape its cap by rotating through its /64.
///
/// Cloning gives another handle to the same caps. The handle has no setters: configuration is
/// [`ConnLimits`], so no clone can end up counting apart from the others.
#[derive(Clone)]
pub struct ConnLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    limits: ConnLimits,
    total: AtomicUsize,
    per_client: Option<PerClient>,
    /// Resolved on the first rejection, against the recorder installed then.
    metrics: OnceLock<ConnMetrics>,
}

struct ConnMetrics {
    rejected_total: metrics::Counter,
    rejected_per_client: metrics::Counter,
}

impl Inner {
    fn metrics(&self) -> &ConnMetrics {
        self.metrics.get_or_init(|| ConnMetrics {
            rejected_total: metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => ConnRejected::MaxConnections.reason()),
            rejected_per_client: metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => ConnRejected::MaxConnectionsPerClient.reason()),
        })
    }
}

struct PerClient {
    max: u32,
    hasher: foldhash::fast::RandomState,
    shards: Box<[Mutex<HashMap<IpAddr, u32, foldhash::fast::RandomState>>]>,
}

impl PerClient {
    fn shard(&self, client: &IpAddr) -> &Mutex<HashMap<IpAddr, u32, foldhash::fast::RandomState>> {
        // SHARDS is a power of two.
        let index = self.hasher.hash_one(client) as usize & (SHARDS - 1);
        &self.shards[index]
    }
}

impl ConnLimiter {
    /// At most `max_total` connections at once, no per-client cap: shorthand for
    /// `ConnLimits::new(max_total).build()`.
    #[must_use]
    pub fn new(max_total: usize) -> Self {
        ConnLimits::new(max_total).build()
    }

    /// The caps this limiter enforces.
    #[must_use]
    pub fn limits(&self) -> &ConnLimits {
        &self.inner.limits
    }

    /// Takes a place for one connection from `client`, or says which cap is reached and counts
    /// the rejection.
    ///
    /// # Errors
    ///
    /// [`ConnRejected`] when a cap is reached; nothing was taken.
    pub fn try_acquire(&self, client: IpAddr) -> Result<ConnPermit, ConnRejected> {
        let mut permit = self.try_acquire_global()?;
        permit.add_client(client)?;
        Ok(permit)
    }

    /// Takes a place under the global cap only, for a connection whose client is not known
    /// yet (it comes in a PROXY protocol header) or has no address (a Unix socket). Add the
    /// client with [`ConnPermit::add_client`] once known.
    ///
    /// # Errors
    ///
    /// [`ConnRejected::MaxConnections`] when the global cap is reached; nothing was taken.
    pub fn try_acquire_global(&self) -> Result<ConnPermit, ConnRejected> {
        let inner = &self.inner;
        let reserved = inner
            .total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < inner.limits.max_total).then_some(open + 1)
            });
        if reserved.is_err() {
            inner.metrics().rejected_total.increment(1);
            return Err(ConnRejected::MaxConnections);
        }
        Ok(ConnPermit {
            inner: Arc::clone(&self.inner),
            client: None,
        })
    }

    /// Connections holding a permit now.
    #[must_use]
    pub fn open(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }

    /// Open connections of `client` (aggregated to the key prefix); 0 without a per-client
    /// cap.
    #[must_use]
    pub fn open_from(&self, client: IpAddr) -> u32 {
        let Some(per_client) = &self.inner.per_client else {
            return 0;
        };
        let key = self.inner.limits.prefix.apply(client);
        let table = per_client
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        table.get(&key).copied().unwrap_or(0)
    }

    /// How many clients have at least one open connection; 0 without a per-client cap.
    #[must_use]
    pub fn clients(&self) -> usize {
        self.inner.per_client.as_ref().map_or(0, |per_client| {
            per_client
                .shards
                .iter()
                .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
                .sum()
        })
    }
}

impl fmt::Debug for ConnLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnLimiter")
            .field("max_total", &self.inner.limits.max_total)
            .field("open", &self.open())
            .field("max_per_client", &self.inner.limits.per_client)
            .finish()
    }
}

/// One connection's place under the caps of a [`ConnLimiter`]; released when dropped.
#[must_use = "the place is released as soon as the permit is dropped"]
pub struct ConnPermit {
    inner: Arc<Inner>,
    client: Option<IpAddr>,
}

impl ConnPermit {
    /// Counts this connection against `client`'s cap too. A permit counts against one client
    /// at most: a second call, a client in the exempt ranges, or a limiter without a
    /// per-client cap changes nothing.
    ///
    /// # Errors
    ///
    /// [`ConnRejected::MaxConnectionsPerClient`] when the client is at its cap (counted); the
    /// caller closes the connection, and dropping the permit gives its global place back.
    pub fn add_client(&mut self, client: IpAddr) -> Result<(), ConnRejected> {
        let inner = &self.inner;
        let Some(per_client) = &inner.per_client else {
            return Ok(());
        };
        if self.client.is_some() || inner.limits.exempt.contains(client) {
            return Ok(());
        }
        let key = inner.limits.prefix.apply(client);
        let mut table = per_client
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = table.entry(key).or_insert(0);
        if *open >= per_client.max {
            drop(table);
            inner.metrics().rejected_per_client.increment(1);
            return Err(ConnRejected::MaxConnectionsPerClient);
        }
        *open += 1;
        self.client = Some(key);
        Ok(())
    }
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let inner = &self.inner;
        if let (Some(key), Some(per_client)) = (self.client, &inner.per_client) {
            let mut table = per_client
                .shard(&key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(open) = table.get_mut(&key) {
                *open -= 1;
                if *open == 0 {
                    table.remove(&key);
                }
            }
        }
        inner.total.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for ConnPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnPermit")
            .field("client", &self.client)
            .finish()
    }
}

/// A cap on concurrent TLS handshakes, for the TLS stage of a server.
///
/// Handshakes are the expensive part of a TLS connection (public-key operations); capping how
/// many run at once keeps a flood of new connections from starving established ones of CPU.
/// A connection waits for a place under its handshake deadline ([`HandshakeLimiter::acquire`])
/// or is turned away at once ([`HandshakeLimiter::try_acquire`]). Its only setting is the
/// constructor's; clones share one cap.
#[derive(Clone)]
pub struct HandshakeLimiter {
    inner: std::sync::Arc<HandshakeInner>,
}

struct HandshakeInner {
    semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
    /// Resolved on the first rejection, against the recorder installed then.
    rejected: OnceLock<metrics::Counter>,
}

/// A place under a [`HandshakeLimiter`]; released when dropped, which should be as soon as
/// the handshake ends.
#[derive(Debug)]
#[must_use = "the place is released as soon as the permit is dropped"]
pub struct HandshakePermit {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl HandshakeLimiter {
    /// At most `max` handshakes at once (`usize::MAX`: no cap; values above tokio's
    /// `Semaphore::MAX_PERMITS` are capped there).
    #[must_use]
    pub fn new(max: usize) -> Self {
        let max = max.min(tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            inner: std::sync::Arc::new(HandshakeInner {
                semaphore: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
                max,
                rejected: OnceLock::new(),
            }),
        }
    }

    fn count_rejection(&self) {
        self.inner
            .rejected
            .get_or_init(
                || metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => "max_handshakes"),
            )
            .increment(1);
    }

    /// Waits for a place. Put it under the handshake deadline.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future gives up its place in the queue and takes nothing.
    pub async fn acquire(&self) -> HandshakePermit {
        match std::sync::Arc::clone(&self.inner.semaphore)
            .acquire_owned()
            .await
        {
            Ok(permit) => HandshakePermit { _permit: permit },
            // The semaphore is never closed.
            Err(_closed) => unreachable!("the handshake semaphore is never closed"),
        }
    }

    /// Waits at most `wait` for a place (put it under the handshake deadline); on timeout
    /// counts a `max_handshakes` rejection and returns `None`.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future gives up its place in the queue and takes nothing.
    pub async fn acquire_within(&self, wait: std::time::Duration) -> Option<HandshakePermit> {
        match tokio::time::timeout(wait, self.acquire()).await {
            Ok(permit) => Some(permit),
            Err(_elapsed) => {
                self.count_rejection();
                None
            }
        }
    }

    /// A place if one is free now; otherwise counts a `max_handshakes` rejection.
    #[must_use = "the place is released at once if the permit is dropped"]
    pub fn try_acquire(&self) -> Option<HandshakePermit> {
        match std::sync::Arc::clone(&self.inner.semaphore).try_acquire_owned() {
            Ok(permit) => Some(HandshakePermit { _permit: permit }),
            Err(_) => {
                self.count_rejection();
                None
            }
        }
    }

    /// The cap.
    #[must_use]
    pub fn max(&self) -> usize {
        self.inner.max
    }

    /// Handshakes in progress now.
    #[must_use]
    pub fn in_progress(&self) -> usize {
        self.inner.max - self.inner.semaphore.available_permits()
    }
}

impl fmt::Debug for HandshakeLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeLimiter")
            .field("max", &self.inner.max)
            .field("in_progress", &self.in_progress())
            .finish()
    }
}

#[cfg(test)]
mod tests;
