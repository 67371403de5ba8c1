//! The request body the application reads: hyper's, held to the minimum body rate.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::loom::{AtomicBool, AtomicU64, AtomicWaker, Ordering};
use crate::state::{ConnState, Nanos, nanos};

use super::{MinRate, RATE_TICK};

pin_project! {
    /// The body of the requests the application service receives: hyper's
    /// [`Incoming`](hyper::body::Incoming), held to the minimum body rate
    /// ([`HttpConfig::min_body_rate`](crate::HttpConfig::min_body_rate), or a route's own
    /// through [`MinRateLayer`](crate::MinRateLayer)).
    ///
    /// Time counts only while the application awaits a frame, by at most one
    /// [`RATE_TICK`] per tick, and not while an HTTP/2 client may not send (the connection
    /// window the server advertised is used up). Once past the grace period with fewer bytes
    /// than the rate asks for, the check at the next tick fails the poll with
    /// [`BodyError::BelowMinRate`], the request is
    /// answered 408 if no response has started, and the connection closes (HTTP/1) or the
    /// stream is reset (HTTP/2).
    ///
    /// axum's `Router` takes it as it takes any body; a plain service names it in its request
    /// type, `http::Request<RequestBody>`.
    pub struct RequestBody {
        #[pin]
        inner: Incoming,
        // `None` for a request without a body (nothing to time) and after the body ended.
        tracking: Option<Box<Tracking>>,
    }
}

/// Why reading a [`RequestBody`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum BodyError {
    /// hyper failed to read the body (the client closed, or sent what is not HTTP).
    Hyper(hyper::Error),
    /// The client sent its body below the minimum rate.
    BelowMinRate {
        /// Bytes received when it was cut.
        received: u64,
        /// Time the application had spent waiting for them.
        waited: Duration,
        /// The rate it fell below.
        min: MinRate,
    },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Hyper(error) => write!(f, "reading the request body failed: {error}"),
            BodyError::BelowMinRate {
                received,
                waited,
                min,
            } => write!(
                f,
                "request body too slow: {received} bytes in {waited:?} of waiting, below the minimum of {min}"
            ),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Hyper(error) => Some(error),
            BodyError::BelowMinRate { .. } => None,
        }
    }
}

/// What one request's body, its response and [`MinRateLayer`](crate::MinRateLayer) share.
#[derive(Debug)]
pub(crate) struct BodyShared {
    pub(crate) conn: Arc<ConnState>,
    /// The rate in force, packed (`MinRate::pack`).
    rate: AtomicU64,
    /// The body fell below its rate.
    violated: AtomicBool,
    /// The request's response future, woken when the body falls below its rate.
    response: AtomicWaker,
}

impl BodyShared {
    pub(crate) fn new(conn: Arc<ConnState>, rate: MinRate) -> Arc<Self> {
        Arc::new(Self {
            conn,
            rate: AtomicU64::new(rate.pack()),
            violated: AtomicBool::new(false),
            response: AtomicWaker::new(),
        })
    }

    pub(crate) fn set_rate(&self, rate: MinRate) {
        self.rate.store(rate.pack(), Ordering::Relaxed);
    }

    fn rate(&self) -> MinRate {
        MinRate::unpack(self.rate.load(Ordering::Relaxed)).unwrap_or(MinRate::OFF)
    }

    /// Whether the body fell below its rate; registers `waker` to hear of it first.
    pub(crate) fn poll_violated(&self, waker: &std::task::Waker) -> bool {
        self.response.register(waker);
        self.is_violated()
    }

    pub(crate) fn is_violated(&self) -> bool {
        self.violated.load(Ordering::Acquire)
    }

    fn violate(&self) {
        self.violated.store(true, Ordering::Release);
        self.response.wake();
    }
}

/// The timing of one body, kept only while it is read.
#[derive(Debug)]
struct Tracking {
    shared: Arc<BodyShared>,
    received: u64,
    /// Time that counts, so far.
    waited: Nanos,
    /// While the application awaits a frame: when its time was last counted.
    since: Option<Instant>,
    /// Wakes the waiting application at the next tick; made at the first wait.
    tick: Option<Pin<Box<Sleep>>>,
}

impl RequestBody {
    /// A body with nothing to time (the request has none).
    pub(crate) fn untracked(inner: Incoming) -> Self {
        Self {
            inner,
            tracking: None,
        }
    }

    /// A body held to `shared`'s rate.
    pub(crate) fn tracked(inner: Incoming, shared: Arc<BodyShared>) -> Self {
        Self {
            inner,
            tracking: Some(Box::new(Tracking {
                shared,
                received: 0,
                waited: 0,
                since: None,
                tick: None,
            })),
        }
    }
}

impl Tracking {
    /// Counts the time since the last count: at most one tick, and none while an HTTP/2
    /// client may not send.
    fn count(&mut self, now: Instant) {
        if let Some(since) = self.since {
            if !self.shared.conn.h2_window_exhausted() {
                let elapsed = now.saturating_duration_since(since).min(RATE_TICK);
                self.waited = self.waited.saturating_add(nanos(elapsed));
            }
            self.since = Some(now);
        }
    }

