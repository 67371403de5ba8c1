//! Names of the metrics `portcullis-server` emits, and [`describe`] to register their help text.
//!
//! Label values come from small closed sets; no peer address or path is ever a label.

use metrics::{Counter, Gauge, Histogram, Unit};

/// Gauge: connections currently open.
pub const CONNECTIONS_ACTIVE: &str = "portcullis_connections_active";
/// Counter: connections closed, by `reason`: `complete` (the client or the protocol ended
/// it, or the drain closed it gracefully), `header_timeout`, `idle_timeout`, `drain_forced`
/// (still open at the drain deadline, when the drain was forced, or when the serving future
/// was dropped), `error` (an I/O or protocol error).
pub const CONNECTIONS_CLOSED: &str = "portcullis_connections_closed_total";
/// Histogram: how long connections stayed open, in seconds.
pub const CONNECTION_DURATION: &str = "portcullis_connection_duration_seconds";
/// Counter: handler panics caught: in the service or its future (answered with 500), or
/// while producing a response body (that response is cut short).
pub const HANDLER_PANICS: &str = "portcullis_handler_panics_total";
/// Counter: requests whose service returned an error, answered with 500.
pub const HANDLER_ERRORS: &str = "portcullis_handler_errors_total";

/// Gauge: the server's shutdown phase, one series per `phase` (`running`, `delay` (readiness
/// off, still serving; only with a drain delay), `drain`, `done`), 1 for the current phase and
/// 0 for the others. The series carry no server label: one portcullis server per process.
pub const SHUTDOWN_PHASE: &str = "portcullis_shutdown_phase";
/// Gauge: how long the last drain took, in seconds (from the listeners closing until the last
/// connection and tracked task was gone, or the deadline).
pub const DRAIN_DURATION: &str = "portcullis_shutdown_drain_duration_seconds";

/// A server's shutdown phase: the closed set of values of the `phase` label of
/// [`SHUTDOWN_PHASE`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShutdownPhase {
    /// Serving normally.
    Running = 0,
    /// Shutdown began: readiness off, still accepting and serving for the drain delay.
    Delay = 1,
    /// Listeners closed; connections and tracked tasks finishing.
    Drain = 2,
    /// Everything finished or was forced.
    Done = 3,
}

impl ShutdownPhase {
    /// Every phase, in order.
    pub const ALL: [ShutdownPhase; 4] = [
        ShutdownPhase::Running,
        ShutdownPhase::Delay,
        ShutdownPhase::Drain,
        ShutdownPhase::Done,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownPhase::Running => "running",
            ShutdownPhase::Delay => "delay",
            ShutdownPhase::Drain => "drain",
            ShutdownPhase::Done => "done",
        }
    }
}

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
}

