//! Metric names emitted by this crate, and [`describe`] to register their units and help.
//! Labels come from closed sets: [`LABEL_CHECK`] is the name the application gave a check;
//! [`LABEL_MONITOR`] and [`LABEL_ACTION`] are [`Monitor::as_str`](crate::Monitor::as_str)
//! and [`Action::as_str`](crate::Action::as_str).

use metrics::Unit;

/// Gauge: 1 while a check is up, 0 while it is pending or down, by [`LABEL_CHECK`].
pub const CHECK_UP: &str = "portcullis_health_check_up";

/// Gauge: 1 while a critical check is down for longer than its `fail_open_after` and no
/// longer holds readiness back, by [`LABEL_CHECK`].
pub const CHECK_FAILED_OPEN: &str = "portcullis_health_check_failed_open";

/// Counter: a check's state changes, by [`LABEL_CHECK`] and [`LABEL_TO`] (`up`, `down`).
pub const CHECK_TRANSITIONS_TOTAL: &str = "portcullis_health_check_transitions_total";

/// Histogram: how long each run of a check took, in seconds, by [`LABEL_CHECK`] (a run
/// that timed out counts as its timeout).
pub const CHECK_DURATION: &str = "portcullis_health_check_duration_seconds";

/// Histogram: how late the event loop ran the lag probe's timer, in seconds.
pub const EVENT_LOOP_LAG: &str = "portcullis_event_loop_lag_seconds";

/// Gauge: the last lag measurement, in seconds.
pub const EVENT_LOOP_LAG_CURRENT: &str = "portcullis_event_loop_lag_current_seconds";

/// Gauge: each overload monitor's last pressure, 0 to 1, by [`LABEL_MONITOR`]
/// (`descriptors`, `memory`, `event_loop_lag`, `connections`).
pub const OVERLOAD_PRESSURE: &str = "portcullis_overload_pressure";

/// Gauge: each overload action's value, 0 (off) to 1 (in full force), by [`LABEL_ACTION`]
/// (`shrink_timeouts`, `reclaim_idle`, `shed_requests`, `stop_accepting`).
pub const OVERLOAD_ACTION: &str = "portcullis_overload_action";

/// Counter: times an overload action went on, by [`LABEL_ACTION`].
pub const OVERLOAD_ACTIVATIONS_TOTAL: &str = "portcullis_overload_activations_total";

/// Label: the overload monitor.
pub const LABEL_MONITOR: &str = "monitor";

/// Label: the overload action.
pub const LABEL_ACTION: &str = "action";

/// Label: the check's name.
pub const LABEL_CHECK: &str = "check";

/// Label on [`CHECK_TRANSITIONS_TOTAL`]: `up` or `down`.
pub const LABEL_TO: &str = "to";

/// Registers units and help text for every metric of this crate with the current recorder.
pub fn describe() {
    metrics::describe_gauge!(
        CHECK_UP,
        Unit::Count,
        "1 while a dependency health check is up."
    );
    metrics::describe_gauge!(
        CHECK_FAILED_OPEN,
        Unit::Count,
        "1 while a critical health check has been down so long that it no longer holds readiness back."
    );
    metrics::describe_counter!(
        CHECK_TRANSITIONS_TOTAL,
        Unit::Count,
        "Health check state changes, by check and new state (up, down)."
    );
    metrics::describe_histogram!(
        CHECK_DURATION,
        Unit::Seconds,
        "How long each run of a dependency health check took."
    );
    metrics::describe_histogram!(
        EVENT_LOOP_LAG,
        Unit::Seconds,
        "How late the event loop ran a timer: the wait every task on it shares."
    );
    metrics::describe_gauge!(
        EVENT_LOOP_LAG_CURRENT,
        Unit::Seconds,
        "The last event-loop lag measurement."
    );
    metrics::describe_gauge!(
        OVERLOAD_PRESSURE,
        Unit::Count,
        "Each overload monitor's last pressure, 0 to 1, by monitor."
    );
    metrics::describe_gauge!(
        OVERLOAD_ACTION,
        Unit::Count,
        "Each overload action's value, 0 (off) to 1 (in full force), by action."
    );
    metrics::describe_counter!(
        OVERLOAD_ACTIVATIONS_TOTAL,
        Unit::Count,
        "Times an overload action went on, by action."
    );
}

/// Registers every series of the overload metrics' closed label sets, so that they are
/// exported (as 0) before the first sample.
pub fn register_overload() {
    for monitor in crate::Monitor::ALL {
        let _ = metrics::gauge!(OVERLOAD_PRESSURE, LABEL_MONITOR => monitor.as_str());
    }
    for action in crate::Action::ALL {
        let _ = metrics::gauge!(OVERLOAD_ACTION, LABEL_ACTION => action.as_str());
        let _ = metrics::counter!(OVERLOAD_ACTIVATIONS_TOTAL, LABEL_ACTION => action.as_str());
    }
}
