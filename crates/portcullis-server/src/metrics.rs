//! Names of the metrics `portcullis-server` emits, and [`describe`] to register their help text.
//!
//! Label values come from small closed sets; no peer address or path is ever a label.

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::HostProblem;

/// Gauge: connections currently open.
pub const CONNECTIONS_ACTIVE: &str = "portcullis_connections_active";
/// Counter: connections closed, by `reason`: `complete` (the client or the protocol ended
/// it, or the drain closed it gracefully), `header_timeout`, `idle_timeout`, `drain_forced`
/// (still open at the drain deadline, when the drain was forced, or when the serving future
/// was dropped), `error` (an I/O or protocol error), `refused`, `malformed`, `min_body_rate`
/// (a request body arrived below its minimum rate), `min_response_rate` (the client took a
/// response below its minimum rate), `overload` (the overload manager reclaimed it: idle
/// past the shortened idle timeout, or told to stop keeping alive).
pub const CONNECTIONS_CLOSED: &str = "portcullis_connections_closed_total";
/// Histogram: how long connections stayed open, in seconds.
pub const CONNECTION_DURATION: &str = "portcullis_connection_duration_seconds";
/// Counter: handler panics caught: in the service or its future (answered with 500), or
/// while producing a response body (that response is cut short).
pub const HANDLER_PANICS: &str = "portcullis_handler_panics_total";
/// Counter: requests whose service returned an error, answered with 500.
pub const HANDLER_ERRORS: &str = "portcullis_handler_errors_total";
/// Counter: requests answered 400 by the server itself, before the application, by
/// `reason`: one of [`HostProblem::as_str`](crate::HostProblem::as_str) (`host_missing`,
/// `host_repeated`, `host_invalid`, `host_mismatch`).
pub const REQUESTS_REJECTED: &str = "portcullis_requests_rejected_total";
/// Counter: HTTP/2 streams the server reset while their connection stayed open, by `reason`:
/// `min_body_rate` (answered 408, then reset) or `min_response_rate` (its response stalled on
/// the stream's flow-control window). On HTTP/1 the same cases close the connection and are
/// counted in [`CONNECTIONS_CLOSED`].
pub const STREAMS_RESET: &str = "portcullis_streams_reset_total";

/// Counter: requests answered 503 (with `Retry-After`) before the application because the
/// overload manager sheds load (see [`Builder::overload`](crate::Builder::overload)).
pub const REQUESTS_SHED: &str = "portcullis_requests_shed_total";

/// Gauge: this process's generation: 1 for a process started by hand, one more for each
/// zero-downtime upgrade that led to it (see [`Builder::upgrade`](crate::Builder::upgrade)).
pub const UPGRADE_GENERATION: &str = "portcullis_upgrade_generation";
/// Counter: upgrades this process started, by `outcome`: `ready` (the new process took over;
/// this one drains), `exited` (the new process ended before it was ready), `timeout` (it was
/// not ready in time and was killed), `refused` (too many older generations still draining),
/// `failed` (it could not be started).
pub const UPGRADES_TOTAL: &str = "portcullis_upgrades_total";
/// Gauge: older generations still draining, as of this process's last upgrade attempt.
pub const UPGRADE_DRAINING_GENERATIONS: &str = "portcullis_upgrade_draining_generations";
/// The label of [`UPGRADES_TOTAL`].
pub const LABEL_OUTCOME: &str = "outcome";

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
    /// Closed before HTTP: its PROXY protocol header or TLS handshake failed, no handshake
    /// place freed up in time, or the client named by a PROXY header was at its connection
    /// cap. (Each of these is also counted by its own metric, with the reason.)
    Refused = 5,
    /// The client sent what is not HTTP (hyper answered 400, 414 or 431 and closed).
    Malformed = 6,
    /// A request body arrived below its minimum rate (answered 408 if no response had
    /// started).
    MinBodyRate = 7,
    /// The client took a response (or the server's writes) below the minimum rate.
    MinResponseRate = 8,
    /// The overload manager reclaimed it: idle past the idle timeout it shortened, or a
    /// connection it stopped keeping alive.
    Overload = 9,
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 10] = [
        CloseReason::Complete,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::DrainForced,
        CloseReason::Error,
        CloseReason::Refused,
        CloseReason::Malformed,
        CloseReason::MinBodyRate,
        CloseReason::MinResponseRate,
        CloseReason::Overload,
    ];

    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Complete => "complete",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::DrainForced => "drain_forced",
            CloseReason::Error => "error",
            CloseReason::Refused => "refused",
            CloseReason::Malformed => "malformed",
            CloseReason::MinBodyRate => "min_body_rate",
            CloseReason::MinResponseRate => "min_response_rate",
            CloseReason::Overload => "overload",
        }
    }
}

