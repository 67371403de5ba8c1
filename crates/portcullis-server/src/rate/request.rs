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
    /// than the rate asks for, the next poll yields [`BodyError::BelowMinRate`], the request is
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
                let next = now + RATE_TICK;
                match &mut self.tick {
                    Some(tick) => tick.as_mut().reset(next),
                    None => self.tick = Some(Box::pin(tokio::time::sleep_until(next))),
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
