//! Metric names emitted by this crate, [`describe`] to register their units and help, and
//! [`register`] to create every series of the closed label sets at 0.
//!
//! Emitted only through the [`metrics`](https://docs.rs/metrics) facade; this crate never
//! installs a recorder. The counters are resolved at an acceptor's first handshake or reload
//! and the expiry gauge at each update, never when the acceptor is built, so an acceptor built
//! before the recorder is installed still reports to it. Label values come from closed sets: [`LABEL_CERTIFICATE`]
//! is a server name from the configuration (or `default`), never the name a client sent.

use metrics::{Counter, Unit};

use crate::error::HandshakeFailure;

/// Counter: certificate reload attempts, by [`LABEL_OUTCOME`]. Every trigger counts: the file
/// watcher, SIGHUP and [`TlsAcceptor::reload`](crate::TlsAcceptor::reload).
pub const RELOADS_TOTAL: &str = "portcullis_tls_reloads_total";

/// Gauge: seconds until each served certificate expires (negative once it has), by
/// [`LABEL_CERTIFICATE`]. Updated when the acceptor is built, on every reload attempt, and on
/// every poll of the file watcher (every 500 ms while it runs).
pub const CERTIFICATE_EXPIRY_SECONDS: &str = "portcullis_tls_certificate_expiry_seconds";

/// Counter: failed handshakes, by [`LABEL_REASON`].
pub const HANDSHAKE_FAILURES_TOTAL: &str = "portcullis_tls_handshake_failures_total";

/// Counter: completed handshakes, by [`LABEL_KIND`].
pub const HANDSHAKES_TOTAL: &str = "portcullis_tls_handshakes_total";

/// Label on [`RELOADS_TOTAL`]: one of [`RELOAD_OUTCOMES`].
pub const LABEL_OUTCOME: &str = "outcome";

/// Every value of [`LABEL_OUTCOME`]: `success` (every re-read pair is in service) and
/// `failure` (at least one pair failed validation and its previous version stays in service).
pub const RELOAD_OUTCOMES: &[&str] = &["success", "failure"];

/// Label on [`CERTIFICATE_EXPIRY_SECONDS`]: a server name as configured with
/// [`TlsConfig::sni`](crate::TlsConfig::sni) (`*.example.com` included), or
/// [`DEFAULT_CERTIFICATE`].
pub const LABEL_CERTIFICATE: &str = "certificate";

/// The [`LABEL_CERTIFICATE`] value of the default pair.
pub const DEFAULT_CERTIFICATE: &str = "default";

/// Label on [`HANDSHAKE_FAILURES_TOTAL`]: one of [`HANDSHAKE_FAILURE_REASONS`].
pub const LABEL_REASON: &str = "reason";

/// Every value of [`LABEL_REASON`], as given by [`HandshakeFailure::as_str`]:
///
/// | value | meaning |
/// |---|---|
/// | `timeout` | the handshake did not finish before the deadline |
/// | `protocol` | malformed messages, an alert from the client, a client that closed or reset the connection (TCP health checks that connect and close count here) |
/// | `no_shared_cipher_or_version` | no common protocol version, cipher suite, group or signature scheme |
/// | `unknown_server_name` | an unconfigured server name, refused |
/// | `bad_client_certificate` | client authentication failed: no certificate where required, or one that does not verify |
pub const HANDSHAKE_FAILURE_REASONS: &[&str] = &[
    "timeout",
    "protocol",
    "no_shared_cipher_or_version",
    "unknown_server_name",
    "bad_client_certificate",
];

/// Label on [`HANDSHAKES_TOTAL`]: one of [`HANDSHAKE_KINDS`].
pub const LABEL_KIND: &str = "kind";

/// Every value of [`LABEL_KIND`]: `full` (a full handshake, with a certificate and public-key
/// operations) and `resumed` (a resumed session, much cheaper). A low share of `resumed` with
/// returning clients points at lost session state.
pub const HANDSHAKE_KINDS: &[&str] = &["full", "resumed"];

