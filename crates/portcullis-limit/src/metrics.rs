//! Metric names emitted by this crate, [`describe`] to register their units and help, and
//! [`register`] to create every series of the closed label sets at 0.
//!
//! Emitted only through the [`metrics`](https://docs.rs/metrics) facade; this crate never
//! installs a recorder. Label values come from closed sets: [`LABEL_LIMITER`] is the name the
//! application gave the limiter in code
//! ([`RateLimitBuilder::name`](crate::RateLimitBuilder::name)), never a key, an address or a
//! path.
//!
//! Every handle is resolved on first use (the first request checked, the first rejection),
//! not when the limiter is built, so a limiter built before the recorder is installed still
//! reports to it. Install the recorder before serving.

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

/// Counter: connections refused by the connection filter ([`IpFilter`](crate::IpFilter)),
/// by [`LABEL_RULE`].
pub const FILTER_REJECTED_TOTAL: &str = "portcullis_limit_filter_rejected_total";

/// Counter: times the connection filter's lists were replaced
/// ([`IpFilter::replace`](crate::IpFilter::replace), a SIGHUP reload of the config file).
pub const FILTER_RELOADS_TOTAL: &str = "portcullis_limit_filter_reloads_total";

/// Label on [`FILTER_REJECTED_TOTAL`]: the deny rule's name (by default its range, such as
/// `10.0.0.0/8`), or [`NOT_ALLOWED`]. Bounded by the number of rules; never a client address.
pub const LABEL_RULE: &str = "rule";

/// The [`LABEL_RULE`] value of clients outside every allowed range.
pub const NOT_ALLOWED: &str = "not_allowed";

/// Counter: refusals counted towards a ban ([`Bans::strike`](crate::Bans::strike)), by
/// [`LABEL_REASON`] (one of the [`BAN_REASONS`], or an application's own).
pub const STRIKES_TOTAL: &str = "portcullis_limit_ban_strikes_total";

/// Counter: bans raised, by [`LABEL_REASON`] (the refusal that raised it; `manual` for
/// [`Bans::ban`](crate::Bans::ban) and the admin API).
pub const BANS_TOTAL: &str = "portcullis_limit_bans_total";

/// Counter: bans a dry run would have raised, by [`LABEL_REASON`].
pub const BANS_DRY_RUN_TOTAL: &str = "portcullis_limit_bans_dry_run_total";

/// Gauge: bans in force.
pub const BANS_ACTIVE: &str = "portcullis_limit_bans_active";

/// Gauge: clients remembered for their refusals or earlier bans.
pub const BAN_OFFENDERS: &str = "portcullis_limit_ban_offenders";

/// Counter: entries dropped from a full ban table before they expired, by [`LABEL_TABLE`].
/// Anything above zero means the cap is too small for the attack under way.
pub const BAN_EVICTIONS_TOTAL: &str = "portcullis_limit_ban_evictions_total";

/// Label on [`BAN_EVICTIONS_TOTAL`]: `offenders` or `bans`.
pub const LABEL_TABLE: &str = "table";

/// Counter: connections and requests of banned clients turned away, by [`LABEL_AT`].
pub const BAN_REJECTIONS_TOTAL: &str = "portcullis_limit_ban_rejections_total";

/// Label on [`BAN_REJECTIONS_TOTAL`]: `accept` (the connection was closed at accept) or
/// `request` (a client behind a trusted proxy got 429).
pub const LABEL_AT: &str = "at";

/// The server's own values of [`LABEL_REASON`] on the ban metrics.
pub const BAN_REASONS: &[&str] = &[
    "rate_limited",
    "conn_cap",
    "malformed",
    "tls_handshake",
    "manual",
];

/// Counter (feature `redis`): calls to Redis made by fleet limits, by [`LABEL_OUTCOME`]:
/// `ok` (Redis decided), `timeout` (no answer within the deadline; decided locally), `error`
/// (decided locally).
pub const REDIS_CALLS_TOTAL: &str = "portcullis_limit_redis_calls_total";

