//! [`KeyedLimiter`] and [`Limited`]: GCRA on governor, with a hard cap on live keys.

use std::fmt;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};

use crate::Quota;
use crate::store::BoundedStore;

/// How many keys a [`KeyedLimiter`] tracks by default: 100 000, about 10 MB for IP keys.
///
/// That covers the distinct clients of a busy service within one eviction period (a key lives
/// as long as it is refilling, at most `burst × interval` after its last request). Past it,
/// new clients share one bucket rather than growing memory; see [`KeyedLimiter`].
pub const DEFAULT_MAX_KEYS: NonZeroUsize = match NonZeroUsize::new(100_000) {
    Some(n) => n,
    None => unreachable!(),
};

/// The hasher of the key map: seeded per process, so clients cannot aim keys at one bucket
/// of the map, and fast on short keys such as addresses.
pub(crate) type KeyHasher = foldhash::fast::RandomState;

/// A request was over its quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limited {
    wait: Duration,
}

impl Limited {
    pub(crate) fn new(wait: Duration) -> Self {
        Self { wait }
    }

    /// How long until the same key would be allowed one request.
    #[must_use]
    pub fn wait(&self) -> Duration {
        self.wait
    }

    /// [`Limited::wait`] in whole seconds, rounded up and at least 1: the value of a
    /// `Retry-After` field. A client told `0` retries at once, which is never what a limit wants.
    #[must_use]
    pub fn retry_after_secs(&self) -> u64 {
        let secs = self.wait.as_secs() + u64::from(self.wait.subsec_nanos() > 0);
        secs.max(1)
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rate limited: retry in {:?}", self.wait)
    }
}

impl std::error::Error for Limited {}

type Governor<K, C> =
    governor::RateLimiter<K, BoundedStore<K, KeyHasher>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// A GCRA rate limiter with one state per key and bounded memory.
///
/// Each key gets its own [`Quota`]. At most `max_keys` keys are tracked at once (default
/// [`DEFAULT_MAX_KEYS`]); [`KeyedLimiter::evict_idle`], run on a schedule, removes keys whose
/// state is back to that of a fresh key, so eviction never changes a decision.
///
/// # When the key table is full
///
/// A key that is not tracked yet while the table is full shares one *overflow* state with every
/// other such key, under the same quota. Keys already tracked keep their own state. So a flood
/// of distinct addresses costs no memory, gets one client's worth of requests between all of
/// them, and cannot push out the clients already known. Rejecting new keys outright would lock
/// out every new legitimate client for the same flood; letting them through unlimited would
/// hand the flood the server. Both counts are visible: [`KeyedLimiter::overflowed`] and the
/// `portcullis_limit_key_overflow_total` metric of the layer.
pub struct KeyedLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    governor: Governor<K, C>,
    store: BoundedStore<K, KeyHasher>,
    quota: Quota,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// A limiter allowing `quota` per key, tracking at most [`DEFAULT_MAX_KEYS`] keys.
    #[must_use]
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, DEFAULT_MAX_KEYS, DefaultClock::default())
    }

    /// A limiter allowing `quota` per key, tracking at most `max_keys` keys.
    #[must_use]
    pub fn with_max_keys(quota: Quota, max_keys: NonZeroUsize) -> Self {
        Self::with_clock(quota, max_keys, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock> KeyedLimiter<K, C> {
    /// A limiter reading time from `clock` (for tests: `governor::clock::FakeRelativeClock`).
    #[must_use]
    pub fn with_clock(quota: Quota, max_keys: NonZeroUsize, clock: C) -> Self {
        let store = BoundedStore::new(max_keys.get(), KeyHasher::default());
        Self {
            governor: governor::RateLimiter::new(quota.to_governor(), store.clone(), clock),
            store,
            quota,
        }
    }

    /// Counts one request of `key`.
    ///
    /// # Errors
    ///
    /// [`Limited`] when the key is over its quota; the request was not counted.
    #[inline]
    pub fn check(&self, key: &K) -> Result<(), Limited> {
        self.governor.check_key(key).map_err(|not_until| {
            Limited::new(not_until.wait_time_from(self.governor.clock().now()))
        })
    }

    /// The quota each key gets.
    #[must_use]
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// How many keys have a state of their own now.
    #[must_use]
    pub fn len(&self) -> usize {
        self.store.live()
    }

    /// Whether no key has a state of its own.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many checks of untracked keys went to the shared overflow state because the table
    /// was full, since the limiter was made.
    #[must_use]
    pub fn overflowed(&self) -> u64 {
        self.store.overflowed()
    }

    /// How many keys [`KeyedLimiter::evict_idle`] removed, since the limiter was made.
    #[must_use]
    pub fn evicted(&self) -> u64 {
        self.store.evicted()
    }

    /// Removes every key whose state equals a fresh key's (its whole burst is back), and
    /// shrinks the table. Returns how many keys were removed.
    pub fn evict_idle(&self) -> u64 {
        let before = self.evicted();
        self.governor.retain_recent();
        self.governor.shrink_to_fit();
        self.evicted() - before
    }
}

impl<K: Hash + Eq + Clone, C: Clock> fmt::Debug for KeyedLimiter<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("quota", &self.quota)
            .field("keys", &self.len())
            .field("overflowed", &self.overflowed())
            .finish()
    }
}

/// One GCRA state for everything: a global limit, on governor's direct limiter.
pub struct GlobalLimiter<C: Clock = DefaultClock> {
    governor: governor::RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<C::Instant>>,
    quota: Quota,
}

impl GlobalLimiter {
    /// A limiter allowing `quota` in all.
    #[must_use]
    pub fn new(quota: Quota) -> Self {
        Self::with_clock(quota, DefaultClock::default())
    }
}

impl<C: Clock> GlobalLimiter<C> {
    /// A limiter reading time from `clock`.
    #[must_use]
    pub fn with_clock(quota: Quota, clock: C) -> Self {
        Self {
            governor: governor::RateLimiter::direct_with_clock(quota.to_governor(), clock),
            quota,
        }
    }

    /// Counts one request.
    ///
    /// # Errors
    ///
    /// [`Limited`] when over the quota; the request was not counted.
    #[inline]
    pub fn check(&self) -> Result<(), Limited> {
        self.governor.check().map_err(|not_until| {
            Limited::new(not_until.wait_time_from(self.governor.clock().now()))
        })
    }

    /// The quota.
    #[must_use]
    pub fn quota(&self) -> Quota {
        self.quota
    }
}

impl<C: Clock> fmt::Debug for GlobalLimiter<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GlobalLimiter")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