/// Registers every series of this crate's closed label sets, so that they are exported (as 0)
/// before their first event: handshakes by kind, failures by reason, reloads by outcome.
pub fn register() {
    for kind in HANDSHAKE_KINDS {
        metrics::counter!(HANDSHAKES_TOTAL, LABEL_KIND => *kind).increment(0);
    }
    for reason in HANDSHAKE_FAILURE_REASONS {
        metrics::counter!(HANDSHAKE_FAILURES_TOTAL, LABEL_REASON => *reason).increment(0);
    }
    for outcome in RELOAD_OUTCOMES {
        metrics::counter!(RELOADS_TOTAL, LABEL_OUTCOME => *outcome).increment(0);
    }
}

/// Registers units and help text for every metric of this crate with the current recorder.
pub fn describe() {
    metrics::describe_counter!(
        RELOADS_TOTAL,
        Unit::Count,
        "TLS certificate reload attempts, by outcome (success, failure)."
    );
    metrics::describe_gauge!(
        CERTIFICATE_EXPIRY_SECONDS,
        Unit::Seconds,
        "Seconds until each served TLS certificate expires, by configured certificate name."
    );
    metrics::describe_counter!(
        HANDSHAKE_FAILURES_TOTAL,
        Unit::Count,
        "Failed TLS handshakes, by reason (timeout, protocol, no_shared_cipher_or_version, unknown_server_name, bad_client_certificate)."
    );
    metrics::describe_counter!(
        HANDSHAKES_TOTAL,
        Unit::Count,
        "Completed TLS handshakes, by kind (full, resumed)."
    );
}

/// The handles one acceptor counts with, resolved on first use: an acceptor built before the
/// metrics recorder is installed still reports to it.
#[derive(Default)]
pub(crate) struct Metrics {
    handles: std::sync::OnceLock<Handles>,
}

struct Handles {
    reload_success: Counter,
    reload_failure: Counter,
    failures: [Counter; 5],
    full: Counter,
    resumed: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Resolves the handles now, against the recorder in effect.
    pub(crate) fn resolve(&self) {
        let _ = self.handles();
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| Handles {
            reload_success: metrics::counter!(RELOADS_TOTAL, LABEL_OUTCOME => "success"),
            reload_failure: metrics::counter!(RELOADS_TOTAL, LABEL_OUTCOME => "failure"),
            failures: HandshakeFailure::ALL.map(
                |reason| metrics::counter!(HANDSHAKE_FAILURES_TOTAL, LABEL_REASON => reason.as_str()),
            ),
            full: metrics::counter!(HANDSHAKES_TOTAL, LABEL_KIND => "full"),
            resumed: metrics::counter!(HANDSHAKES_TOTAL, LABEL_KIND => "resumed"),
        })
    }

    pub(crate) fn reloaded(&self, success: bool) {
        let handles = self.handles();
        if success {
            handles.reload_success.increment(1);
        } else {
            handles.reload_failure.increment(1);
        }
    }

    pub(crate) fn handshake_failed(&self, reason: HandshakeFailure) {
        if let Some(counter) = self.handles().failures.get(reason.index()) {
            counter.increment(1);
        }
    }

    pub(crate) fn handshake_completed(&self, resumed: bool) {
        let handles = self.handles();
        if resumed {
            handles.resumed.increment(1);
        } else {
            handles.full.increment(1);
        }
    }
}

/// The expiry gauge of one configured pair.
pub(crate) fn expiry_gauge(label: &str) -> metrics::Gauge {
    metrics::gauge!(CERTIFICATE_EXPIRY_SECONDS, LABEL_CERTIFICATE => label.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_match_the_enum() {
        let from_enum: Vec<&str> = HandshakeFailure::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(from_enum, HANDSHAKE_FAILURE_REASONS);
        for (index, reason) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index);
        }
    }
}