    /// The application awaits a frame that is not there: time counts, checked at each tick.
    fn poll_wait(&mut self, cx: &mut Context<'_>) -> Poll<BodyError> {
        let min = self.shared.rate();
        if min.is_off() {
            self.since = None;
            return Poll::Pending;
        }
        loop {
            let now = Instant::now();
            if self.since.is_none() {
                self.since = Some(now);
                // The ticks keep their own pace: frames arriving between two do not push the
                // next check back (a client sending a byte just before each would never be
                // checked).
                if self.tick.is_none() {
                    self.tick = Some(Box::pin(tokio::time::sleep_until(now + RATE_TICK)));
                }
            }
            let Some(tick) = &mut self.tick else {
                return Poll::Pending;
            };
            if tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            tick.as_mut().reset(now + RATE_TICK);
            self.count(now);
            if min.is_below(self.received, self.waited) {
                self.shared.violate();
                return Poll::Ready(BodyError::BelowMinRate {
                    received: self.received,
                    waited: Duration::from_nanos(self.waited),
                    min,
                });
            }
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        let Some(tracking) = this.tracking else {
            return polled.map_err(BodyError::Hyper);
        };
        match polled {
            Poll::Pending => {
                if tracking.shared.is_violated() {
                    return Poll::Ready(Some(Err(below(tracking))));
                }
                match tracking.poll_wait(cx) {
                    Poll::Ready(error) => Poll::Ready(Some(Err(error))),
                    Poll::Pending => Poll::Pending,
                }
            }
            Poll::Ready(Some(Ok(frame))) => {
                if tracking.since.is_some() {
                    tracking.count(Instant::now());
                    tracking.since = None;
                }
                if let Some(data) = frame.data_ref() {
                    tracking.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(end) => {
                // The body ended or failed: nothing more to time.
                *this.tracking = None;
                Poll::Ready(end.map(|r| r.map_err(BodyError::Hyper)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn below(tracking: &Tracking) -> BodyError {
    BodyError::BelowMinRate {
        received: tracking.received,
        waited: Duration::from_nanos(tracking.waited),
        min: tracking.shared.rate(),
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("inner", &self.inner)
            .field("timed", &self.tracking.is_some())
            .finish()
    }
}

#[cfg(all(test, not(portcullis_loom)))]
mod tests {
    use super::*;

    const MIN: MinRate = MinRate::new(100, Duration::from_secs(2));

    fn tracking(state: &Arc<ConnState>) -> Tracking {
        Tracking {
            shared: BodyShared::new(Arc::clone(state), MIN),
            received: 0,
            waited: 0,
            since: None,
            tick: None,
        }
    }

    fn poll(tracking: &mut Tracking) -> Poll<BodyError> {
        tracking.poll_wait(&mut Context::from_waker(std::task::Waker::noop()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_starved_server_counts_one_tick_per_tick() {
        let state = ConnState::new(Instant::now());
        let mut body = tracking(&state);
        assert!(poll(&mut body).is_pending());
        // The runtime did not run this task for 10 s: only one tick counts.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(
            poll(&mut body).is_pending(),
            "1 s waited is within the grace"
        );
        assert_eq!(body.waited, nanos(RATE_TICK));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_past_the_grace_below_the_rate_fails_the_body() {
        let state = ConnState::new(Instant::now());
        let mut body = tracking(&state);
        assert!(poll(&mut body).is_pending());
        for _ in 0..2 {
            tokio::time::advance(RATE_TICK).await;
            assert!(poll(&mut body).is_pending());
        }
        tokio::time::advance(RATE_TICK).await;
        match poll(&mut body) {
            Poll::Ready(BodyError::BelowMinRate {
                received,
                waited,
                min,
            }) => {
                assert_eq!((received, waited, min), (0, Duration::from_secs(3), MIN));
            }
            other => panic!("{other:?}"),
        }
        assert!(body.shared.is_violated());
    }

    #[tokio::test(start_paused = true)]
    async fn frames_between_ticks_do_not_push_the_check_back() {
        let state = ConnState::new(Instant::now());
        let mut body = tracking(&state);
        let mut failed = None;
        // A byte every 500 ms: 2 B/s, far below 100 B/s.
        for step in 1..=20 {
            assert!(poll(&mut body).is_pending());
            tokio::time::advance(Duration::from_millis(500)).await;
            body.count(Instant::now());
            body.since = None;
            body.received += 1;
            if poll(&mut body).is_ready() {
                failed = Some(step);
                break;
            }
        }
        assert!(
            failed.is_some_and(|step| step <= 6),
            "checked at {failed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn time_does_not_count_while_the_http2_connection_window_is_used_up() {
        let state = ConnState::new(Instant::now());
        state.h2_window_used(65_535);
        let mut body = tracking(&state);
        assert!(poll(&mut body).is_pending());
        for _ in 0..10 {
            tokio::time::advance(RATE_TICK).await;
            assert!(poll(&mut body).is_pending(), "the client may not send");
        }
        assert_eq!(body.waited, 0);
        state.h2_window_granted(1);
        tokio::time::advance(RATE_TICK).await;
        assert!(poll(&mut body).is_pending());
        assert_eq!(body.waited, nanos(RATE_TICK));
    }
}

#[cfg(all(test, portcullis_loom))]
#[path = "tests/loom_body.rs"]
mod loom_body;
