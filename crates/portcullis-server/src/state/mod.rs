//! Per-connection phase tracking: which deadline applies to a connection right now.
//!
//! hyper knows when a request head is complete (it calls the service) and when a response is
//! finished (it drops the body), but exposes no deadline that distinguishes "reading a request
//! head" from "idle between requests". portcullis observes both edges itself: the I/O wrapper reports
//! bytes read, the service wrapper reports request start and end, and the connection driver
//! turns that into one deadline.
//!
//! | phase | condition | deadline |
//! |---|---|---|
//! | greeting | no request yet and no HTTP/2 preface | start + header timeout |
//! | head | HTTP/1, bytes of a new request read while idle | first byte + header timeout |
//! | busy | at least one request in flight | none |
//! | idle | no request in flight | end of last request + idle timeout |
//! | stalled write | any phase, the socket has not taken a write | its allowance at the minimum response rate (see `rate`), when earlier |
//!
//! The in-flight count may change on another thread (HTTP/2 streams run on their own tasks),
//! so the state is atomic and the driver's waker is woken when a connection becomes idle.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::loom::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, AtomicWaker, Ordering};

use crate::metrics::CloseReason;
use crate::rate::{MinRate, NO_RATE};

const NONE: u64 = u64::MAX;
/// A request head started but its start time was not read yet (see `on_http1_read`).
const HEAD_UNTIMED: u64 = u64::MAX - 1;

/// About 30 years: the stand-in for "never" when a timeout would overflow `Instant`.
const FAR_FUTURE: Duration = Duration::from_secs(30 * 365 * 24 * 3600);

/// `at + timeout`, saturating at a far-future instant instead of panicking, so that
/// `Duration::MAX` can mean "no deadline".
pub(crate) fn later(at: Instant, timeout: Duration) -> Instant {
    at.checked_add(timeout)
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
}

/// State shared by the I/O wrapper, the service wrapper and the driver of one connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    origin: Instant,
    /// The greeting phase is over: a request started, or the HTTP/2 preface arrived.
    greeted: AtomicBool,
    in_flight: AtomicUsize,
    /// Nanoseconds after `origin` when the last request ended.
    idle_since: AtomicU64,
    /// Nanoseconds after `origin` of the first byte of the request head being read, or `NONE`.
    head_since: AtomicU64,
    waker: AtomicWaker,
    /// The task that drives the connection (the one that created this state), if known.
    driver_task: Option<tokio::task::Id>,
    /// When the write the socket has not taken must be taken, or `NONE`. Written and read on
    /// the driver's task only (the connection's I/O is polled there).
    write_deadline: AtomicU64,
    /// The response rate an HTTP/1 response asked for (packed, `NO_RATE` when none): replaces
    /// the connection's for its writes until the next request starts.
    write_rate: AtomicU64,
    /// HTTP/2: the connection window the client has left, in bytes (may go below zero by a
    /// frame in flight).
    h2_window: AtomicI64,
    /// Why the connection is closing, when a request decided it (`reason as usize + 1`, or 0).
    close_hint: AtomicUsize,
    /// The connection's minimum response rate, unless a request asks for its own.
    response_rate: MinRate,
    /// A request with a body is in flight (until no request is left): its reads go through
    /// a smaller buffer (`io.rs`).
    body_in_flight: AtomicBool,
    /// The connection speaks HTTP/2.
    http2: AtomicBool,
    /// HTTP/2: DATA bytes the response bodies handed to h2 (stream tasks add), and DATA bytes
    /// written to the socket (the connection's I/O adds). The difference waits in h2's buffers
    /// for flow-control window the client does not give.
    h2_handed: AtomicU64,
    h2_sent: AtomicU64,
    /// HTTP/2: when that backlog must be gone, or `NONE`; and the handed bytes it accounts for.
    /// Written and read by the driver only.
    h2_backlog_deadline: AtomicU64,
    h2_backlog_seen: AtomicU64,
}

/// A point in a connection's life, on its own cheap clock: nanoseconds since it was accepted.
/// Arithmetic saturates, so `u64::MAX` (about 584 years) serves as "never".
pub(crate) type Nanos = u64;

