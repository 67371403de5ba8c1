//! The metric handles of one layer: resolved once per series, never per request.
//!
//! Resolving a handle through the `metrics` facade hashes the name and labels and takes a
//! lock in the recorder's registry. The active-requests gauges (one per method) are resolved
//! at the layer's first request (not when it is built, so a layer built before the recorder
//! is installed still reports to it); the duration histograms (one per method, status and
//! route) on the first request of each combination, then kept in copy-on-write maps that requests read
//! without a lock. The maps only grow with new series, which the closed label sets bound.
//!
//! Most templates are `&'static str` (`Route::new`, `route_fn`, `unmatched`): those series are
//! found by the string's address in a fixed table of set-once slots ([`Slots`]), so the hot
//! path never hashes or compares the template's text, takes no lock and touches no reference
//! count: one multiplication per lookup and one acquire load per probe. Templates built at
//! run time (axum's `MatchedPath`), and static ones the table has no room for, are found by
//! text in the copy-on-write map, also without a lock.
//!
//! Durations are read off the layer's own `quanta::Clock` in raw ticks, so a mock clock set
//! with `quanta::with_clock` does not reach them.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap, HashSet};
use metrics::{Gauge, Histogram};

use super::labels::{METHODS, Route};
use super::{ACTIVE_REQUESTS, METHOD, OTHER_ROUTE, REQUEST_DURATION, ROUTE, STATUS, UNMATCHED};

type Map = HashMap<Key, Histogram, foldhash::fast::RandomState>;

/// A series of a `&'static str` template: method and status, the template's address and
/// length.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct AddrKey {
    code: u32,
    addr: usize,
    len: usize,
}

impl AddrKey {
    fn new(method: u8, status: u16, route: &'static str) -> Self {
        Self {
            code: u32::from(method) << 16 | u32::from(status),
            addr: route.as_ptr() as usize,
            len: route.len(),
        }
    }

    /// Where its probe sequence starts in a table of [`SLOTS`] slots.
    fn home(self) -> usize {
        // Fibonacci hashing of the address mixed with method and status: the product's top
        // bits depend on every bit of the input, so they are the index.
        let mixed = (self.addr as u64 ^ u64::from(self.code).rotate_left(32))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> (u64::BITS - SLOTS.trailing_zeros())) as usize
    }
}

/// Series of `&'static str` templates by [`AddrKey`]: an open-addressed table whose slots are
/// set once, under the lock that serializes additions, and never cleared, so a reader that
/// meets an empty slot in a key's probe sequence knows the key is not in the table.
struct Slots {
    slots: Box<[OnceLock<(AddrKey, Histogram)>]>,
}

/// Slots of a layer's table: room for more series than most servers' routes, methods and
/// statuses make (the rest go to the map by text); 48 bytes each, allocated at the layer's
/// first request. A power of two: the index is the top bits of a hash.
const SLOTS: usize = 1024;
const _: () = assert!(SLOTS.is_power_of_two());

/// How far a key's probe sequence runs before the table counts as full for it.
const PROBES: usize = 16;

impl Slots {
    fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn get(&self, key: AddrKey) -> Option<&Histogram> {
        let mask = SLOTS - 1;
        let home = key.home();
        for probe in 0..PROBES {
            match self.slots[(home + probe) & mask].get() {
                Some((found, histogram)) if *found == key => return Some(histogram),
                Some(_) => {}
                None => return None,
            }
        }
        None
    }

    /// Adds `key`, if its probe sequence has an empty slot; the caller holds the lock that
    /// serializes additions, so the first empty slot is still empty.
    fn insert(&self, key: AddrKey, histogram: &Histogram) {
        let mask = SLOTS - 1;
        let home = key.home();
        for probe in 0..PROBES {
            let slot = &self.slots[(home + probe) & mask];
            match slot.get() {
                Some((found, _)) if *found == key => return,
                Some(_) => {}
                None => {
                    let _ = slot.set((key, histogram.clone()));
                    return;
                }
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .iter()
            .filter(|slot| slot.get().is_some())
            .count()
    }
}

#[derive(Clone, PartialEq, Eq)]
struct Key {
    method: u8,
    status: u16,
    route: Box<str>,
}

/// A borrowed [`Key`]: hashes exactly as `Key` does (same fields, same order, `&str` and
/// `Box<str>` hash alike), so requests look series up without allocating.
#[derive(Clone, Copy)]
struct KeyRef<'a> {
    method: u8,
    status: u16,
    route: &'a str,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KeyRef {
            method: self.method,
            status: self.status,
            route: &self.route,
        }
        .hash(state);
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.method.hash(state);
        self.status.hash(state);
        self.route.hash(state);
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        self.method == key.method && self.status == key.status && self.route == &*key.route
    }
}

