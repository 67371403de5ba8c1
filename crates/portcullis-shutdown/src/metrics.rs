//! Names of the metrics `portcullis-shutdown` emits, and [`describe`] to register their help text.

use metrics::Unit;

/// Counter: shutdown signals received, by `signal`: `term`, `int`, `quit`.
pub const SIGNALS_RECEIVED: &str = "portcullis_shutdown_signals_total";

/// Every value of the `signal` label of [`SIGNALS_RECEIVED`].
pub const SIGNALS: &[&str] = &["term", "int", "quit"];

/// Registers unit and help text of every metric above with the installed recorder.
pub fn describe() {
    metrics::describe_counter!(
        SIGNALS_RECEIVED,
        Unit::Count,
        "Shutdown signals received, by signal: term, int, quit."
    );
}
