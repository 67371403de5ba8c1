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
//! count: one multiplication and one acquire load per probe. Templates built at run time
//! (axum's `MatchedPath`), and static ones the table has no room for, are found by text.

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

    /// Where its probe sequence starts in a table of `mask + 1` slots.
    fn home(self, mask: usize) -> usize {
        // Fibonacci hashing of the address (templates are at least a byte apart, so the low
        // bits differ) mixed with method and status; the top bits are the best mixed.
        let mixed = (self.addr as u64 ^ u64::from(self.code).rotate_left(32))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 40) as usize & mask
    }
}

/// Series of `&'static str` templates by [`AddrKey`]: an open-addressed table whose slots are
/// set once, under the lock that serializes additions, and never cleared, so a reader that
/// meets an empty slot in a key's probe sequence knows the key is not in the table.
struct Slots {
    slots: Box<[OnceLock<(AddrKey, Histogram)>]>,
}

/// Slots of a layer's table: room for far more series than a server's routes, methods and
/// statuses make (the rest go to the map by text); 40 bytes each.
const SLOTS: usize = 1024;

/// How far a key's probe sequence runs before the table counts as full for it.
const PROBES: usize = 16;

impl Slots {
    fn new() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }

    fn get(&self, key: AddrKey) -> Option<&Histogram> {
        let mask = self.slots.len() - 1;
        let home = key.home(mask);
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
        let mask = self.slots.len() - 1;
        let home = key.home(mask);
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
}

pub(crate) struct Series {
    /// Resolved at the first request, not when the layer is built: a layer built before the
    /// recorder is installed still reports to it.
    first: OnceLock<First>,
    pub(crate) route_fn: Option<RouteFn>,
    durations: ArcSwap<Map>,
    by_addr: Slots,
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
            by_addr: Slots::new(),
            routes: Mutex::default(),
            max_routes,
        }
    }

    #[inline]
    fn first(&self) -> &First {
        self.first.get_or_init(|| First {
            active: METHODS.map(|method| metrics::gauge!(ACTIVE_REQUESTS, METHOD => method)),
            clock: quanta::Clock::new(),
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
            self.record(method, status, route, took);
        }
    }

    /// Records one request's duration in its series.
    fn record(&self, method: u8, status: u16, route: Option<&Route>, took: Duration) {
        match route.map_or(Some(UNMATCHED), Route::as_static) {
            Some(name) => {
                if let Some(histogram) = self.by_addr.get(AddrKey::new(method, status, name)) {
                    histogram.record(took);
                    return;
                }
                self.add_static(method, status, name).record(took);
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
                self.add(key).0.record(took);
            }
        }
    }

    /// The first request of a series of a `&'static str` template at this address (or one
    /// the address table has no room for): found or created by text, then remembered by
    /// address (unless the template is over the cap, which keeps the table as bounded as the
    /// series).
    #[cold]
    fn add_static(&self, method: u8, status: u16, name: &'static str) -> Histogram {
        let (histogram, capped) = self.add(KeyRef {
            method,
            status,
            route: name,
        });
        if !capped {
            let _routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            self.by_addr
                .insert(AddrKey::new(method, status, name), &histogram);
        }
        histogram
    }

    /// The slow path: the first request of a series (or of a template over the cap).
    /// Returns the histogram and whether the template was over the cap.
    #[cold]
    fn add(&self, mut key: KeyRef<'_>) -> (Histogram, bool) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let mut capped = false;
        if key.route != UNMATCHED && !routes.contains(key.route) {
            if routes.len() >= self.max_routes {
                key.route = OTHER_ROUTE;
                capped = true;
            } else {
                routes.insert(key.route.into());
            }
        }
        let current = self.durations.load();
        if let Some(histogram) = current.get(&key) {
            return (histogram.clone(), capped);
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
        (histogram, capped)
    }
}

fn status_label(status: u16) -> String {
    status.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_templates_are_found_by_address_after_their_first_request() {
        let series = Series::new(8, None);
        let route = Route::new("/");
        for _ in 0..3 {
            series.record(0, 200, Some(&route), Duration::from_millis(1));
            series.record(0, 200, None, Duration::from_millis(1));
        }
        assert_eq!(series.by_addr.len(), 2, "`/` and unmatched");
        assert_eq!(series.durations.load().len(), 2);
    }

    #[test]
    fn series_past_the_address_table_are_found_by_text() {
        let series = Series::new(usize::MAX, None);
        let statuses = u16::try_from(SLOTS + 100).expect("fits");
        for _ in 0..2 {
            for status in 0..statuses {
                series.record(0, status, Some(&Route::new("/")), Duration::from_millis(1));
            }
        }
        let in_table = series.by_addr.len();
        assert!(in_table < SLOTS + 100, "the table holds at most its slots");
        assert!(in_table > SLOTS / 2, "most fit: {in_table}");
        assert_eq!(
            series.durations.load().len(),
            SLOTS + 100,
            "every series exists once"
        );
        let by_text = series.durations.load();
        for status in 0..statuses {
            if series.by_addr.get(AddrKey::new(0, status, "/")).is_some() {
                let key = KeyRef {
                    method: 0,
                    status,
                    route: "/",
                };
                assert!(by_text.get(&key).is_some(), "status {status} is in both");
            }
        }
    }
}