/// Histogram (feature `redis`): how long calls to Redis took, in seconds (a call that missed
/// its deadline counts as the deadline).
pub const REDIS_CALL_DURATION: &str = "portcullis_limit_redis_call_duration_seconds";

/// Counter (feature `redis`): times the GCRA script was loaded, by [`LABEL_REASON`]: `connect`
/// (on every new connection) or `noscript` (Redis had lost it: a restart, a failover,
/// `SCRIPT FLUSH`).
pub const REDIS_SCRIPT_LOADS_TOTAL: &str = "portcullis_limit_redis_script_loads_total";

/// Gauge (feature `redis`): 1 while the link to Redis has a connection.
pub const REDIS_CONNECTED: &str = "portcullis_limit_redis_connected";

/// Gauge (feature `redis`): 1 while the circuit breaker is open (checks are local, Redis is
/// probed), 0 while it is closed.
pub const REDIS_BREAKER_OPEN: &str = "portcullis_limit_redis_breaker_open";

/// Gauge (feature `redis`): 1 while fleet limits are enforced locally at rate / fleet size
/// (no connection, or the breaker open).
pub const FLEET_FALLBACK_ACTIVE: &str = "portcullis_limit_fleet_fallback_active";

/// Counter (feature `redis`): checks of a fleet limit, by [`LABEL_LIMITER`] and
/// [`LABEL_DECIDED`]: `redis` or `local` (a missed deadline, an error, the breaker open).
pub const FLEET_CHECKS_TOTAL: &str = "portcullis_limit_fleet_checks_total";

/// Label on [`REDIS_CALLS_TOTAL`]: `ok`, `timeout` or `error`.
pub const LABEL_OUTCOME: &str = "outcome";

/// Label on [`FLEET_CHECKS_TOTAL`]: `redis` or `local`.
pub const LABEL_DECIDED: &str = "decided";

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
        FILTER_REJECTED_TOTAL,
        Unit::Count,
        "Connections refused by the portcullis connection filter, by rule."
    );
    metrics::describe_counter!(
        FILTER_RELOADS_TOTAL,
        Unit::Count,
        "Times the portcullis connection filter's lists were replaced."
    );
    metrics::describe_counter!(
        STRIKES_TOTAL,
        Unit::Count,
        "Refusals counted towards temporary bans, by reason."
    );
    metrics::describe_counter!(BANS_TOTAL, Unit::Count, "Temporary bans raised, by reason.");
    metrics::describe_counter!(
        BANS_DRY_RUN_TOTAL,
        Unit::Count,
        "Temporary bans a dry run would have raised, by reason."
    );
    metrics::describe_gauge!(BANS_ACTIVE, Unit::Count, "Temporary bans in force.");
    metrics::describe_gauge!(
        BAN_OFFENDERS,
        Unit::Count,
        "Clients remembered for their refusals or earlier bans."
    );
    metrics::describe_counter!(
        BAN_EVICTIONS_TOTAL,
        Unit::Count,
        "Entries dropped from a full ban table before they expired, by table."
    );
    metrics::describe_counter!(
        BAN_REJECTIONS_TOTAL,
        Unit::Count,
        "Connections (at accept) and requests (behind a trusted proxy) of banned clients turned away."
    );
    metrics::describe_counter!(
        REDIS_CALLS_TOTAL,
        Unit::Count,
        "Calls to Redis made by portcullis fleet rate limits, by outcome (ok, timeout, error)."
    );
    metrics::describe_histogram!(
        REDIS_CALL_DURATION,
        Unit::Seconds,
        "How long calls to Redis by portcullis fleet rate limits took."
    );
    metrics::describe_counter!(
        REDIS_SCRIPT_LOADS_TOTAL,
        Unit::Count,
        "Loads of the fleet rate limit script into Redis, by reason (connect, noscript)."
    );
    metrics::describe_gauge!(
        REDIS_CONNECTED,
        Unit::Count,
        "1 while the link to Redis of the fleet rate limits has a connection."
    );
    metrics::describe_gauge!(
        REDIS_BREAKER_OPEN,
        Unit::Count,
        "1 while the circuit breaker in front of Redis is open."
    );
    metrics::describe_gauge!(
        FLEET_FALLBACK_ACTIVE,
        Unit::Count,
        "1 while fleet rate limits are enforced locally at rate / fleet size."
    );
    metrics::describe_counter!(
        FLEET_CHECKS_TOTAL,
        Unit::Count,
        "Checks of fleet rate limits, by limiter and where they were decided (redis, local)."
    );
    metrics::describe_counter!(
        REQUESTS_SHED_TOTAL,
        Unit::Count,
        "Requests answered 503 because portcullis's in-flight request limit was reached."
    );
}

