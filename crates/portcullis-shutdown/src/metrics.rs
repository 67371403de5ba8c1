//! Names of the metrics `portcullis-shutdown` emits, [`describe`] to register their help text,
//! and [`register`] to export every series of their closed label sets from the start.

use metrics::Unit;

use crate::ShutdownPhase;

/// Counter: signals received, by `signal`: `term`, `int`, `quit` (shutdown signals) and `hup`
/// (a reload).
pub const SIGNALS_RECEIVED: &str = "portcullis_shutdown_signals_total";

/// Every value of the `signal` label of [`SIGNALS_RECEIVED`].
pub const SIGNALS: &[&str] = &["term", "int", "quit", "hup"];

/// Gauge: the server's lifecycle phase, one series per `phase` (`running`, `delay` (readiness
/// off, still serving), `drain`, `forced`, `done`; see [`ShutdownPhase`]), 1 for the current
/// phase and 0 for the others. The series carry no server label: one portcullis server per
/// process.
pub const SHUTDOWN_PHASE: &str = "portcullis_shutdown_phase";
/// Gauge: how long the last drain took, in seconds (from the listeners closing until the last
/// connection and tracked task was gone, or the deadline).
pub const DRAIN_DURATION: &str = "portcullis_shutdown_drain_duration_seconds";

/// Registers unit and help text of every metric above with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        SIGNALS_RECEIVED,
        Unit::Count,
        "Signals received, by signal: term, int, quit (shutdown), hup (reload)."
    );
    metrics::describe_gauge!(
        SHUTDOWN_PHASE,
        Unit::Count,
        "Lifecycle phase, 1 for the current one: running, delay, drain, forced, done."
    );
    metrics::describe_gauge!(
        DRAIN_DURATION,
        Unit::Seconds,
        "How long the last drain took."
    );
}

/// Registers every series of this crate's closed label sets, so that they are exported
/// (as 0) before their first event: the signal counters and the phase gauges.
pub fn register() {
    for signal in SIGNALS {
        metrics::counter!(SIGNALS_RECEIVED, "signal" => *signal).increment(0);
    }
    for phase in ShutdownPhase::ALL {
        metrics::gauge!(SHUTDOWN_PHASE, "phase" => phase.as_str()).increment(0.0);
    }
    metrics::gauge!(DRAIN_DURATION).increment(0.0);
}
