//! loom models of the overload signal: a change made by the manager on another thread is
//! never missed by a connection's watch that registered (loom reports the lost wake-up as a
//! deadlock), whether it lands before, during or after the watch's subscription, and the
//! watch ends on the last word whatever it skipped. The manager is the only writer, so each
//! model has one setter. A watch is protected twice (it reads the word and takes the
//! `Notify` under the lock the setter stores under, and it reads the word again after
//! registering); with both protections removed these models find the lost wake-up.

use std::future::poll_fn;
use std::task::Poll;

use loom::thread;

use crate::overload::signal::{Actions, OverloadSignal};

/// Shedding requests.
fn shed() -> Actions {
    Actions::new(false, 0, true, false, 0)
}

/// Shedding, no keep-alive, the first reclaim round and a quarter of the timeouts shrunk.
fn worse() -> Actions {
    Actions::new(true, 1, true, false, 4)
}

/// Runs `f` under loom with up to three preemptions: enough for the races here (a set
/// between a watch's load and its subscription, a notification between its registration and
/// its recheck) while keeping the exploration to seconds.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Every word one watch returns until it returns `last`. Each `Pending` is followed by a
/// second poll with the same waker, as a spurious wake-up would be: the path that skips
/// registering again must not lose the registration.
fn watch_until(signal: &OverloadSignal, seen: Actions, last: Actions) -> Vec<Actions> {
    let mut watch = signal.watch();
    watch.seen = seen;
    loom::future::block_on(async move {
        let mut words = Vec::new();
        while words.last() != Some(&last) {
            let word = poll_fn(|cx| match watch.poll_change(cx) {
                Poll::Pending => watch.poll_change(cx),
                ready => ready,
            })
            .await;
            words.push(word);
        }
        words
    })
}

fn setter(signal: &OverloadSignal, words: Vec<Actions>) -> thread::JoinHandle<()> {
    let signal = signal.clone();
    thread::spawn(move || {
        for word in words {
            signal.set(word);
        }
    })
}

#[test]
fn loom_a_change_on_another_thread_wakes_the_watch() {
    model(|| {
        let signal = OverloadSignal::new();
        let manager = setter(&signal, vec![shed()]);
        assert_eq!(watch_until(&signal, Actions::NONE, shed()), [shed()]);
        manager.join().expect("manager");
    });
}

#[test]
fn loom_successive_changes_end_on_the_last_word() {
    model(|| {
        let signal = OverloadSignal::new();
        let manager = setter(&signal, vec![shed(), worse()]);
        let words = watch_until(&signal, Actions::NONE, worse());
        assert!(
            words == [worse()] || words == [shed(), worse()],
            "each word once, in order: {words:?}"
        );
        manager.join().expect("manager");
    });
}

#[test]
fn loom_a_change_undone_and_followed_by_another_is_seen() {
    model(|| {
        let signal = OverloadSignal::new();
        signal.set(shed());
        // The watch saw the shedding word; the manager lifts it and then sets another word, perhaps
        // while the watch's registration is for the first of the two changes.
        let manager = setter(&signal, vec![Actions::NONE, worse()]);
        let words = watch_until(&signal, shed(), worse());
        assert!(
            words == [worse()] || words == [Actions::NONE, worse()],
            "no repeat of shed(), and worse() in the end: {words:?}"
        );
        manager.join().expect("manager");
    });
}

#[test]
fn loom_changed_returns_the_first_word_after_the_one_seen() {
    model(|| {
        let signal = OverloadSignal::new();
        let manager = setter(&signal, vec![shed()]);
        assert_eq!(
            loom::future::block_on(signal.changed(Actions::NONE)),
            shed()
        );
        manager.join().expect("manager");
    });
}
