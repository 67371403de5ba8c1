//! Names of the metrics `keel-server` emits, and [`describe`] to register their help text.
//!
//! Label values come from small closed sets; no peer address or path is ever a label.

use metrics::{Counter, Gauge, Histogram, Unit};

/// Counter: connections accepted and handed to a connection task.
pub const CONNECTIONS_ACCEPTED: &str = "keel_connections_accepted_total";
/// Gauge: connections currently open.
pub const CONNECTIONS_ACTIVE: &str = "keel_connections_active";
/// Counter: connections closed, by `reason`: `complete` (the client or the protocol ended
/// it, or the drain closed it gracefully), `header_timeout`, `idle_timeout`, `drain_forced`
/// (still open at the drain deadline, when the drain was forced, or when the serving future
/// was dropped), `error` (an I/O or protocol error).
pub const CONNECTIONS_CLOSED: &str = "keel_connections_closed_total";
/// Histogram: how long connections stayed open, in seconds.
pub const CONNECTION_DURATION: &str = "keel_connection_duration_seconds";
/// Counter: handler panics caught: in the service or its future (answered with 500), or
/// while producing a response body (that response is cut short).
pub const HANDLER_PANICS: &str = "keel_handler_panics_total";
/// Counter: requests whose service returned an error, answered with 500.
pub const HANDLER_ERRORS: &str = "keel_handler_errors_total";

/// Why a connection closed: the closed set of values of the `reason` label of
/// [`CONNECTIONS_CLOSED`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed it, or the protocol finished it (including a graceful drain).
    Complete = 0,
    /// A request head (or the start of the connection) took longer than the header timeout.
    HeaderTimeout = 1,
    /// No request was in progress for longer than the idle timeout.
    IdleTimeout = 2,
    /// Still open when the drain deadline passed, or when the drain was forced; closed by force.
    DrainForced = 3,
    /// An I/O or protocol error ended it.
    Error = 4,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 5] = [
        CloseReason::Complete,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::DrainForced,
        CloseReason::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Complete => "complete",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::DrainForced => "drain_forced",
            CloseReason::Error => "error",
        }
    }
}

/// Registers unit and help text of every metric above with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        CONNECTIONS_ACCEPTED,
        Unit::Count,
        "Connections accepted and handed to a connection task."
    );
    metrics::describe_gauge!(
        CONNECTIONS_ACTIVE,
        Unit::Count,
        "Connections currently open."
    );
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Connections closed, by reason: complete, header_timeout, idle_timeout, drain_forced, error."
    );
    metrics::describe_histogram!(
        CONNECTION_DURATION,
        Unit::Seconds,
        "How long connections stayed open."
    );
    metrics::describe_counter!(
        HANDLER_PANICS,
        Unit::Count,
        "Handler panics caught (answered with 500, or the response body cut short)."
    );
    metrics::describe_counter!(
        HANDLER_ERRORS,
        Unit::Count,
        "Requests whose service returned an error, answered with 500."
    );
}

/// Handles resolved once per server, so the per-connection path does no key lookups.
#[derive(Clone, Debug)]
pub(crate) struct ServerMetrics {
    pub(crate) accepted: Counter,
    pub(crate) active: Gauge,
    closed: [Counter; CloseReason::ALL.len()],
    pub(crate) duration: Histogram,
    pub(crate) panics: Counter,
    pub(crate) errors: Counter,
}

impl ServerMetrics {
    pub(crate) fn resolve() -> Self {
        Self {
            accepted: metrics::counter!(CONNECTIONS_ACCEPTED),
            active: metrics::gauge!(CONNECTIONS_ACTIVE),
            closed: CloseReason::ALL
                .map(|reason| metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.as_str())),
            duration: metrics::histogram!(CONNECTION_DURATION),
            panics: metrics::counter!(HANDLER_PANICS),
            errors: metrics::counter!(HANDLER_ERRORS),
        }
    }

    pub(crate) fn closed(&self, reason: CloseReason) -> &Counter {
        // The discriminants are the positions in `CloseReason::ALL` (tested below).
        &self.closed[reason as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discriminants_are_positions_in_all() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }
}