/// A duration on the connection clock, saturating.
pub(crate) const fn nanos(duration: Duration) -> Nanos {
    let n = duration.as_nanos();
    if n > u64::MAX as u128 {
        u64::MAX
    } else {
        n as u64
    }
}

/// The deadline in force and what passing it means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Deadline {
    pub(crate) at: Nanos,
    pub(crate) reason: CloseReason,
}

impl ConnState {
    /// A connection without a minimum response rate (the tests').
    #[cfg(test)]
    pub(crate) fn new(origin: Instant) -> Arc<Self> {
        Self::with_response_rate(origin, MinRate::OFF)
    }

    /// A connection whose responses are held to `rate`.
    pub(crate) fn with_response_rate(origin: Instant, rate: MinRate) -> Arc<Self> {
        Arc::new(Self {
            origin,
            greeted: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            waker: AtomicWaker::new(),
            driver_task: tokio::task::try_id(),
            write_deadline: AtomicU64::new(NONE),
            write_rate: AtomicU64::new(NO_RATE),
            h2_window: AtomicI64::new(crate::rate::H2_INITIAL_WINDOW),
            close_hint: AtomicUsize::new(0),
            response_rate: rate,
            body_in_flight: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            h2_handed: AtomicU64::new(0),
            h2_sent: AtomicU64::new(0),
            h2_backlog_deadline: AtomicU64::new(NONE),
            h2_backlog_seen: AtomicU64::new(0),
        })
    }