impl CloseReason {
    /// Every reason, in label order.
    pub const ALL: [CloseReason; 6] = [
        CloseReason::Complete,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::DrainForced,
        CloseReason::Error,
        CloseReason::Refused,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Complete => "complete",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::DrainForced => "drain_forced",
            CloseReason::Error => "error",
            CloseReason::Refused => "refused",
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
    metrics::describe_gauge!(
        SHUTDOWN_PHASE,
        Unit::Count,
        "Shutdown phase, 1 for the current one: running, delay, drain, done."
    );
    metrics::describe_gauge!(
        DRAIN_DURATION,
        Unit::Seconds,
        "How long the last drain took."
    );
    metrics::describe_counter!(
        HANDLER_ERRORS,
        Unit::Count,
        "Requests whose service returned an error, answered with 500."
    );
}

/// Registers unit and help text of every metric portcullis emits: this crate's, and those of
/// portcullis-listen, portcullis-shutdown and portcullis-metrics. Call it once from the executable, after
/// installing the recorder.
pub fn describe_all() {
    describe();
    portcullis_listen::metrics::describe();
    portcullis_limit::metrics::describe();
    portcullis_tls::metrics::describe();
    portcullis_shutdown::metrics::describe();
    portcullis_metrics::describe();
}

/// Registers every series of the closed label sets of portcullis's connection and shutdown
/// metrics, so that they are exported (as 0) before their first event: `rate()` and alerts
/// on, say, `drain_forced` closes then see a counter that exists from the start instead of
/// one that appears with the first incident. The HTTP request series appear with their first
/// request (their routes are the application's).
pub fn register_all() {
    let _ = ServerMetrics::resolve();
    let _ = ShutdownMetrics::resolve();
    metrics::counter!(portcullis_listen::metrics::CONNECTIONS_ACCEPTED_TOTAL).increment(0);
    metrics::counter!(portcullis_listen::metrics::CONNECTIONS_SHED_TOTAL).increment(0);
    for kind in portcullis_listen::metrics::ACCEPT_ERROR_KINDS {
        metrics::counter!(
            portcullis_listen::metrics::ACCEPT_ERRORS_TOTAL,
            portcullis_listen::metrics::LABEL_KIND => *kind
        )
        .increment(0);
    }
    for reason in portcullis_listen::proxy::PROXY_ERROR_REASONS {
        metrics::counter!(
            portcullis_listen::proxy::PROXY_HEADER_ERRORS_TOTAL,
            portcullis_listen::proxy::LABEL_REASON => *reason
        )
        .increment(0);
    }
    for reason in portcullis_limit::metrics::REJECT_REASONS {
        metrics::counter!(
            portcullis_limit::metrics::CONNECTIONS_REJECTED_TOTAL,
            portcullis_limit::metrics::LABEL_REASON => *reason
        )
        .increment(0);
    }
    for reason in portcullis_tls::metrics::HANDSHAKE_FAILURE_REASONS {
        metrics::counter!(
            portcullis_tls::metrics::HANDSHAKE_FAILURES_TOTAL,
            portcullis_tls::metrics::LABEL_REASON => *reason
        )
        .increment(0);
    }
    for kind in portcullis_tls::metrics::HANDSHAKE_KINDS {
        metrics::counter!(
            portcullis_tls::metrics::HANDSHAKES_TOTAL,
            portcullis_tls::metrics::LABEL_KIND => *kind
        )
        .increment(0);
    }
    for outcome in portcullis_tls::metrics::RELOAD_OUTCOMES {
        metrics::counter!(
            portcullis_tls::metrics::RELOADS_TOTAL,
            portcullis_tls::metrics::LABEL_OUTCOME => *outcome
        )
        .increment(0);
    }
    for signal in portcullis_shutdown::metrics::SIGNALS {
        metrics::counter!(portcullis_shutdown::metrics::SIGNALS_RECEIVED, "signal" => *signal)
            .increment(0);
    }
}

/// Handles resolved once per server, so the per-connection path does no key lookups.
#[derive(Clone, Debug)]
pub(crate) struct ServerMetrics {
    pub(crate) active: Gauge,
    closed: [Counter; CloseReason::ALL.len()],
    pub(crate) duration: Histogram,
    pub(crate) panics: Counter,
    pub(crate) errors: Counter,
}

/// A hook called at every phase change.
pub(crate) type PhaseHook = std::sync::Arc<dyn Fn(ShutdownPhase) + Send + Sync>;

/// The shutdown metrics of one server (shared by all its cores in per-core mode), and the
/// application's phase hook.
#[derive(Clone)]
pub(crate) struct ShutdownMetrics {
    phase: [Gauge; ShutdownPhase::ALL.len()],
    drain_duration: Gauge,
    hook: Option<PhaseHook>,
}

impl std::fmt::Debug for ShutdownMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownMetrics")
            .field("hook", &self.hook.as_ref().map(|_| "..."))
            .finish_non_exhaustive()
    }
}

impl ShutdownMetrics {
    pub(crate) fn resolve() -> Self {
        Self {
            phase: ShutdownPhase::ALL
                .map(|phase| metrics::gauge!(SHUTDOWN_PHASE, "phase" => phase.as_str())),
            drain_duration: metrics::gauge!(DRAIN_DURATION),
            hook: None,
        }
    }

    pub(crate) fn set_hook(&mut self, hook: Option<PhaseHook>) {
        self.hook = hook;
    }

    pub(crate) fn enter(&self, current: ShutdownPhase) {
        for phase in ShutdownPhase::ALL {
            self.phase[phase as usize].set(if phase == current { 1.0 } else { 0.0 });
        }
        tracing::debug!(phase = current.as_str(), "shutdown phase");
        if let Some(hook) = &self.hook {
            // The application's code: a panic in it must not stop the shutdown halfway.
            let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(current)));
            if called.is_err() {
                tracing::error!(phase = current.as_str(), "the shutdown phase hook panicked");
            }
        }
    }

    pub(crate) fn drained_in(&self, duration: std::time::Duration) {
        self.drain_duration.set(duration.as_secs_f64());
    }
}

impl ServerMetrics {
    /// Handles that record nothing (the admin listener's connections).
    pub(crate) fn noop() -> Self {
        Self {
            active: Gauge::noop(),
            closed: CloseReason::ALL.map(|_| Counter::noop()),
            duration: Histogram::noop(),
            panics: Counter::noop(),
            errors: Counter::noop(),
        }
    }

    pub(crate) fn resolve() -> Self {
        Self {
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
    fn phase_discriminants_are_positions_in_all() {
        for (i, phase) in ShutdownPhase::ALL.iter().enumerate() {
            assert_eq!(*phase as usize, i, "{phase:?}");
        }
    }

    #[test]
    fn discriminants_are_positions_in_all() {
        for (i, reason) in CloseReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{reason:?}");
        }
    }
}
