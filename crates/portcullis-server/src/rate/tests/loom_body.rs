//! loom model of `BodyShared`: a body that falls below its rate on one thread (an HTTP/2
//! application reading its body in a task of its own) must wake the request's response future
//! waiting on another, which then answers 408.

use std::future::poll_fn;
use std::task::Poll;

use loom::thread;
use tokio::time::Instant;

use super::super::{BodyShared, MinRate};
use crate::state::ConnState;

#[test]
fn loom_a_body_below_its_rate_wakes_the_waiting_response() {
    loom::model(|| {
        let shared = BodyShared::new(ConnState::new(Instant::now()), MinRate::OFF);
        let body = std::sync::Arc::clone(&shared);
        let reader = thread::spawn(move || body.violate());
        // The response future's side, as `ResponseFuture::poll` does it: register, then read.
        // loom reports a deadlock if the wake-up can be lost.
        loom::future::block_on(poll_fn(|cx| {
            if shared.poll_violated(cx.waker()) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        }));
        reader.join().expect("reader");
    });
}
