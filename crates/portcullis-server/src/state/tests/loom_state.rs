//! loom models of `ConnState`: the in-flight count shared by HTTP/2 stream tasks and the
//! connection driver on other threads.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use loom::thread;
use tokio::time::Instant;

use super::{ConnState, Nanos, nanos};
use crate::metrics::CloseReason;

const HEADER: Nanos = nanos(Duration::from_secs(10));
const IDLE: Nanos = nanos(Duration::from_secs(60));

/// The driver's view: waits until the connection has a deadline (is idle), registering its
/// waker before reading the state, as `Driver::poll` does. loom reports a deadlock if the
/// wake-up can be lost.
fn wait_until_idle(state: &ConnState) -> CloseReason {
    loom::future::block_on(poll_fn(|cx| {
        state.register(cx.waker());
        match state.deadline(HEADER, IDLE) {
            Some(deadline) => Poll::Ready(deadline.reason),
            None => Poll::Pending,
        }
    }))
}

#[test]
fn loom_stream_ending_on_another_thread_wakes_the_driver() {
    loom::model(|| {
        let state = ConnState::new(Instant::now());
        let stream = state.request_started();
        let ender = thread::spawn(move || drop(stream));
        assert_eq!(wait_until_idle(&state), CloseReason::IdleTimeout);
        ender.join().expect("ender");
    });
}

#[test]
fn loom_concurrent_ends_reach_zero_exactly_once() {
    loom::model(|| {
        let state = ConnState::new(Instant::now());
        let first = state.request_started();
        let second = state.request_started();
        let a = thread::spawn(move || drop(first));
        let b = thread::spawn(move || drop(second));
        assert_eq!(wait_until_idle(&state), CloseReason::IdleTimeout);
        a.join().expect("a");
        b.join().expect("b");
        assert!(!state.is_busy(), "no request left, and no underflow");
        assert!(state.deadline(HEADER, IDLE).is_some());
    });
}

#[test]
fn loom_a_stream_opening_while_another_ends_keeps_the_connection_busy() {
    loom::model(|| {
        let state = ConnState::new(Instant::now());
        let first = state.request_started();
        let opener_state = Arc::clone(&state);
        let opener = thread::spawn(move || opener_state.request_started());
        let ender = thread::spawn(move || drop(first));
        let second = opener.join().expect("opener");
        ender.join().expect("ender");
        assert!(state.is_busy());
        assert_eq!(
            state.deadline(HEADER, IDLE),
            None,
            "an open stream has no deadline"
        );
        drop(second);
        assert_eq!(
            state.deadline(HEADER, IDLE).map(|d| d.reason),
            Some(CloseReason::IdleTimeout)
        );
    });
}
