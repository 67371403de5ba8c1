//! What the micro-benchmarks share: driving a tower service's future and a response body
//! to their ends without a runtime, as hyper would (every future they drive is ready at
//! once).

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use http_body::Body;

/// Polls a future that is ready at once (every future the benchmarks drive is).
///
/// # Panics
///
/// If the future is not ready at its first poll.
#[inline]
pub fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => unreachable!("ready at once"),
    }
}

/// Reads a body to its end, as hyper does.
#[inline]
pub fn drain<B: Body>(body: B) {
    let mut cx = Context::from_waker(Waker::noop());
    let mut body = pin!(body);
    while let Poll::Ready(Some(frame)) = body.as_mut().poll_frame(&mut cx) {
        let _ = black_box(frame.is_ok());
    }
}
