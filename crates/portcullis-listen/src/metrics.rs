//! Metric names emitted by this crate, [`describe`] to register their units and help, and
//! [`register`] to create every series at 0.
//!
//! The crate only emits through the [`metrics`](https://docs.rs/metrics) facade; it never
//! installs a recorder. An executable installs one (for example a Prometheus exporter) and may
//! call [`describe`] once at start-up so the exporter shows help text and units, and
//! [`register`] so every counter is exported before its first event.
//!
//! Label values come from small closed sets: the `kind` label of
//! [`ACCEPT_ERRORS_TOTAL`] takes only the values in [`ACCEPT_ERROR_KINDS`], the `reason` label
//! of [`PROXY_HEADER_ERRORS_TOTAL`] only those in [`PROXY_ERROR_REASONS`]. No address, path or
//! descriptor number is ever used as a label value.
//!
//! Handles are resolved once per [`Listener`](crate::Listener) when it is created, so the
//! recorder that is current at that moment is the one that receives its metrics.

use metrics::Unit;

/// Counter: connections accepted and handed to the caller.
pub const CONNECTIONS_ACCEPTED_TOTAL: &str = "portcullis_listen_connections_accepted_total";

/// Counter: errors seen by the accept loop, labelled by [`LABEL_KIND`].
///
/// Includes errors from `accept(2)` itself and failures to apply per-connection socket options
/// (`kind="socket_options"`), after which that one connection is dropped.
pub const ACCEPT_ERRORS_TOTAL: &str = "portcullis_listen_accept_errors_total";

/// Counter: connections accepted and closed at once, without being handed to the caller,
/// because the process ran out of file descriptors (see the crate docs on the reserve
/// descriptor).
pub const CONNECTIONS_SHED_TOTAL: &str = "portcullis_listen_connections_shed_total";

/// Label on [`ACCEPT_ERRORS_TOTAL`] naming the error kind.
pub const LABEL_KIND: &str = "kind";

/// Every value the [`LABEL_KIND`] label can take.
///
/// | value | errno | handling |
/// |---|---|---|
/// | `emfile` | `EMFILE` | back off; shed queued connections with the reserve descriptor |
/// | `enfile` | `ENFILE` | back off; shed queued connections with the reserve descriptor |
/// | `enobufs` | `ENOBUFS` | back off |
/// | `enomem` | `ENOMEM` | back off |
/// | `connection_aborted` | `ECONNABORTED` | retry at once |
/// | `connection_reset` | `ECONNRESET` | retry at once |
/// | `protocol` | `EPROTO`, `ENOPROTOOPT`, `EOPNOTSUPP` | retry at once |
/// | `permission` | `EPERM` (firewall rules), `EACCES` | retry at once |
/// | `interrupted` | `EINTR` | retry at once |
/// | `would_block` | `EAGAIN` | retry at once |
/// | `timed_out` | `ETIMEDOUT` | retry at once |
/// | `unreachable` | `EHOSTUNREACH`, `ENETUNREACH`, `ENETDOWN`, `EHOSTDOWN`, `ENONET` | retry at once |
/// | `socket_options` | setting `TCP_NODELAY`, keep-alive or `TCP_USER_TIMEOUT` on the accepted socket failed (only where they are set per connection; Linux inherits them) | drop that connection |
/// | `other` | anything else | back off |
pub const ACCEPT_ERROR_KINDS: &[&str] = &[
    "emfile",
    "enfile",
    "enobufs",
    "enomem",
    "connection_aborted",
    "connection_reset",
    "protocol",
    "permission",
    "interrupted",
    "would_block",
    "timed_out",
    "unreachable",
    "socket_options",
    "other",
];

/// Counter: connections from trusted peers dropped because no valid PROXY header could be
/// read, labelled by [`LABEL_REASON`]. Counted by
/// [`ProxyProtocol::read_header`](crate::proxy::ProxyProtocol::read_header).
pub const PROXY_HEADER_ERRORS_TOTAL: &str = "portcullis_listen_proxy_header_errors_total";

/// Label on [`PROXY_HEADER_ERRORS_TOTAL`] naming why the header was rejected.
pub const LABEL_REASON: &str = "reason";

/// Every value the [`LABEL_REASON`] label can take, which is also every value of
/// [`ProxyError::reason`](crate::proxy::ProxyError::reason) and
/// [`ParseError::reason`](crate::proxy::ParseError::reason).
///
/// | value | meaning |
/// |---|---|
/// | `timeout` | no complete header within [`ProxyProtocol::timeout`](crate::proxy::ProxyProtocol::timeout) |
/// | `io` | reading from the connection failed |
/// | `eof` | the peer closed the connection before a complete header |
/// | `not_proxy` | the bytes start with neither the v1 nor the v2 signature (for example plain HTTP or TLS) |
/// | `bad_v1` | a malformed v1 line |
/// | `bad_v2` | a malformed v2 header (inconsistent lengths) |
/// | `too_long` | a v1 line without CRLF within [`V1_MAX_LEN`](crate::proxy::V1_MAX_LEN) bytes, or a v2 header longer than the cap |
/// | `unsupported` | a v2 version, command or address family/transport the specification does not define |
pub const PROXY_ERROR_REASONS: &[&str] = &[
    "timeout",
    "io",
    "eof",
    "not_proxy",
    "bad_v1",
    "bad_v2",
    "too_long",
    "unsupported",
];

