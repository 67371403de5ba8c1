//! docs/metrics.md and docs/grafana-dashboard.json stay true to the metric names in the code:
//! every metric portcullis emits is in the catalogue, and the dashboard queries only those.

use std::collections::BTreeSet;

/// Every metric name portcullis's crates define.
fn emitted() -> BTreeSet<&'static str> {
    use portcullis::health::metrics as health;
    use portcullis::limit::metrics as limit;
    use portcullis::listen::metrics as listen;
    use portcullis::metrics::{http, process, runtime};
    use portcullis::server::metrics as server;
    use portcullis::shutdown::metrics as shutdown;
    use portcullis::tls::metrics as tls;
    BTreeSet::from([
        listen::CONNECTIONS_ACCEPTED_TOTAL,
        listen::ACCEPT_ERRORS_TOTAL,
        listen::CONNECTIONS_SHED_TOTAL,
        listen::PROXY_HEADER_ERRORS_TOTAL,
        limit::CONNECTIONS_REJECTED_TOTAL,
        limit::REQUESTS_TOTAL,
        limit::KEYS,
        limit::KEYS_EVICTED_TOTAL,
        limit::KEY_OVERFLOW_TOTAL,
        limit::REQUESTS_SHED_TOTAL,
        limit::FILTER_REJECTED_TOTAL,
        limit::FILTER_RELOADS_TOTAL,
        limit::STRIKES_TOTAL,
        limit::BANS_TOTAL,
        limit::BANS_DRY_RUN_TOTAL,
        limit::BANS_ACTIVE,
        limit::BAN_OFFENDERS,
        limit::BAN_EVICTIONS_TOTAL,
        limit::BAN_REJECTIONS_TOTAL,
        limit::REDIS_CALLS_TOTAL,
        limit::REDIS_CALL_DURATION,
        limit::REDIS_SCRIPT_LOADS_TOTAL,
        limit::REDIS_CONNECTED,
        limit::REDIS_BREAKER_OPEN,
        limit::FLEET_FALLBACK_ACTIVE,
        limit::FLEET_CHECKS_TOTAL,
        tls::HANDSHAKES_TOTAL,
        tls::HANDSHAKE_FAILURES_TOTAL,
        tls::RELOADS_TOTAL,
        tls::CERTIFICATE_EXPIRY_SECONDS,
        server::CONNECTIONS_ACTIVE,
        server::CONNECTIONS_CLOSED,
        server::CONNECTION_DURATION,
        server::HANDLER_PANICS,
        server::HANDLER_ERRORS,
        server::REQUESTS_REJECTED,
        server::STREAMS_RESET,
        server::REQUESTS_SHED,
        server::UPGRADE_GENERATION,
        server::UPGRADES_TOTAL,
        server::UPGRADE_DRAINING_GENERATIONS,
        shutdown::SHUTDOWN_PHASE,
        shutdown::DRAIN_DURATION,
        shutdown::SIGNALS_RECEIVED,
        http::REQUEST_DURATION,
        http::ACTIVE_REQUESTS,
        process::PROCESS_OPEN_FDS,
        process::PROCESS_MAX_FDS,
        process::PROCESS_FDS_UTILIZATION,
        process::PROCESS_RESIDENT_MEMORY,
        process::PROCESS_VIRTUAL_MEMORY,
        process::PROCESS_CPU_SECONDS,
        process::PROCESS_START_TIME,
        process::PROCESS_THREADS,
        runtime::TOKIO_WORKERS,
        runtime::TOKIO_LIVE_TASKS,
        runtime::TOKIO_GLOBAL_QUEUE_DEPTH,
        runtime::TOKIO_PARK_COUNT,
        runtime::TOKIO_BUSY_DURATION,
        runtime::TOKIO_BUSY_RATIO,
        health::CHECK_UP,
        health::CHECK_FAILED_OPEN,
        health::CHECK_TRANSITIONS_TOTAL,
        health::CHECK_DURATION,
        health::EVENT_LOOP_LAG,
        health::EVENT_LOOP_LAG_CURRENT,
        health::OVERLOAD_PRESSURE,
        health::OVERLOAD_ACTION,
        health::OVERLOAD_ACTIVATIONS_TOTAL,
    ])
}

fn doc(name: &str) -> String {
    let path = format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The names in `used` that portcullis does not emit.
fn unknown(used: BTreeSet<String>) -> Vec<String> {
    let emitted = emitted();
    used.into_iter()
        .filter(|name| !emitted.contains(name.as_str()))
        .collect()
}

/// The metric names in `text`: words starting `portcullis_` or `http_server_` (with at least two
/// underscores: `portcullis_listen` alone is a crate), without the histogram series suffixes.
fn mentioned(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("portcullis_") || word.starts_with("http_server_"))
        .filter(|word| word.matches('_').count() >= 2)
        .map(|word| {
            ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suffix| word.strip_suffix(suffix))
                .unwrap_or(word)
                .to_owned()
        })
        .collect()
}

#[test]
fn every_emitted_metric_is_in_the_catalogue() {
    let catalogue = doc("metrics.md");
    for name in emitted() {
        assert!(
            catalogue.contains(&format!("| `{name}` |")),
            "{name} has no row in docs/metrics.md"
        );
    }
    assert_eq!(
        unknown(mentioned(&catalogue)),
        Vec::<String>::new(),
        "docs/metrics.md names metrics portcullis does not emit"
    );
}

#[test]
fn the_dashboard_queries_only_catalogue_metrics() {
    let dashboard = doc("grafana-dashboard.json");
    let used = mentioned(&dashboard);
    assert!(
        used.len() >= 8,
        "the dashboard uses the catalogue: {used:?}"
    );
    assert_eq!(
        unknown(used),
        Vec::<String>::new(),
        "the dashboard queries unknown metrics"
    );
}

#[test]
fn the_guides_name_only_catalogue_metrics() {
    for (name, at_least) in [
        ("production-checklist.md", 20),
        ("tuning.md", 4),
        ("coming-from-axum.md", 3),
        ("fleet-limits.md", 7),
        ("health.md", 6),
    ] {
        let used = mentioned(&doc(name));
        assert!(
            used.len() >= at_least,
            "docs/{name} points at the metrics: {used:?}"
        );
        assert_eq!(
            unknown(used),
            Vec::<String>::new(),
            "docs/{name} names metrics portcullis does not emit"
        );
    }
}
