//! Metric names emitted by this crate, and [`describe`] to register their units and help.
//!
//! Emitted only through the [`metrics`](https://docs.rs/metrics) facade; this crate never
//! installs a recorder. Label values come from closed sets: [`LABEL_LIMITER`] is the name the
//! application gave the limiter in code ([`RateLimitBuilder::name`](crate::RateLimitBuilder::name)), never a
//! key, an address or a path.

use metrics::Unit;

/// Counter: requests seen by a rate limit layer, by [`LABEL_LIMITER`] and [`LABEL_RESULT`].
pub const REQUESTS_TOTAL: &str = "portcullis_limit_requests_total";

/// Gauge: keys with a state of their own in a keyed limiter, by [`LABEL_LIMITER`]. Updated on
/// every housekeeping pass.
pub const KEYS: &str = "portcullis_limit_keys";

/// Counter: idle keys removed by housekeeping, by [`LABEL_LIMITER`].
pub const KEYS_EVICTED_TOTAL: &str = "portcullis_limit_keys_evicted_total";

/// Counter: checks of new keys that shared the overflow state because the key table was full,
/// by [`LABEL_LIMITER`]. Updated on every housekeeping pass. Anything above zero means the
/// key cap is too small for the traffic, or a flood of distinct clients is under way.
pub const KEY_OVERFLOW_TOTAL: &str = "portcullis_limit_key_overflow_total";

/// Counter: connections closed at once because a cap was reached, by [`LABEL_REASON`].
pub const CONNECTIONS_REJECTED_TOTAL: &str = "portcullis_limit_connections_rejected_total";

/// Counter: requests answered 503 by the load shedder because the in-flight limit was reached.
pub const REQUESTS_SHED_TOTAL: &str = "portcullis_limit_requests_shed_total";

/// Label naming the limiter.
pub const LABEL_LIMITER: &str = "limiter";

/// Label on [`REQUESTS_TOTAL`]: one of [`RESULTS`].
pub const LABEL_RESULT: &str = "result";

/// Every value of [`LABEL_RESULT`]: `allowed`, `limited` (answered 429) and `dry_run_limited`
/// (would have been limited; passed through because the limiter is in dry-run mode).
pub const RESULTS: &[&str] = &["allowed", "limited", "dry_run_limited"];

/// Label on [`CONNECTIONS_REJECTED_TOTAL`]: one of [`REJECT_REASONS`].
pub const LABEL_REASON: &str = "reason";

/// Every value of [`LABEL_REASON`]: `max_conns` (the global cap), `max_conns_per_ip` (the
/// per-client cap) and `max_handshakes` (the concurrent TLS handshake cap).
pub const REJECT_REASONS: &[&str] = &["max_conns", "max_conns_per_ip", "max_handshakes"];

/// Registers units and help text for every metric of this crate with the current recorder.
pub fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests seen by portcullis rate limits, by limiter and result (allowed, limited, dry_run_limited)."
    );
    metrics::describe_gauge!(
        KEYS,
        Unit::Count,
        "Keys with their own state in a portcullis keyed rate limiter."
    );
    metrics::describe_counter!(
        KEYS_EVICTED_TOTAL,
        Unit::Count,
        "Idle keys removed from portcullis keyed rate limiters."
    );
    metrics::describe_counter!(
        KEY_OVERFLOW_TOTAL,
        Unit::Count,
        "Checks of new keys that shared the overflow state because the key table was full."
    );
    metrics::describe_counter!(
        CONNECTIONS_REJECTED_TOTAL,
        Unit::Count,
        "Connections closed at once because a portcullis connection cap was reached, by reason."
    );
    metrics::describe_counter!(
        REQUESTS_SHED_TOTAL,
        Unit::Count,
        "Requests answered 503 because portcullis's in-flight request limit was reached."
    );
}