/// Registers units and help text for every metric of this crate with the current recorder.
///
/// Call it once from the executable after installing a recorder; calling it more than once is
/// harmless.
pub fn describe() {
    metrics::describe_counter!(
        CONNECTIONS_ACCEPTED_TOTAL,
        Unit::Count,
        "Connections accepted by portcullis listeners and handed to the server."
    );
    metrics::describe_counter!(
        ACCEPT_ERRORS_TOTAL,
        Unit::Count,
        "Errors in portcullis listener accept loops, by kind (emfile, enfile, connection_aborted, ...)."
    );
    metrics::describe_counter!(
        CONNECTIONS_SHED_TOTAL,
        Unit::Count,
        "Connections accepted and closed at once because file descriptors ran out."
    );
    describe_proxy();
}

/// Registers every series of this crate with the current recorder, at 0, so they exist before
/// their first event: [`CONNECTIONS_ACCEPTED_TOTAL`], [`CONNECTIONS_SHED_TOTAL`],
/// [`ACCEPT_ERRORS_TOTAL`] for each of the [`ACCEPT_ERROR_KINDS`], and
/// [`PROXY_HEADER_ERRORS_TOTAL`] for each of the [`PROXY_ERROR_REASONS`].
///
/// A counter that first appears with the first incident leaves `rate()` and alerts with
/// nothing to compare against; registered up front, it is exported as 0 from the start. The
/// label sets are closed, so this is a fixed, small number of series. Call it once from the
/// executable after installing a recorder; calling it more than once is harmless (nothing is
/// incremented).
pub fn register() {
    metrics::counter!(CONNECTIONS_ACCEPTED_TOTAL).increment(0);
    metrics::counter!(CONNECTIONS_SHED_TOTAL).increment(0);
    for kind in ACCEPT_ERROR_KINDS {
        metrics::counter!(ACCEPT_ERRORS_TOTAL, LABEL_KIND => *kind).increment(0);
    }
    for reason in PROXY_ERROR_REASONS {
        metrics::counter!(PROXY_HEADER_ERRORS_TOTAL, LABEL_REASON => *reason).increment(0);
    }
}

/// The PROXY protocol part of [`describe`].
pub(crate) fn describe_proxy() {
    metrics::describe_counter!(
        PROXY_HEADER_ERRORS_TOTAL,
        Unit::Count,
        "Connections from trusted proxies dropped because their PROXY protocol header was \
         missing, malformed, too slow or cut short, by reason."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use std::collections::BTreeSet;

    #[test]
    fn describe_registers_units_and_help() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            metrics::counter!(CONNECTIONS_ACCEPTED_TOTAL).increment(1);
            metrics::counter!(CONNECTIONS_SHED_TOTAL).increment(1);
            metrics::counter!(ACCEPT_ERRORS_TOTAL, LABEL_KIND => "emfile").increment(1);
            metrics::counter!(PROXY_HEADER_ERRORS_TOTAL, LABEL_REASON => "eof").increment(1);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        assert_eq!(snapshot.len(), 4);
        for (key, unit, help, _) in snapshot {
            assert_eq!(unit, Some(Unit::Count), "{key:?}");
            assert!(help.is_some_and(|h| !h.is_empty()), "{key:?}");
        }
    }

    #[test]
    fn register_creates_every_series_at_zero() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            register();
            // Twice is harmless: still one series each, still 0.
            register();
        });
        let mut got = BTreeSet::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            assert_eq!(value, DebugValue::Counter(0), "{key:?}");
            let key = key.key();
            let labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            assert!(got.insert((key.name().to_owned(), labels)), "{key:?} twice");
        }

        let series = |name: &str, label: Option<(&str, &str)>| {
            let labels = label
                .map(|(k, v)| vec![(k.to_owned(), v.to_owned())])
                .unwrap_or_default();
            (name.to_owned(), labels)
        };
        let mut expected = BTreeSet::from([
            series(CONNECTIONS_ACCEPTED_TOTAL, None),
            series(CONNECTIONS_SHED_TOTAL, None),
        ]);
        for kind in ACCEPT_ERROR_KINDS {
            expected.insert(series(ACCEPT_ERRORS_TOTAL, Some((LABEL_KIND, kind))));
        }
        for reason in PROXY_ERROR_REASONS {
            expected.insert(series(
                PROXY_HEADER_ERRORS_TOTAL,
                Some((LABEL_REASON, reason)),
            ));
        }
        assert_eq!(expected.len(), 2 + 14 + 8);
        assert_eq!(got, expected);
    }
}
