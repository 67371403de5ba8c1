//! The keyed state store: governor's GCRA state per key, with a hard cap on live keys.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use governor::nanos::Nanos;
use governor::state::keyed::ShrinkableKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed, StateStore};

/// Per-key GCRA state in a [`DashMap`], with at most `max_keys` live keys.
///
/// A key that is not yet tracked while the store is full does not get an entry: it is measured
/// against one shared overflow state instead (see [`KeyedLimiter`](crate::KeyedLimiter) for why
/// that is the policy). Slots are reserved with a compare-and-swap on `live` before an entry is
/// inserted, so the cap is never exceeded, even by concurrent first requests of new keys.
///
/// Cloning gives another handle to the same table: the limiter owns one handle, and its owner
/// keeps another to read the counts.
pub(crate) struct BoundedStore<K: Hash + Eq, H> {
    inner: Arc<Inner<K, H>>,
}

impl<K: Hash + Eq, H> std::fmt::Debug for BoundedStore<K, H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedStore")
            .field("max_keys", &self.inner.max_keys)
            .field("live", &self.inner.live)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, H> Clone for BoundedStore<K, H> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

struct Inner<K: Hash + Eq, H> {
    map: DashMap<K, InMemoryState, H>,
    max_keys: usize,
    live: AtomicUsize,
    overflow: InMemoryState,
    overflowed: AtomicU64,
    evicted: AtomicU64,
}

impl<K: Hash + Eq + Clone, H: BuildHasher + Clone> BoundedStore<K, H> {
    pub(crate) fn new(max_keys: usize, hasher: H) -> Self {
        Self {
            inner: Arc::new(Inner {
                map: DashMap::with_hasher(hasher),
                max_keys,
                live: AtomicUsize::new(0),
                overflow: InMemoryState::default(),
                overflowed: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
            }),
        }
    }

    /// Keys with an entry of their own.
    pub(crate) fn live(&self) -> usize {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Measurements that went to the overflow state because the store was full.
    pub(crate) fn overflowed(&self) -> u64 {
        self.inner.overflowed.load(Ordering::Relaxed)
    }

    /// Keys removed by [`ShrinkableKeyedStateStore::retain_recent`] so far.
    pub(crate) fn evicted(&self) -> u64 {
        self.inner.evicted.load(Ordering::Relaxed)
    }

    /// Takes one slot if the store is not full.
    fn reserve(&self) -> bool {
        self.inner
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |live| {
                (live < self.inner.max_keys).then_some(live + 1)
            })
            .is_ok()
    }
}

impl<K: Hash + Eq + Clone, H: BuildHasher + Clone> StateStore for BoundedStore<K, H> {
    type Key = K;

    fn measure_and_replace<T, F, E>(&self, key: &K, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(state) = self.inner.map.get(key) {
            return state.measure_and_replace(&NotKeyed::NonKey, f);
        }
        if !self.reserve() {
            self.inner.overflowed.fetch_add(1, Ordering::Relaxed);
            return self
                .inner
                .overflow
                .measure_and_replace(&NotKeyed::NonKey, f);
        }
        match self.inner.map.entry(key.clone()) {
            Entry::Occupied(entry) => {
                // Another request of the same key inserted it first: give the slot back.
                self.inner.live.fetch_sub(1, Ordering::AcqRel);
                entry.get().measure_and_replace(&NotKeyed::NonKey, f)
            }
            Entry::Vacant(entry) => entry
                .insert(InMemoryState::default())
                .measure_and_replace(&NotKeyed::NonKey, f),
        }
    }
}

/// The theoretical arrival time stored in `state`, read without changing it.
fn tat(state: &InMemoryState) -> Option<Nanos> {
    state
        .measure_and_replace(&NotKeyed::NonKey, Err::<((), Nanos), _>)
        .err()
        .flatten()
}

impl<K: Hash + Eq + Clone, H: BuildHasher + Clone> ShrinkableKeyedStateStore<K>
    for BoundedStore<K, H>
{
    fn retain_recent(&self, drop_below: Nanos) {
        self.inner.map.retain(|_, state| {
            // `drop_below` is one emission interval before now: an entry whose theoretical
            // arrival time is that old has its whole burst back, like a key never seen, so
            // dropping it changes no decision.
            let keep = tat(state).is_some_and(|tat| tat > drop_below);
            if !keep {
                self.inner.live.fetch_sub(1, Ordering::AcqRel);
                self.inner.evicted.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
    }

    fn shrink_to_fit(&self) {
        self.inner.map.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.live()
    }

    fn is_empty(&self) -> bool {
        self.live() == 0
    }
}