/// Names a request's route template from its method and URI.
pub(crate) type RouteFn = fn(&http::Method, &http::Uri) -> Option<&'static str>;

/// What a layer resolves at its first request.
struct First {
    /// The in-flight gauges, by method.
    active: [Gauge; METHODS.len()],
    /// Requests are timed in the clock's raw ticks (the time-stamp counter where it is
    /// invariant), scaled to a duration once, at the end: a raw reading is one instruction
    /// and no scaling, where `quanta::Instant::now` also consults its thread-local mock.
    clock: quanta::Clock,
    by_addr: Slots,
}

pub(crate) struct Series {
    /// Resolved at the first request, not when the layer is built: a layer built before the
    /// recorder is installed still reports to it.
    first: OnceLock<First>,
    pub(crate) route_fn: Option<RouteFn>,
    durations: ArcSwap<Map>,
    /// Serializes additions to `durations`, and holds the route templates seen so far.
    routes: Mutex<HashSet<Box<str>, foldhash::fast::RandomState>>,
    max_routes: usize,
}

impl std::fmt::Debug for Series {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Series")
            .field("durations", &self.durations.load().len())
            .field("max_routes", &self.max_routes)
            .field("route_fn", &self.route_fn.is_some())
            .finish_non_exhaustive()
    }
}

impl Series {
    pub(crate) fn new(max_routes: usize, route_fn: Option<RouteFn>) -> Self {
        Self {
            first: OnceLock::new(),
            route_fn,
            durations: ArcSwap::from_pointee(Map::default()),
            routes: Mutex::default(),
            max_routes,
        }
    }

    #[inline]
    fn first(&self) -> &First {
        self.first.get_or_init(|| First {
            active: METHODS.map(|method| metrics::gauge!(ACTIVE_REQUESTS, METHOD => method)),
            clock: quanta::Clock::new(),
            by_addr: Slots::new(),
        })
    }

    /// A request of `method` starts: counted in flight, and its start read off the clock.
    #[inline]
    pub(crate) fn start(&self, method: u8) -> u64 {
        let first = self.first();
        first.active[usize::from(method)].increment(1.0);
        first.clock.raw()
    }

    /// A request of `method` that started at `started` ends: out of the in-flight count, and
    /// in the duration histogram of its series if it has a status.
    pub(crate) fn end(&self, method: u8, status: Option<u16>, route: Option<&Route>, started: u64) {
        let first = self.first();
        first.active[usize::from(method)].decrement(1.0);
        if let Some(status) = status {
            let took = first.clock.delta(started, first.clock.raw());
            self.record(first, method, status, route, took);
        }
    }

    /// Records one request's duration in its series.
    fn record(
        &self,
        first: &First,
        method: u8,
        status: u16,
        route: Option<&Route>,
        took: Duration,
    ) {
        match route.map_or(Some(UNMATCHED), Route::as_static) {
            Some(name) => {
                if let Some(histogram) = first.by_addr.get(AddrKey::new(method, status, name)) {
                    histogram.record(took);
                    return;
                }
                // Not in the table: its first request, or a series the table has no room
                // for, which must not take the lock on every request.
                let key = KeyRef {
                    method,
                    status,
                    route: name,
                };
                if let Some(histogram) = self.durations.load().get(&key) {
                    histogram.record(took);
                    return;
                }
                self.add_static(first, method, status, name).record(took);
            }
            None => {
                let key = KeyRef {
                    method,
                    status,
                    route: route.map_or(UNMATCHED, Route::as_str),
                };
                if let Some(histogram) = self.durations.load().get(&key) {
                    histogram.record(took);
                    return;
                }
                self.add(key).record(took);
            }
        }
    }