/// Registers unit and help text of every metric above with the installed recorder.
pub fn describe() {
    metrics::describe_gauge!(
        CONNECTIONS_ACTIVE,
        Unit::Count,
        "Connections currently open."
    );
    metrics::describe_counter!(
        CONNECTIONS_CLOSED,
        Unit::Count,
        "Connections closed, by reason: complete, header_timeout, idle_timeout, drain_forced, error, refused, malformed, min_body_rate, min_response_rate, overload."
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
    metrics::describe_counter!(
        REQUESTS_REJECTED,
        Unit::Count,
        "Requests answered 400 by the server before the application (RFC 9112 Host rules), by reason."
    );
    metrics::describe_counter!(
        REQUESTS_SHED,
        Unit::Count,
        "Requests answered 503 before the application because the overload manager sheds load."
    );
    metrics::describe_gauge!(
        UPGRADE_GENERATION,
        Unit::Count,
        "This process's generation: 1 when started by hand, one more at each zero-downtime upgrade."
    );
    metrics::describe_counter!(
        UPGRADES_TOTAL,
        Unit::Count,
        "Upgrades this process started, by outcome: ready, exited, timeout, refused, failed."
    );
    metrics::describe_gauge!(
        UPGRADE_DRAINING_GENERATIONS,
        Unit::Count,
        "Older generations still draining at this process's last upgrade attempt."
    );
    metrics::describe_counter!(
        STREAMS_RESET,
        Unit::Count,
        "HTTP/2 streams reset by the server below a minimum data rate, by reason: min_body_rate, min_response_rate."
    );
}

/// Registers unit and help text of every metric portcullis emits: this crate's, and those of
/// portcullis-listen, portcullis-limit, portcullis-tls, portcullis-shutdown and
/// portcullis-metrics. Call it once from the executable, after installing the recorder
/// ([`Builder::admin`](crate::Builder::admin) does both).
pub fn describe_all() {
    describe();
    portcullis_listen::metrics::describe();
    portcullis_limit::metrics::describe();
    portcullis_tls::metrics::describe();
    portcullis_shutdown::metrics::describe();
    portcullis_metrics::describe();
    portcullis_health::metrics::describe();
}

/// Registers every series of this crate's closed label sets (the connection metrics), so
/// that they are exported (as 0) before their first event.
pub fn register() {
    let _ = ServerMetrics::resolve();
    let _ = metrics::counter!(STREAMS_RESET, "reason" => CloseReason::MinResponseRate.as_str());
}

/// Registers every series of the closed label sets of every portcullis crate (each crate's
/// own `register()`), so that they are exported (as 0) before their first event: `rate()`
/// and alerts on, say, `drain_forced` closes then see a counter that exists from the start
/// instead of one that appears with the first incident. The HTTP request series appear with
/// their first request (their routes are the application's). Call it once from the
/// executable, after installing the recorder ([`Builder::admin`](crate::Builder::admin)
/// does both).
pub fn register_all() {
    register();
    portcullis_listen::metrics::register();
    portcullis_limit::metrics::register();
    portcullis_tls::metrics::register();
    portcullis_shutdown::metrics::register();
}

/// Handles resolved once per server, so the per-connection path does no key lookups.
#[derive(Clone, Debug)]
pub(crate) struct ServerMetrics {
    pub(crate) active: Gauge,
    /// HTTP/2 streams answered 408 (and reset) for a body below its rate.
    pub(crate) streams_reset_body: Counter,
    closed: [Counter; CloseReason::ALL.len()],
    pub(crate) duration: Histogram,
    pub(crate) panics: Counter,
    pub(crate) errors: Counter,
    /// Requests shed under overload.
    pub(crate) shed: Counter,
    rejected: [Counter; HostProblem::ALL.len()],
}

impl ServerMetrics {
    /// Handles that record nothing (the admin listener's connections).
    pub(crate) fn noop() -> Self {
        Self {
            active: Gauge::noop(),
            streams_reset_body: Counter::noop(),
            closed: CloseReason::ALL.map(|_| Counter::noop()),
            duration: Histogram::noop(),
            panics: Counter::noop(),
            errors: Counter::noop(),
            shed: Counter::noop(),
            rejected: HostProblem::ALL.map(|_| Counter::noop()),
        }
    }

    pub(crate) fn resolve() -> Self {
        Self {
            active: metrics::gauge!(CONNECTIONS_ACTIVE),
            streams_reset_body: metrics::counter!(STREAMS_RESET, "reason" => CloseReason::MinBodyRate.as_str()),
            closed: CloseReason::ALL
                .map(|reason| metrics::counter!(CONNECTIONS_CLOSED, "reason" => reason.as_str())),
            duration: metrics::histogram!(CONNECTION_DURATION),
            panics: metrics::counter!(HANDLER_PANICS),
            errors: metrics::counter!(HANDLER_ERRORS),
            shed: metrics::counter!(REQUESTS_SHED),
            rejected: HostProblem::ALL
                .map(|problem| metrics::counter!(REQUESTS_REJECTED, "reason" => problem.as_str())),
        }
    }

    pub(crate) fn rejected(&self, problem: HostProblem) -> &Counter {
        // The discriminants are the positions in `HostProblem::ALL` (tested below).
        &self.rejected[problem as usize]
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
    fn host_problems_are_positions_in_all() {
        for (i, problem) in HostProblem::ALL.iter().enumerate() {
            assert_eq!(*problem as usize, i);
        }
    }

    #[test]
    fn discriminants_are_positions_in_all() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }
}
