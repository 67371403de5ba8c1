//! loom models of the lifecycle phase: an advance is never missed by a watcher that registered
//! on another thread, and the stage only moves forward, whoever advances it.

use std::future::poll_fn;
use std::sync::Arc;

use loom::thread;

use crate::phase::{PhaseCell as Phase, PhaseWatch, ShutdownPhase as Stage};

/// Runs `f` under loom, exploring schedules with up to three preemptions: enough for each of
/// the races here (an advance between a watcher's load and its registration, a notification
/// between its registration and its recheck), and it keeps the exploration to seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Every stage a watcher sees, through `poll_change`, until it sees `Forced`. loom reports a
/// deadlock if a wake-up can be lost.
fn watch_until_forced(phase: Arc<Phase>) -> Vec<Stage> {
    loom::future::block_on(async move {
        let mut watch = std::pin::pin!(PhaseWatch::new(phase));
        let mut seen = Vec::new();
        while seen.last() != Some(&Stage::Forced) {
            seen.push(poll_fn(|cx| watch.as_mut().poll_change(cx)).await);
        }
        seen
    })
}

#[test]
fn loom_an_advance_on_another_thread_wakes_the_watcher() {
    model(|| {
        let phase = Phase::new();
        let advancer = {
            let phase = Arc::clone(&phase);
            thread::spawn(move || phase.advance(Stage::Drain))
        };
        loom::future::block_on(phase.reached(Stage::Drain));
        assert_eq!(phase.get(), Stage::Drain);
        advancer.join().expect("advancer");
    });
}

#[test]
fn loom_concurrent_advances_only_move_forward() {
    model(|| {
        let phase = Phase::new();
        // Two cores' triggers at once: one drains, one forces.
        let draining = {
            let phase = Arc::clone(&phase);
            thread::spawn(move || phase.advance(Stage::Drain))
        };
        let forced = {
            let phase = Arc::clone(&phase);
            thread::spawn(move || phase.advance(Stage::Forced))
        };
        let seen = watch_until_forced(Arc::clone(&phase));
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "stages only move forward: {seen:?}"
        );
        draining.join().expect("draining");
        forced.join().expect("forced");
        assert_eq!(
            phase.get(),
            Stage::Forced,
            "a late Draining never undoes Forced"
        );
    });
}

#[test]
fn loom_a_repeated_advance_does_not_hide_the_next_one() {
    model(|| {
        let phase = Phase::new();
        phase.advance(Stage::Drain);
        // Another core repeats Draining while this one moves on to Forced.
        let repeat = {
            let phase = Arc::clone(&phase);
            thread::spawn(move || phase.advance(Stage::Drain))
        };
        let force = {
            let phase = Arc::clone(&phase);
            thread::spawn(move || phase.advance(Stage::Forced))
        };
        let seen = watch_until_forced(Arc::clone(&phase));
        assert_eq!(seen.last(), Some(&Stage::Forced));
        repeat.join().expect("repeat");
        force.join().expect("force");
    });
}
