//! Connection caps checked right after accept: [`ConnLimiter`], and the TLS handshake cap
//! [`HandshakeLimiter`].

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::PoisonError;

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

/// Global and per-client connection caps.
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
/// Cloning gives another handle to the same caps.
#[derive(Clone)]
pub struct ConnLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    max_total: usize,
    total: AtomicUsize,
    per_client: Option<PerClient>,
    prefix: KeyPrefix,
    exempt: TrustedProxies,
    rejected_total: metrics::Counter,
    rejected_per_client: metrics::Counter,
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
    /// At most `max_total` connections at once, no per-client cap.
    pub fn new(max_total: usize) -> Self {
        Self::build(
            max_total,
            None,
            KeyPrefix::default(),
            TrustedProxies::none(),
        )
    }

    /// The same global cap, and at most `max` connections per client.
    #[must_use]
    pub fn per_client(self, max: NonZeroU32) -> Self {
        Self::build(
            self.inner.max_total,
            Some(max),
            self.inner.prefix,
            self.inner.exempt.clone(),
        )
    }

    /// Peers in these ranges are not held to the per-client cap: a reverse proxy or load
    /// balancer carries many clients over its connections. Usually the same ranges as the
    /// trusted proxies. The global cap still counts them.
    #[must_use]
    pub fn exempt_from_per_client(self, ranges: TrustedProxies) -> Self {
        Self::build(
            self.inner.max_total,
            self.max_per_client(),
            self.inner.prefix,
            ranges,
        )
    }

    fn max_per_client(&self) -> Option<NonZeroU32> {
        self.inner
            .per_client
            .as_ref()
            .and_then(|p| NonZeroU32::new(p.max))
    }

    /// Aggregates client addresses to `prefix` for the per-client cap (default IPv4 /32, IPv6
    /// /64).
    #[must_use]
    pub fn key_prefix(self, prefix: KeyPrefix) -> Self {
        Self::build(
            self.inner.max_total,
            self.max_per_client(),
            prefix,
            self.inner.exempt.clone(),
        )
    }

    fn build(
        max_total: usize,
        per_client: Option<NonZeroU32>,
        prefix: KeyPrefix,
        exempt: TrustedProxies,
    ) -> Self {
        let hasher = foldhash::fast::RandomState::default();
        let per_client = per_client.map(|max| PerClient {
            max: max.get(),
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
        });
        Self {
            inner: Arc::new(Inner {
                max_total,
                total: AtomicUsize::new(0),
                per_client,
                prefix,
                exempt,
                rejected_total: metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => "max_conns"),
                rejected_per_client: metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => "max_conns_per_ip"),
            }),
        }
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
                (open < inner.max_total).then_some(open + 1)
            });
        if reserved.is_err() {
            inner.rejected_total.increment(1);
            return Err(ConnRejected::MaxConnections);
        }
        Ok(ConnPermit {
            inner: Arc::clone(&self.inner),
            client: None,
        })
    }

    /// Connections holding a permit now.
    pub fn open(&self) -> usize {
        self.inner.total.load(Ordering::Acquire)
    }

    /// Open connections of `client` (aggregated to the key prefix); 0 without a per-client
    /// cap.
    pub fn open_from(&self, client: IpAddr) -> u32 {
        let Some(per_client) = &self.inner.per_client else {
            return 0;
        };
        let key = self.inner.prefix.apply(client);
        let table = per_client
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        table.get(&key).copied().unwrap_or(0)
    }

    /// How many clients have at least one open connection; 0 without a per-client cap.
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
            .field("max_total", &self.inner.max_total)
            .field("open", &self.open())
            .field(
                "max_per_client",
                &self.inner.per_client.as_ref().map(|p| p.max),
            )
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
        if self.client.is_some() || inner.exempt.contains(client) {
            return Ok(());
        }
        let key = inner.prefix.apply(client);
        let mut table = per_client
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let open = table.entry(key).or_insert(0);
        if *open >= per_client.max {
            drop(table);
            inner.rejected_per_client.increment(1);
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
/// or is turned away at once ([`HandshakeLimiter::try_acquire`]).
#[derive(Clone, Debug)]
pub struct HandshakeLimiter {
    semaphore: std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
    rejected: metrics::Counter,
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
    pub fn new(max: usize) -> Self {
        let max = max.min(tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            semaphore: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            rejected: metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => "max_handshakes"),
        }
    }

    /// Waits for a place. Put it under the handshake deadline.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future gives up its place in the queue and takes nothing.
    pub async fn acquire(&self) -> HandshakePermit {
        match std::sync::Arc::clone(&self.semaphore).acquire_owned().await {
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
                self.rejected.increment(1);
                None
            }
        }
    }

    /// A place if one is free now; otherwise counts a `max_handshakes` rejection.
    pub fn try_acquire(&self) -> Option<HandshakePermit> {
        match std::sync::Arc::clone(&self.semaphore).try_acquire_owned() {
            Ok(permit) => Some(HandshakePermit { _permit: permit }),
            Err(_) => {
                self.rejected.increment(1);
                None
            }
        }
    }

    /// Handshakes in progress now.
    pub fn in_progress(&self) -> usize {
        self.max - self.semaphore.available_permits()
    }
}

#[cfg(test)]
mod tests;