/// Registers every series of this crate whose labels come from a closed set with the current
/// recorder, at 0, so they exist before their first event: [`CONNECTIONS_REJECTED_TOTAL`] for
/// each of the [`REJECT_REASONS`], and [`REQUESTS_SHED_TOTAL`].
///
/// A counter that first appears with the first incident leaves `rate()` and alerts with
/// nothing to compare against; registered up front, it is exported as 0 from the start. The
/// series labelled by [`LABEL_LIMITER`] are not among them (the names are the application's):
/// a rate limit creates its own at 0 on the first request it checks. Call it once from the
/// executable after installing a recorder; calling it more than once is harmless (nothing is
/// incremented).
pub fn register() {
    for reason in REJECT_REASONS {
        metrics::counter!(CONNECTIONS_REJECTED_TOTAL, LABEL_REASON => *reason).increment(0);
    }
    metrics::counter!(REQUESTS_SHED_TOTAL).increment(0);
}

/// Registers the series of the connection filter and the bans at 0, for servers that use
/// them: [`FILTER_REJECTED_TOTAL`] for [`NOT_ALLOWED`], [`FILTER_RELOADS_TOTAL`], [`BANS_TOTAL`] and [`STRIKES_TOTAL`]
/// for each of the [`BAN_REASONS`], [`BAN_REJECTIONS_TOTAL`] at both places, and the gauges.
/// portcullis-server calls it when it is given a filter or bans.
pub fn register_edge() {
    metrics::counter!(FILTER_REJECTED_TOTAL, LABEL_RULE => NOT_ALLOWED).increment(0);
    metrics::counter!(FILTER_RELOADS_TOTAL).increment(0);
    for reason in BAN_REASONS {
        metrics::counter!(BANS_TOTAL, LABEL_REASON => *reason).increment(0);
        metrics::counter!(STRIKES_TOTAL, LABEL_REASON => *reason).increment(0);
    }
    for at in ["accept", "request"] {
        metrics::counter!(BAN_REJECTIONS_TOTAL, LABEL_AT => at).increment(0);
    }
    metrics::gauge!(BANS_ACTIVE).set(0.0);
    metrics::gauge!(BAN_OFFENDERS).set(0.0);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::ConnRejected;

    #[test]
    fn the_reject_reasons_are_the_reasons_emitted() {
        let emitted = [
            ConnRejected::MaxConnections.reason(),
            ConnRejected::MaxConnectionsPerClient.reason(),
            // HandshakeLimiter's.
            "max_handshakes",
        ];
        assert_eq!(REJECT_REASONS, emitted);
    }

    #[test]
    fn describe_registers_units_and_help() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            register();
        });
        for (key, unit, help, _) in snapshotter.snapshot().into_vec() {
            assert!(unit.is_some(), "{key:?}");
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
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            got.insert(format!("{}{{{}}}", key.key().name(), labels.join(",")));
        }
        let mut expected: BTreeSet<String> = REJECT_REASONS
            .iter()
            .map(|r| format!("{CONNECTIONS_REJECTED_TOTAL}{{{LABEL_REASON}={r}}}"))
            .collect();
        expected.insert(format!("{REQUESTS_SHED_TOTAL}{{}}"));
        assert_eq!(got, expected);
    }
}
