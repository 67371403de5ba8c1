//! The certificate resolver: picks a pair by server name from a snapshot that reloads swap.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::pair::Parsed;

/// One served pair: the key rustls signs with, and what it was made from.
pub(crate) struct Loaded {
    pub(crate) certified: Arc<CertifiedKey>,
    pub(crate) parsed: Arc<Parsed>,
}

/// The pairs in service. Slot 0 is the default pair; slot `i` serves the `i`th SNI name.
pub(crate) struct Snapshot {
    pub(crate) slots: Vec<Arc<Loaded>>,
}

/// The configured names: fixed for the acceptor's life, so a reload never changes which slot a
/// name maps to.
#[derive(Debug)]
pub(crate) struct Names {
    exact: HashMap<String, usize>,
    /// Keyed by what follows `*.`.
    wildcard: HashMap<String, usize>,
    refuse_unknown: bool,
}

/// Where a handshake goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    Slot(usize),
    Refused,
}

impl Names {
    /// `names[i]` is served by slot `i + 1`; names are already validated and lowercase.
    pub(crate) fn new(names: &[String], refuse_unknown: bool) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (index, name) in names.iter().enumerate() {
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.insert(parent.to_owned(), index + 1),
                None => exact.insert(name.clone(), index + 1),
            };
        }
        Self {
            exact,
            wildcard,
            refuse_unknown,
        }
    }

    /// Chooses the slot for a ClientHello's server name (`None`: the client sent no SNI).
    ///
    /// An exact name wins over a wildcard; a wildcard matches exactly one label. A client
    /// without SNI gets the default pair. An unknown name gets the default pair unless unknown
    /// names are refused, in which case only names the default certificate itself covers are
    /// served.
    pub(crate) fn lookup(&self, server_name: Option<&str>, snapshot: &Snapshot) -> Lookup {
        let Some(name) = server_name else {
            return Lookup::Slot(0);
        };
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if let Some(&slot) = self.exact.get(name) {
            return Lookup::Slot(slot);
        }
        let wildcard = name
            .split_once('.')
            .filter(|(label, _)| !label.is_empty())
            .and_then(|(_, parent)| self.wildcard.get(parent));
        if let Some(&slot) = wildcard {
            return Lookup::Slot(slot);
        }
        if !self.refuse_unknown {
            return Lookup::Slot(0);
        }
        let covered = snapshot.slots.first().is_some_and(|default| {
            default
                .parsed
                .dns_names
                .iter()
                .any(|pattern| name_matches(pattern, name))
        });
        if covered {
            Lookup::Slot(0)
        } else {
            Lookup::Refused
        }
    }
}

/// Whether a certificate name (possibly `*.parent`) covers `name`; wildcards cover one label.
fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(parent) => name
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => pattern == name,
    }
}

/// rustls' certificate resolver over the swappable snapshot.
pub(crate) struct Resolver {
    pub(crate) names: Names,
    pub(crate) snapshot: ArcSwap<Snapshot>,
}

impl Resolver {
    pub(crate) fn lookup(&self, server_name: Option<&str>) -> Lookup {
        self.names.lookup(server_name, &self.snapshot.load())
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let snapshot = self.snapshot.load();
        match self.names.lookup(client_hello.server_name(), &snapshot) {
            Lookup::Slot(slot) => snapshot
                .slots
                .get(slot)
                .map(|loaded| Arc::clone(&loaded.certified)),
            // rustls answers with a fatal `access_denied` alert.
            Lookup::Refused => None,
        }
    }
}

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolver")
            .field("names", &self.names)
            .field("slots", &self.snapshot.load().slots.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(!name_matches("*.example.com", "a.b.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert!(name_matches("example.com", "example.com"));
        assert!(!name_matches("example.com", "www.example.com"));
    }

    #[test]
    fn exact_names_win_over_wildcards_and_unknown_names_fall_back() {
        let names = Names::new(
            &[
                "api.example.com".to_owned(),
                "*.example.com".to_owned(),
                "other.test".to_owned(),
            ],
            false,
        );
        let snapshot = Snapshot { slots: Vec::new() };
        assert_eq!(
            names.lookup(Some("api.example.com"), &snapshot),
            Lookup::Slot(1)
        );
        assert_eq!(
            names.lookup(Some("API.Example.com."), &snapshot),
            Lookup::Slot(1)
        );
        assert_eq!(
            names.lookup(Some("www.example.com"), &snapshot),
            Lookup::Slot(2)
        );
        assert_eq!(
            names.lookup(Some("a.b.example.com"), &snapshot),
            Lookup::Slot(0)
        );
        assert_eq!(names.lookup(Some("other.test"), &snapshot), Lookup::Slot(3));
        assert_eq!(names.lookup(None, &snapshot), Lookup::Slot(0));

        let refusing = Names::new(&["api.example.com".to_owned()], true);
        assert_eq!(
            refusing.lookup(Some("nope.test"), &snapshot),
            Lookup::Refused
        );
        assert_eq!(refusing.lookup(None, &snapshot), Lookup::Slot(0));
    }
}