    /// The first request of a series of a `&'static str` template at this address: found or
    /// created by text, then remembered by address if the table has room. A template over
    /// the cap is remembered too, with the `other` series it is counted in: the cap is
    /// permanent once reached, and the table is bounded by its size, not by the templates.
    #[cold]
    fn add_static(&self, first: &First, method: u8, status: u16, name: &'static str) -> Histogram {
        let histogram = self.add(KeyRef {
            method,
            status,
            route: name,
        });
        let _routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        first
            .by_addr
            .insert(AddrKey::new(method, status, name), &histogram);
        histogram
    }

    /// The slow path: the first request of a series (or of a template over the cap, which
    /// is counted as `other`).
    #[cold]
    fn add(&self, mut key: KeyRef<'_>) -> Histogram {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if key.route != UNMATCHED && !routes.contains(key.route) {
            if routes.len() >= self.max_routes {
                key.route = OTHER_ROUTE;
            } else {
                routes.insert(key.route.into());
            }
        }
        let current = self.durations.load();
        if let Some(histogram) = current.get(&key) {
            return histogram.clone();
        }
        let histogram = metrics::histogram!(
            REQUEST_DURATION,
            METHOD => METHODS[usize::from(key.method)],
            STATUS => status_label(key.status),
            ROUTE => key.route.to_owned(),
        );
        let mut next = Map::clone(&current);
        next.insert(
            Key {
                method: key.method,
                status: key.status,
                route: key.route.into(),
            },
            histogram.clone(),
        );
        self.durations.store(Arc::new(next));
        histogram
    }
}

fn status_label(status: u16) -> String {
    status.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "/";

    #[test]
    fn static_templates_are_found_by_address_after_their_first_request() {
        let series = Series::new(8, None);
        let first = series.first();
        let route = Route::new(ROOT);
        for _ in 0..3 {
            series.record(first, 0, 200, Some(&route), Duration::from_millis(1));
            series.record(first, 0, 200, None, Duration::from_millis(1));
        }
        assert_eq!(first.by_addr.len(), 2, "`/` and unmatched");
        assert_eq!(series.durations.load().len(), 2);
    }

    #[test]
    fn templates_over_the_cap_are_remembered_with_the_other_series() {
        let series = Series::new(1, None);
        let first = series.first();
        for _ in 0..2 {
            series.record(
                first,
                0,
                200,
                Some(&Route::new("/a")),
                Duration::from_millis(1),
            );
            series.record(
                first,
                0,
                200,
                Some(&Route::new("/b")),
                Duration::from_millis(1),
            );
        }
        assert_eq!(first.by_addr.len(), 2, "`/a`, and `/b` as other");
        let by_text = series.durations.load();
        let other = KeyRef {
            method: 0,
            status: 200,
            route: OTHER_ROUTE,
        };
        assert!(by_text.get(&other).is_some());
        assert_eq!(
            by_text.len(),
            2,
            "`/a` and other: `/b` has no series of its own"
        );
    }

    #[test]
    fn series_past_the_address_table_are_found_by_text_without_the_lock() {
        let series = Series::new(usize::MAX, None);
        let first = series.first();
        let statuses = u16::try_from(SLOTS + 100).expect("fits");
        let route = Route::new(ROOT);
        for status in 0..statuses {
            series.record(first, 0, status, Some(&route), Duration::from_millis(1));
        }
        let in_table = first.by_addr.len();
        assert!(in_table <= SLOTS, "the table holds at most its slots");
        assert!(in_table > SLOTS / 2, "most fit: {in_table}");
        let missed: Vec<u16> = (0..statuses)
            .filter(|&status| first.by_addr.get(AddrKey::new(0, status, ROOT)).is_none())
            .collect();
        assert!(missed.len() >= 100, "{} missed the table", missed.len());
        assert_eq!(
            series.durations.load().len(),
            SLOTS + 100,
            "each series once"
        );
        // With the lock held elsewhere, the series the table has no room for are still
        // recorded: found in the map by text, never by the path that locks.
        let held = series.routes.lock().expect("not poisoned");
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for &status in &missed {
                    series.record(first, 0, status, Some(&route), Duration::from_millis(1));
                }
                let _ = done.send(());
            });
            let recorded = finished.recv_timeout(Duration::from_secs(30));
            drop(held);
            assert!(
                recorded.is_ok(),
                "a series outside the table waited for the lock"
            );
        });
    }
}