    fn nanos_since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos())
            .unwrap_or(HEAD_UNTIMED - 1)
    }

    /// Whether the greeting is over: a request started, or the HTTP/2 preface arrived.
    pub(crate) fn is_greeted(&self) -> bool {
        self.greeted.load(Ordering::Acquire)
    }

    /// A request with a body started.
    pub(crate) fn body_started(&self) {
        self.body_in_flight.store(true, Ordering::Relaxed);
    }

    /// Whether a request with a body is in flight.
    #[inline]
    pub(crate) fn is_body_in_flight(&self) -> bool {
        self.body_in_flight.load(Ordering::Relaxed)
    }

    /// Whether a request is in flight.
    #[inline]
    pub(crate) fn is_busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    /// Bytes of a new HTTP/1 request arrived. Only the first call while idle counts.
    pub(crate) fn on_http1_read(&self) {
        if self.greeted.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            // The time is read only if the driver needs it: usually the whole head is in this
            // read and the request starts before the driver looks.
            self.head_since.store(HEAD_UNTIMED, Ordering::Relaxed);
        }
    }

    /// The HTTP/2 preface arrived: the connection is now idle until a stream opens.
    pub(crate) fn on_http2_preface(&self) {
        let now = self.nanos_since_origin(Instant::now());
        self.idle_since.store(now, Ordering::Relaxed);
        self.http2.store(true, Ordering::Relaxed);
        self.greeted.store(true, Ordering::Release);
    }

    /// The service was called: a request head is complete.
    pub(crate) fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_since.store(NONE, Ordering::Relaxed);
        // The previous response's own rate held until it was written (its tail is written
        // after its request ended); a new request starts with the connection's.
        if self.write_rate.load(Ordering::Relaxed) != NO_RATE {
            self.write_rate.store(NO_RATE, Ordering::Relaxed);
        }
        self.greeted.store(true, Ordering::Release);
        InFlight(Some(Arc::clone(self)))
    }

    fn request_ended(&self) {
        // Record the end time before the count can read zero, so a driver that sees zero
        // never computes an idle deadline from a stale time.
        let now = self.nanos_since_origin(Instant::now());
        self.idle_since.fetch_max(now, Ordering::Release);
        if self.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            if self.body_in_flight.load(Ordering::Relaxed) {
                self.body_in_flight.store(false, Ordering::Relaxed);
            }
            if !self.on_driver_task() {
                self.waker.wake();
            }
        }
    }

    /// Whether this runs on the driver's own task. There the driver is in the middle of
    /// polling the connection and reads the state right after, so waking it would only cost
    /// an extra poll (an HTTP/1 response ends on the driver's task; an HTTP/2 stream ends on
    /// its own).
    fn on_driver_task(&self) -> bool {
        self.driver_task.is_some() && tokio::task::try_id() == self.driver_task
    }

    /// Registers the driver's waker, to be woken when the connection becomes idle.
    pub(crate) fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }

    /// The deadline in force now, if any: the phase's, or a stalled write's when earlier.
    pub(crate) fn deadline(&self, header_timeout: Nanos, idle_timeout: Nanos) -> Option<Deadline> {
        let phase = self.phase_deadline(header_timeout, idle_timeout);
        let Some(stalled) = self.stall_deadline() else {
            return phase;
        };
        match phase {
            // A response still being written is not idle: its write deadline governs.
            Some(phase) if phase.at <= stalled.at && phase.reason != CloseReason::IdleTimeout => {
                Some(phase)
            }
            _ => Some(stalled),
        }
    }

    /// The deadline of what the client has not taken yet: a write the socket did not take,
    /// or (HTTP/2) response data waiting in h2's buffers for window the client does not give.
    #[inline]
    pub(crate) fn stall_deadline(&self) -> Option<Deadline> {
        let mut at = self.write_deadline.load(Ordering::Relaxed);
        if self.http2.load(Ordering::Relaxed) {
            at = at.min(self.h2_backlog());
        }
        (at != NONE).then_some(Deadline {
            at,
            reason: CloseReason::MinResponseRate,
        })
    }

    /// HTTP/2: the bodies handed `bytes` of DATA to h2.
    pub(crate) fn h2_handed(&self, bytes: u64) {
        self.h2_handed.fetch_add(bytes, Ordering::Relaxed);
    }

    /// HTTP/2: a stalled stream was reset, and h2 dropped the data it had buffered. Which of
    /// the backlog was that stream's is not known: the whole backlog is forgiven (the other
    /// streams' data still waiting is timed again from the next byte handed on).
    pub(crate) fn h2_stream_reset(&self) {
        let handed = self.h2_handed.load(Ordering::Relaxed);
        self.h2_sent.fetch_max(handed, Ordering::Relaxed);
    }

    /// HTTP/2: `bytes` of DATA went to the socket.
    pub(crate) fn h2_sent(&self, bytes: u32) {
        self.h2_sent.fetch_add(u64::from(bytes), Ordering::Relaxed);
    }

    /// HTTP/2: when the data waiting in h2's buffers must be gone. The backlog gets the
    /// allowance of its size when it appears, and each byte handed on while it lasts extends
    /// it at the rate (sent bytes earn nothing), as a stalled write does; the deadline ends
    /// with the backlog. The stream tasks reset a stream whose body they see stall
    /// (`rate/stream.rs`); this bounds what they cannot see: a last frame, or a frame before a
    /// body that waits, stuck on a window the client keeps shut. The connection's own rate
    /// applies (a route's own response rate holds for its stream only). Out of line: HTTP/1
    /// never calls it.
    #[inline(never)]
    fn h2_backlog(&self) -> Nanos {
        let handed = self.h2_handed.load(Ordering::Relaxed);
        let sent = self.h2_sent.load(Ordering::Relaxed);
        let at = self.h2_backlog_deadline.load(Ordering::Relaxed);
        let rate = self.response_rate;
        if handed <= sent || rate.is_off() {
            if at != NONE {
                self.h2_backlog_deadline.store(NONE, Ordering::Relaxed);
            }
            self.h2_backlog_seen.store(handed, Ordering::Relaxed);
            return NONE;
        }
        let at = if at == NONE {
            self.now().saturating_add(rate.allowance(handed - sent))
        } else {
            let seen = self.h2_backlog_seen.load(Ordering::Relaxed);
            at.saturating_add(rate.at_rate(handed.saturating_sub(seen)))
        };
        let at = at.min(NONE - 1);
        self.h2_backlog_seen.store(handed, Ordering::Relaxed);
        self.h2_backlog_deadline.store(at, Ordering::Relaxed);
        at
    }

    /// Some of a stalled write was taken: what is left may take at most its own allowance
    /// from now (bytes already taken earn nothing).
    pub(crate) fn cap_write_deadline(&self, at: Nanos) {
        let current = self.write_deadline.load(Ordering::Relaxed);
        if current != NONE && at < current {
            self.set_write_deadline(at);
        }
    }

    /// A write the socket did not take must be taken by `at`.
    pub(crate) fn set_write_deadline(&self, at: Nanos) {
        self.write_deadline
            .store(at.min(NONE - 1), Ordering::Relaxed);
    }

    /// Bytes joined the stalled write: `by` more.
    pub(crate) fn extend_write_deadline(&self, by: Nanos) {
        let at = self.write_deadline.load(Ordering::Relaxed);
        if at != NONE {
            self.set_write_deadline(at.saturating_add(by));
        }
    }

    /// The socket took everything it was given.
    pub(crate) fn clear_write_deadline(&self) {
        self.write_deadline.store(NONE, Ordering::Relaxed);
    }

    /// The response rate the connection's writes are held to: a request's own, or the
    /// connection's.
    pub(crate) fn write_rate(&self) -> MinRate {
        MinRate::unpack(self.write_rate.load(Ordering::Relaxed)).unwrap_or(self.response_rate)
    }

    /// The connection's minimum response rate.
    pub(crate) fn response_rate(&self) -> MinRate {
        self.response_rate
    }

    /// An HTTP/1 response asked for its own response rate: it holds the connection's writes
    /// until the next request starts (the response's tail is written after its request
    /// ended). Of two, the lower rate wins.
    pub(crate) fn override_write_rate(&self, rate: MinRate) {
        let packed = rate.pack();
        let _ = self
            .write_rate
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |current| {
                let lower = MinRate::unpack(current)
                    .is_none_or(|current| rate.bytes_per_second() < current.bytes_per_second());
                lower.then_some(packed)
            });
    }

    /// HTTP/2: the client sent a DATA frame of `bytes`.
    pub(crate) fn h2_window_used(&self, bytes: u32) {
        self.h2_window
            .fetch_sub(i64::from(bytes), Ordering::Relaxed);
    }

    /// HTTP/2: the server gave `bytes` of connection window back.
    pub(crate) fn h2_window_granted(&self, bytes: u32) {
        self.h2_window
            .fetch_add(i64::from(bytes), Ordering::Relaxed);
    }

    /// HTTP/2: whether the client may not send any DATA now. Always false on HTTP/1.
    pub(crate) fn h2_window_exhausted(&self) -> bool {
        self.h2_window.load(Ordering::Relaxed) <= 0
    }

    /// A request decided why the connection closes (a body below its rate, say).
    pub(crate) fn hint_close(&self, reason: CloseReason) {
        self.close_hint
            .store(reason as usize + 1, Ordering::Relaxed);
    }

    /// The reason a request gave for the close, if any.
    pub(crate) fn close_hint(&self) -> Option<CloseReason> {
        match self.close_hint.load(Ordering::Relaxed) {
            0 => None,
            n => CloseReason::ALL.get(n - 1).copied(),
        }
    }

    /// The deadline of the connection's phase, if any.
    fn phase_deadline(&self, header_timeout: Nanos, idle_timeout: Nanos) -> Option<Deadline> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        if !self.greeted.load(Ordering::Acquire) {
            return Some(Deadline {
                at: header_timeout,
                reason: CloseReason::HeaderTimeout,
            });
        }
        let mut head = self.head_since.load(Ordering::Relaxed);
        if head == HEAD_UNTIMED {
            // Read by the driver right after the read that started the head (HTTP/1 reads
            // happen on the driver's task), so this is the head's start time.
            head = self.now();
            let _ = self.head_since.compare_exchange(
                HEAD_UNTIMED,
                head,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if head != NONE {
            return Some(Deadline {
                at: head.saturating_add(header_timeout),
                reason: CloseReason::HeaderTimeout,
            });
        }
        Some(Deadline {
            at: self
                .idle_since
                .load(Ordering::Acquire)
                .saturating_add(idle_timeout),
            reason: CloseReason::IdleTimeout,
        })
    }

    /// Now, on this connection's clock.
    pub(crate) fn now(&self) -> Nanos {
        self.nanos_since_origin(Instant::now())
    }

    /// The instant of a point on this connection's clock.
    pub(crate) fn instant(&self, at: Nanos) -> Instant {
        later(self.origin, Duration::from_nanos(at))
    }
}

