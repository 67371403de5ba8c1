//! The hysteresis of a check on paused time, the timeout, and a probe that never waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use super::*;

/// A check whose answer the test flips, counting its runs.
fn switchable(healthy: &Arc<AtomicBool>, runs: &Arc<AtomicU32>) -> Check {
    let (healthy, runs) = (Arc::clone(healthy), Arc::clone(runs));
    Check::new("db", move || {
        runs.fetch_add(1, Ordering::SeqCst);
        let ok = healthy.load(Ordering::SeqCst);
        async move { if ok { Ok(()) } else { Err("refused") } }
    })
}

/// Lets the check tasks run until `runs` reaches `n` (time is paused: each sleep is instant).
async fn until_runs(runs: &AtomicU32, n: u32) {
    while runs.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Let the run just started record its result.
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
}

fn state(health: &HealthChecks) -> CheckState {
    health.status().checks[0].state
}

#[tokio::test(start_paused = true)]
async fn pending_until_a_success_down_after_three_failures_up_after_two_successes() {
    let (healthy, runs) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
    );
    let health = HealthChecks::new();
    health.add(switchable(&healthy, &runs));
    let stop = CancellationToken::new();
    let runner = tokio::spawn(health.run(stop.clone()));
    until_runs(&runs, 2).await;
    assert_eq!(state(&health), CheckState::Pending);
    assert!(!health.status().ready);
    healthy.store(true, Ordering::SeqCst);
    until_runs(&runs, 3).await;
    assert_eq!(
        state(&health),
        CheckState::Up,
        "the first success brings it up"
    );
    assert!(health.status().ready);
    healthy.store(false, Ordering::SeqCst);
    until_runs(&runs, 5).await;
    assert_eq!(
        state(&health),
        CheckState::Up,
        "two failures are not an outage"
    );
    until_runs(&runs, 6).await;
    assert_eq!(state(&health), CheckState::Down);
    assert_eq!(
        health.status().checks[0].last_error.as_deref(),
        Some("refused")
    );
    healthy.store(true, Ordering::SeqCst);
    until_runs(&runs, 7).await;
    assert_eq!(
        state(&health),
        CheckState::Down,
        "one success is not a recovery"
    );
    until_runs(&runs, 8).await;
    assert_eq!(state(&health), CheckState::Up);
    stop.cancel();
    runner.await.expect("no panic");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_dependency_times_out_and_the_status_never_waits_for_it() {
    let runs = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&runs);
    let health = HealthChecks::new();
    health.add(
        Check::new("hangs", move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { std::future::pending::<Result<(), String>>().await }
        })
        .timeout(Duration::from_millis(300))
        .failures_to_down(1),
    );
    let stop = CancellationToken::new();
    let runner = tokio::spawn(health.run(stop.clone()));
    until_runs(&runs, 1).await;
    // While the run hangs, the status answers at once (no await at all: it is synchronous).
    assert_eq!(state(&health), CheckState::Pending);
    until_runs(&runs, 2).await;
    let status = health.status();
    assert_eq!(
        status.checks[0].last_error.as_deref(),
        Some("no answer within 300ms")
    );
    stop.cancel();
    runner.await.expect("no panic");
}

