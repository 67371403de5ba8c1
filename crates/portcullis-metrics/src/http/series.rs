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
//! found by the string's address, hashed as integers, so the hot path never hashes or compares
//! the template's text. Templates built at run time (axum's `MatchedPath`) are found by text.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap, HashSet};
use metrics::{Gauge, Histogram};

use super::labels::{METHODS, Route};
use super::{ACTIVE_REQUESTS, METHOD, OTHER_ROUTE, REQUEST_DURATION, ROUTE, STATUS, UNMATCHED};

type Map = HashMap<Key, Histogram, foldhash::fast::RandomState>;

/// Series of `&'static str` templates by (method and status, address, length).
type ByAddr = HashMap<(u32, usize, usize), Histogram, rustc_hash::FxBuildHasher>;

fn addr_key(method: u8, status: u16, route: &'static str) -> (u32, usize, usize) {
    (
        u32::from(method) << 16 | u32::from(status),
        route.as_ptr() as usize,
        route.len(),
    )
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

pub(crate) struct Series {
    /// Resolved at the first request, not when the layer is built: a layer built before the
    /// recorder is installed still reports to it.
    active: std::sync::OnceLock<[Gauge; METHODS.len()]>,
    pub(crate) route_fn: Option<RouteFn>,
    durations: ArcSwap<Map>,
    by_addr: ArcSwap<ByAddr>,
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
            active: std::sync::OnceLock::new(),
            route_fn,
            durations: ArcSwap::from_pointee(Map::default()),
            by_addr: ArcSwap::from_pointee(ByAddr::default()),
            routes: Mutex::default(),
            max_routes,
        }
    }

    pub(crate) fn active(&self, method: u8) -> &Gauge {
        let active = self.active.get_or_init(|| {
            METHODS.map(|method| metrics::gauge!(ACTIVE_REQUESTS, METHOD => method))
        });
        &active[usize::from(method)]
    }

    /// Records one request's duration in its series.
    pub(crate) fn record(&self, method: u8, status: u16, route: Option<&Route>, took: Duration) {
        match route.map_or(Some(UNMATCHED), Route::as_static) {
            Some(name) => {
                let key = addr_key(method, status, name);
                if let Some(histogram) = self.by_addr.load().get(&key) {
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

    /// The first request of a series of a `&'static str` template at this address: found or
    /// created by text, then remembered by address (unless the template is over the cap,
    /// which keeps the address map as bounded as the series).
    #[cold]
    fn add_static(&self, method: u8, status: u16, name: &'static str) -> Histogram {
        let (histogram, capped) = self.add(KeyRef {
            method,
            status,
            route: name,
        });
        if !capped {
            let _routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            let mut next = ByAddr::clone(&self.by_addr.load());
            next.insert(addr_key(method, status, name), histogram.clone());
            self.by_addr.store(Arc::new(next));
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
        assert_eq!(series.by_addr.load().len(), 2, "`/` and unmatched");
        assert_eq!(series.durations.load().len(), 2);
    }
}