/// Marks one request in flight until dropped (when its response body ends or is dropped).
#[derive(Debug)]
pub(crate) struct InFlight(Option<Arc<ConnState>>);

impl InFlight {
    /// The connection's state, until the request ends.
    pub(crate) fn state(&self) -> Option<&Arc<ConnState>> {
        self.0.as_ref()
    }

    /// Ends the request now rather than at drop.
    pub(crate) fn end(&mut self) {
        if let Some(state) = self.0.take() {
            state.request_ended();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(all(test, portcullis_loom))]
#[path = "tests/loom_state.rs"]
mod loom_state;

#[cfg(all(test, not(portcullis_loom)))]
mod tests {
    use super::*;

    const HEADER_D: Duration = Duration::from_secs(10);
    const IDLE_D: Duration = Duration::from_secs(60);
    const HEADER: Nanos = nanos(HEADER_D);
    const IDLE: Nanos = nanos(IDLE_D);

    #[tokio::test(start_paused = true)]
    async fn phases_give_their_deadlines() {
        let start = Instant::now();
        let state = ConnState::new(start);
        let greeting = state.deadline(HEADER, IDLE).expect("greeting deadline");
        assert_eq!(state.instant(greeting.at), start + HEADER_D);
        assert_eq!(greeting.reason, CloseReason::HeaderTimeout);

        // Reads during the greeting do not move its deadline.
        tokio::time::advance(Duration::from_secs(3)).await;
        state.on_http1_read();
        assert_eq!(
            state.deadline(HEADER, IDLE).map(|d| state.instant(d.at)),
            Some(start + HEADER_D)
        );

        let mut request = state.request_started();
        assert_eq!(state.deadline(HEADER, IDLE), None, "busy has no deadline");

        tokio::time::advance(Duration::from_secs(100)).await;
        request.end();
        let idle = state.deadline(HEADER, IDLE).expect("idle deadline");
        assert_eq!(idle.reason, CloseReason::IdleTimeout);
        assert_eq!(state.instant(idle.at), Instant::now() + IDLE_D);

        tokio::time::advance(Duration::from_secs(30)).await;
        state.on_http1_read();
        let head = state.deadline(HEADER, IDLE).expect("head deadline");
        assert_eq!(head.reason, CloseReason::HeaderTimeout);
        assert_eq!(state.instant(head.at), Instant::now() + HEADER_D);

        // Further bytes of the same head do not extend it.
        tokio::time::advance(Duration::from_secs(5)).await;
        state.on_http1_read();
        assert_eq!(state.deadline(HEADER, IDLE), Some(head));
    }

    #[tokio::test(start_paused = true)]
    async fn http2_preface_starts_idle_and_streams_overlap() {
        let state = ConnState::new(Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        state.on_http2_preface();
        assert_eq!(
            state
                .deadline(HEADER, IDLE)
                .map(|d| (state.instant(d.at), d.reason)),
            Some((Instant::now() + IDLE_D, CloseReason::IdleTimeout))
        );
        let first = state.request_started();
        let second = state.request_started();
        drop(first);
        assert_eq!(state.deadline(HEADER, IDLE), None, "one stream still open");
        tokio::time::advance(Duration::from_secs(7)).await;
        drop(second);
        assert_eq!(
            state.deadline(HEADER, IDLE).map(|d| state.instant(d.at)),
            Some(Instant::now() + IDLE_D)
        );
        assert_eq!(state.in_flight.load(Ordering::Acquire), 0);
    }
}