#[tokio::test(start_paused = true)]
async fn a_non_critical_check_down_degrades_but_stays_ready() {
    let health = HealthChecks::new();
    health.add(Check::new("cache", || async { Err::<(), _>("down") }).critical(false));
    let stop = CancellationToken::new();
    let runner = tokio::spawn(health.run(stop.clone()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = health.status();
    assert!(status.ready && status.degraded, "{status:?}");
    assert!(
        status
            .verbose()
            .contains("check cache: pending (not critical), last error: down")
    );
    stop.cancel();
    runner.await.expect("no panic");
}

#[tokio::test(start_paused = true)]
async fn a_critical_check_down_too_long_fails_open_but_a_pending_one_never_does() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Current-thread runtime: the check's task records here too.
    let _local = metrics::set_default_local_recorder(&recorder);
    // One snapshot per look: the debugging recorder resets what it reports.
    let gauges = || {
        let mut gauges = std::collections::HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            if let metrics_util::debugging::DebugValue::Gauge(v) = value {
                gauges.insert(key.key().name().to_owned(), v.into_inner());
            }
        }
        move |name: &str| gauges.get(name).copied()
    };
    let (healthy, runs) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU32::new(0)),
    );
    let health = HealthChecks::new();
    health.add(switchable(&healthy, &runs).fail_open_after(Duration::from_secs(30)));
    let stop = CancellationToken::new();
    let runner = tokio::spawn(health.run(stop.clone()));
    // Pending for a minute: never fails open (a new instance waits for its dependency).
    until_runs(&runs, 60).await;
    assert_eq!(state(&health), CheckState::Pending);
    assert!(!health.status().ready);
    healthy.store(true, Ordering::SeqCst);
    until_runs(&runs, 61).await;
    assert!(health.status().ready);
    // Down: not ready for 30 s, then ready again, degraded, and listed as failed open.
    healthy.store(false, Ordering::SeqCst);
    until_runs(&runs, 64).await;
    assert_eq!(state(&health), CheckState::Down);
    let down = runs.load(Ordering::SeqCst);
    until_runs(&runs, down + 28).await;
    let status = health.status();
    assert!(!status.ready && !status.checks[0].failed_open, "{status:?}");
    assert_eq!(gauges()(crate::metrics::CHECK_FAILED_OPEN), Some(0.0));
    until_runs(&runs, down + 31).await;
    let gauge = gauges();
    assert_eq!(gauge(crate::metrics::CHECK_FAILED_OPEN), Some(1.0));
    assert_eq!(gauge(crate::metrics::CHECK_UP), Some(0.0));
    let status = health.status();
    assert!(
        status.ready && status.degraded && status.checks[0].failed_open,
        "{status:?}"
    );
    assert!(
        status.verbose().contains("check db: down (failed open"),
        "{}",
        status.verbose()
    );
    // Back up: an ordinary up check again.
    healthy.store(true, Ordering::SeqCst);
    until_runs(&runs, down + 33).await;
    let status = health.status();
    assert!(status.ready && !status.degraded && !status.checks[0].failed_open);
    let gauge = gauges();
    assert_eq!(gauge(crate::metrics::CHECK_FAILED_OPEN), Some(0.0));
    assert_eq!(gauge(crate::metrics::CHECK_UP), Some(1.0));
    stop.cancel();
    runner.await.expect("no panic");
}

#[test]
fn no_checks_is_ready() {
    let status = HealthChecks::new().status();
    assert!(status.ready && !status.degraded);
}

#[test]
fn status_lines_are_parsed() {
    use crate::checks::status;
    assert_eq!(status(b"HTTP/1.1 200 OK\r\n"), Some(200));
    assert_eq!(status(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
    assert_eq!(status(b"HTTP/1.1 20"), None);
    assert_eq!(status(b"SSH-2.0-OpenSSH\r\n"), None);
    assert_eq!(status(b""), None);
}

proptest::proptest! {
    #[test]
    fn any_bytes_parse_or_not_without_panicking(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
        let _ = crate::checks::status(&bytes);
    }
}

#[test]
fn check_urls_are_parsed_or_refused_with_the_url() {
    assert!(crate::checks::from_url("tcp://127.0.0.1:5432").is_ok());
    assert!(crate::checks::from_url("http://127.0.0.1:8080/healthz").is_ok());
    for bad in [
        "tcp://nohost",
        "tcp://:5432",
        "http://h:port/",
        "ftp://h:21",
        "h:1",
    ] {
        let error = crate::checks::from_url(bad).expect_err(bad);
        assert!(error.contains(bad), "{error}");
    }
}
