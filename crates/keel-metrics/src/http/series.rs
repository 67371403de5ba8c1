//! The metric handles of one layer: resolved once per series, never per request.
//!
//! Resolving a handle through the `metrics` facade hashes the name and labels and takes a
//! lock in the recorder's registry. The active-requests gauges (one per method) are resolved
//! when the layer is built; the duration histograms (one per method, status and route) on the
//! first request of each combination, then kept in a copy-on-write map that requests read
//! without a lock. The map only grows with new series, which the closed label sets bound.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::{Equivalent, HashMap, HashSet};
use metrics::{Gauge, Histogram};

use super::labels::METHODS;
use super::{ACTIVE_REQUESTS, METHOD, OTHER_ROUTE, REQUEST_DURATION, ROUTE, STATUS, UNMATCHED};

type Map = HashMap<Key, Histogram, foldhash::fast::RandomState>;

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
    active: [Gauge; METHODS.len()],
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
            active: METHODS.map(|method| metrics::gauge!(ACTIVE_REQUESTS, METHOD => method)),
            route_fn,
            durations: ArcSwap::from_pointee(Map::default()),
            routes: Mutex::default(),
            max_routes,
        }
    }

    pub(crate) fn active(&self, method: u8) -> &Gauge {
        &self.active[usize::from(method)]
    }

    /// Records one request's duration in its series.
    pub(crate) fn record(&self, method: u8, status: u16, route: Option<&str>, took: Duration) {
        let key = KeyRef {
            method,
            status,
            route: route.unwrap_or(UNMATCHED),
        };
        if let Some(histogram) = self.durations.load().get(&key) {
            histogram.record(took);
            return;
        }
        self.add(key).record(took);
    }

    /// The slow path: the first request of a series (or of a template over the cap).
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
