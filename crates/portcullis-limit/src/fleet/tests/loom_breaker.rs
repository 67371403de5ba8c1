//! loom models of the breaker: transitions reported once and in order, one recovery task.

use super::*;
use crate::loom::Arc;

/// Failures on three threads past the threshold open the breaker, and exactly one of them
/// reports it (one log line, one gauge change).
#[test]
fn concurrent_failures_open_it_once() {
    loom::model(|| {
        let breaker = Arc::new(Breaker::new(2));
        breaker.close(|| {});
        let reports = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (breaker, reports) = (Arc::clone(&breaker), Arc::clone(&reports));
                loom::thread::spawn(move || {
                    breaker.failure(|_| {
                        reports.fetch_add(1, Ordering::Relaxed);
                    });
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no panic");
        }
        assert!(breaker.is_open());
        assert_eq!(reports.load(Ordering::Relaxed), 1);
    });
}

/// A trip racing a close: the last report always names the state the breaker is left in, so
/// the gauges never show closed while it is open (or the reverse).
#[test]
fn the_last_report_is_the_final_state() {
    loom::model(|| {
        let breaker = Arc::new(Breaker::new(1));
        // What the gauge shows: 1 open, 0 closed; it starts open.
        let gauge = Arc::new(AtomicU32::new(1));
        let closer = {
            let (breaker, gauge) = (Arc::clone(&breaker), Arc::clone(&gauge));
            loom::thread::spawn(move || breaker.close(|| gauge.store(0, Ordering::Relaxed)))
        };
        let tripper = {
            let (breaker, gauge) = (Arc::clone(&breaker), Arc::clone(&gauge));
            loom::thread::spawn(move || breaker.trip(|| gauge.store(1, Ordering::Relaxed)))
        };
        closer.join().expect("no panic");
        tripper.join().expect("no panic");
        assert_eq!(gauge.load(Ordering::Relaxed) == 1, breaker.is_open());
    });
}

/// Two checks finding the breaker open start one recovery task; once it ends, the next
/// check starts another.
#[test]
fn one_recovery_task_at_a_time() {
    loom::model(|| {
        let breaker = Arc::new(Breaker::new(1));
        let other = {
            let breaker = Arc::clone(&breaker);
            loom::thread::spawn(move || breaker.start_recovery())
        };
        let here = breaker.start_recovery();
        let there = other.join().expect("no panic");
        assert!(here ^ there, "exactly one starts it: {here} {there}");
        breaker.recovery_ended();
        assert!(breaker.start_recovery());
    });
}
