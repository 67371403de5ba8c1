//! What the micro-benchmarks share: the application the metrics benchmarks measure the
//! layer around, and driving a tower service's future and a response body to their ends
//! without a runtime, as hyper would (every future they drive is ready at once).

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use portcullis_metrics::Route;

/// The application of the metrics benchmarks: `hello\n`, naming its route template in the
/// response, as a router does.
///
/// # Errors
///
/// Never.
#[inline]
pub async fn hello(_request: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(hello_response())
}

/// The response of [`hello`], built out of line: the bare service and the layered one run
/// the same code for it, whatever the compiler inlines around the layer, so their difference
/// is the layer's.
#[inline(never)]
fn hello_response() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(b"hello\n")));
    response.extensions_mut().insert(Route::new("/"));
    response
}

/// `GET /`, built out of line for the same reason as [`hello`]'s response.
#[inline(never)]
#[must_use]
pub fn get_root() -> Request<()> {
    Request::builder()
        .uri("/")
        .body(())
        .unwrap_or_else(|_| unreachable!("a valid request"))
}

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
