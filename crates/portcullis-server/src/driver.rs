//! Drives one hyper connection under portcullis's deadlines, drain and force signals.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use crate::metrics::CloseReason;
use crate::state::{ConnState, Deadline, Nanos, nanos};
use portcullis_health::{Actions, OverloadWatch};
use portcullis_shutdown::PhaseWatch;

/// How long a connection that portcullis asked to close gracefully may stay open once it has no
/// request in flight. HTTP/2 needs it: the GOAWAY handshake waits for a PING answer that a
/// dead peer never sends. It is also how long a connection that has not sent its first request
/// yet may take to send it once the drain has begun.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(1);
const GRACE: Nanos = nanos(CLOSE_GRACE);

/// A connection future that can be asked to finish gracefully.
pub(crate) trait GracefulConnection: Future {
    /// Stop taking new requests, finish the ones in flight, then complete.
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S, E, B> GracefulConnection
    for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S::Future: 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper_util::server::conn::auto::HttpServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(self);
    }
}

/// A connection on the heap, as the server drives hyper's: moving the driver then moves a
/// pointer, not the connection's kilobytes.
impl<C: GracefulConnection + ?Sized> GracefulConnection for Pin<Box<C>> {
    fn graceful_shutdown(self: Pin<&mut Self>) {
        self.get_mut().as_mut().graceful_shutdown();
    }
}

/// What the driver needs to know of the error a connection ended with.
pub(crate) trait ConnError: std::fmt::Display {
    /// Whether the peer sent what is not HTTP: hyper answered 400 (or 431 for a head too
    /// large, 414 for a target too long) and closed.
    fn is_malformed(&self) -> bool;
}

impl ConnError for Box<dyn std::error::Error + Send + Sync> {
    fn is_malformed(&self) -> bool {
        self.downcast_ref::<hyper::Error>()
            .is_some_and(|error| error.is_parse() || error.is_parse_too_large())
    }
}

impl ConnError for std::io::Error {
    fn is_malformed(&self) -> bool {
        false
    }
}

pin_project! {
    /// Completes with the reason the connection closed.
    #[project = DriverProj]
    pub(crate) struct Driver<C> {
        #[pin]
        conn: C,
        #[pin]
        sleep: Sleep,
        // What `sleep` is set to, on the connection clock.
        armed: Nanos,
        // The waker `sleep` was last polled with; `None` after a re-arm.
        sleep_waker: Option<Waker>,
        state: Arc<ConnState>,
        header_timeout: Nanos,
        idle_timeout: Nanos,
        #[pin]
        phase: PhaseWatch,
        // The overload manager's actions: shorter timeouts, idle connections reclaimed, no
        // keep-alive.
        overload: OverloadWatch,
        // Set when the drain began: until then a connection with no request yet may still
        // send its first one.
        drain_greeting_limit: Option<Nanos>,
        // Set once portcullis asked hyper to finish gracefully; the reason to report when it does.
        closing: Option<CloseReason>,
        // While closing and idle: when the grace ends.
        grace_until: Option<Nanos>,
    }
}

impl<C> Driver<C> {
    pub(crate) fn new(
        conn: C,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        phase: PhaseWatch,
        overload: OverloadWatch,
    ) -> Self {
        // Armed at the greeting deadline, the first one the connection has.
        let armed = nanos(header_timeout);
        Self {
            conn,
            sleep: tokio::time::sleep_until(state.instant(armed)),
            armed,
            sleep_waker: None,
            state,
            header_timeout: nanos(header_timeout),
            idle_timeout: nanos(idle_timeout),
            phase,
            overload,
            drain_greeting_limit: None,
            closing: None,
            grace_until: None,
        }
    }
}

impl<C, T, E> Future for Driver<C>
where
    C: GracefulConnection<Output = Result<T, E>>,
    E: ConnError,
{
    type Output = CloseReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut this = self.project();
        loop {
            // One atomic load each per poll while nothing changes.
            let phase = this.phase.current();
            let actions = this.overload.current();
            if phase.is_forced() {
                return Poll::Ready(CloseReason::DrainForced);
            }
            if phase.is_draining() && this.drain_greeting_limit.is_none() {
                *this.drain_greeting_limit = Some(this.state.now().saturating_add(GRACE));
            }
            if let Poll::Ready(reason) = poll_connection(&mut this, cx) {
                return Poll::Ready(reason);
            }
            // About to sleep: make sure a phase change wakes this task. A connection that
            // finishes within one poll never registers.
            while this.phase.as_mut().poll_change(cx).is_ready() {}
            while this.overload.poll_change(cx).is_ready() {}
            if this.phase.current() == phase && this.overload.current() == actions {
                return Poll::Pending;
            }
        }
    }
}

/// Polls the timer, remembering the waker it now holds. tokio's cooperative budget can make
/// the poll return `Pending` without registering anything (tokio reschedules the task then);
/// such a poll is not remembered, so the next poll registers for real.
fn poll_sleep(
    sleep: Pin<&mut Sleep>,
    sleep_waker: &mut Option<Waker>,
    cx: &mut Context<'_>,
) -> Poll<()> {
    let had_budget = tokio::task::coop::has_budget_remaining();
    let polled = sleep.poll(cx);
    *sleep_waker = (polled.is_pending() && had_budget).then(|| cx.waker().clone());
    polled
}

/// Polls the connection and its deadline once the phase is handled.
fn poll_connection<C, T, E>(this: &mut DriverProj<'_, C>, cx: &mut Context<'_>) -> Poll<CloseReason>
where
    C: GracefulConnection<Output = Result<T, E>>,
    E: ConnError,
{
    loop {
        // Once draining, ask hyper to finish as soon as the connection knows its protocol.
        // Earlier, hyper-util would drop a request that is already on its way.
        if this.drain_greeting_limit.is_some() && this.closing.is_none() && this.state.is_greeted()
        {
            *this.closing = Some(CloseReason::Complete);
            this.conn.as_mut().graceful_shutdown();
        }
        match this.conn.as_mut().poll(cx) {
            Poll::Ready(Ok(_)) => {
                let reason = this.closing.or_else(|| this.state.close_hint());
                return Poll::Ready(reason.unwrap_or(CloseReason::Complete));
            }
            Poll::Ready(Err(error)) => {
                // A request that decided the close (a body below its rate) names the reason.
                if let Some(reason) = this.closing.or_else(|| this.state.close_hint()) {
                    return Poll::Ready(reason);
                }
                tracing::debug!(%error, "connection ended with an error");
                return Poll::Ready(if error.is_malformed() {
                    CloseReason::Malformed
                } else {
                    CloseReason::Error
                });
            }
            Poll::Pending => {}
        }

        // Register before reading the state, so an HTTP/2 stream ending on another thread
        // after the read still wakes this task.
        this.state.register(cx.waker());
        let actions = this.overload.current();
        // Overload: a connection with a request in flight is not kept alive after it (HTTP/1
        // also gets `Connection: close` from the service; HTTP/2 gets GOAWAY). Loop to let the
        // connection act on it.
        if actions.keep_alive_off()
            && this.closing.is_none()
            && this.state.is_greeted()
            && this.state.is_busy()
        {
            *this.closing = Some(CloseReason::Overload);
            this.conn.as_mut().graceful_shutdown();
            continue;
        }
        let mut idle_timeout = *this.idle_timeout;
        let deadline = match *this.closing {
            Some(reason) => {
                let graceful = if this.state.is_busy() {
                    // Requests still in flight finish; the drain deadline bounds them.
                    *this.grace_until = None;
                    None
                } else {
                    let state = &this.state;
                    let at = *this
                        .grace_until
                        .get_or_insert_with(|| state.now().saturating_add(GRACE));
                    Some(Deadline { at, reason })
                };
                // A client that stopped reading is not waited for while closing either.
                match (graceful, this.state.stall_deadline()) {
                    (Some(g), Some(s)) if s.at < g.at => Some(s),
                    (None, stalled) => stalled,
                    (graceful, _) => graceful,
                }
            }
            None => {
                let mut header_timeout = *this.header_timeout;
                if !actions.is_none() {
                    (header_timeout, idle_timeout) =
                        shortened(actions, header_timeout, idle_timeout);
                }
                let deadline = this.state.deadline(header_timeout, idle_timeout);
                match (*this.drain_greeting_limit, deadline) {
                    (Some(limit), Some(d)) if limit < d.at && !this.state.is_greeted() => {
                        Some(Deadline {
                            at: limit,
                            reason: CloseReason::Complete,
                        })
                    }
                    _ => deadline,
                }
            }
        };
        let Some(deadline) = deadline else {
            return Poll::Pending;
        };
        // Re-arm only when the deadline moved earlier. A later deadline leaves the timer
        // early; it fires, the deadline is recomputed and the timer re-armed. That keeps
        // timer-wheel updates to about one per timeout period instead of one per request.
        if *this.armed > deadline.at {
            this.sleep.as_mut().reset(this.state.instant(deadline.at));
            *this.armed = deadline.at;
            *this.sleep_waker = None;
        }
        // The timer already holds this task's waker and has not fired: nothing to do.
        if this
            .sleep_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
            && !this.sleep.is_elapsed()
        {
            return Poll::Pending;
        }
        if poll_sleep(this.sleep.as_mut(), this.sleep_waker, cx).is_pending() {
            return Poll::Pending;
        }
        if this.state.now() < deadline.at {
            // Fired at an earlier deadline: move on to the current one.
            this.sleep.as_mut().reset(this.state.instant(deadline.at));
            *this.armed = deadline.at;
            *this.sleep_waker = None;
            if poll_sleep(this.sleep.as_mut(), this.sleep_waker, cx).is_pending() {
                return Poll::Pending;
            }
        }
        // The deadline passed.
        if this.closing.is_some() {
            return Poll::Ready(deadline.reason);
        }
        match deadline.reason {
            CloseReason::IdleTimeout => {
                // Idle: close politely (HTTP/2 GOAWAY; an idle HTTP/1 connection closes at
                // once), with a short grace before dropping it. Loop to let the connection
                // act on it. Idle only for the timeout the overload manager shortened: it
                // reclaimed the connection.
                tracing::trace!("closing idle connection");
                *this.closing = Some(if idle_timeout < *this.idle_timeout {
                    CloseReason::Overload
                } else {
                    CloseReason::IdleTimeout
                });
                this.conn.as_mut().graceful_shutdown();
            }
            reason => {
                tracing::debug!(reason = reason.as_str(), "closing connection at deadline");
                return Poll::Ready(reason);
            }
        }
    }
}

/// The header and idle timeouts the overload manager's `actions` leave.
#[inline(never)]
fn shortened(actions: Actions, header: Nanos, idle: Nanos) -> (Nanos, Nanos) {
    (
        nanos(actions.header_timeout(Duration::from_nanos(header))),
        nanos(actions.idle_timeout(Duration::from_nanos(idle))),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_health::OverloadSignal;
    use portcullis_shutdown::{Lifecycle, ShutdownPhase};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// A connection that never ends by itself, unless graceful shutdown was asked and nothing
    /// is in flight, like hyper; counts graceful shutdown requests.
    struct FakeConn {
        state: Arc<ConnState>,
        shutdowns: Arc<AtomicUsize>,
        /// Whether it honours graceful shutdown (an HTTP/2 peer that never answers the PING
        /// does not).
        honours_shutdown: bool,
        /// Whether its next poll uses up the task's cooperative budget, as a busy HTTP/2
        /// connection or a long response write can.
        burn_budget: bool,
    }

    impl Future for FakeConn {
        type Output = Result<(), std::io::Error>;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if std::mem::take(&mut self.burn_budget) {
                while let Poll::Ready(progress) = tokio::task::coop::poll_proceed(cx) {
                    progress.made_progress();
                }
            }
            if self.honours_shutdown
                && self.shutdowns.load(Ordering::SeqCst) > 0
                && !self.state.is_busy()
            {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    impl GracefulConnection for FakeConn {
        fn graceful_shutdown(self: Pin<&mut Self>) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
    }

    const HEADER: Duration = Duration::from_secs(10);
    const IDLE: Duration = Duration::from_secs(60);

    fn driver(
        honours_shutdown: bool,
    ) -> (
        Driver<FakeConn>,
        Arc<ConnState>,
        Arc<AtomicUsize>,
        Lifecycle,
    ) {
        let state = ConnState::new(Instant::now());
        let shutdowns = Arc::new(AtomicUsize::new(0));
        let phase = Lifecycle::new();
        let conn = FakeConn {
            state: Arc::clone(&state),
            shutdowns: Arc::clone(&shutdowns),
            honours_shutdown,
            burn_budget: false,
        };
        let driver = Driver::new(
            conn,
            Arc::clone(&state),
            HEADER,
            IDLE,
            phase.watch(),
            OverloadSignal::new().watch(),
        );
        (driver, state, shutdowns, phase)
    }

    #[tokio::test(start_paused = true)]
    async fn silent_connection_closes_at_the_header_timeout() {
        let (driver, ..) = driver(true);
        let started = Instant::now();
        assert_eq!(driver.await, CloseReason::HeaderTimeout);
        assert_eq!(started.elapsed(), HEADER);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connection_closes_at_the_idle_timeout() {
        let (driver, state, shutdowns, ..) = driver(true);
        drop(state.request_started());
        let idle_from = Instant::now();
        assert_eq!(driver.await, CloseReason::IdleTimeout);
        assert_eq!(idle_from.elapsed(), IDLE);
        assert_eq!(shutdowns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_deadline_holds_when_the_budget_ran_out_on_the_first_poll() {
        let (mut driver, state, ..) = driver(true);
        drop(state.request_started());
        driver.conn.burn_budget = true;
        let idle_from = Instant::now();
        let closed = tokio::time::timeout(IDLE * 2, driver).await;
        assert_eq!(
            closed,
            Ok(CloseReason::IdleTimeout),
            "the idle timer was armed"
        );
        assert_eq!(idle_from.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn peer_ignoring_goaway_is_dropped_after_the_grace() {
        let (driver, state, ..) = driver(false);
        drop(state.request_started());
        let idle_from = Instant::now();
        assert_eq!(driver.await, CloseReason::IdleTimeout);
        assert_eq!(idle_from.elapsed(), IDLE + CLOSE_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_closes_an_idle_connection_within_the_grace_even_if_the_peer_ignores_it() {
        let (driver, state, shutdowns, phase) = driver(false);
        drop(state.request_started());
        let task = tokio::spawn(driver);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let drain_from = Instant::now();
        phase.advance(ShutdownPhase::Drain);
        assert_eq!(task.await.expect("driver"), CloseReason::Complete);
        assert_eq!(drain_from.elapsed(), CLOSE_GRACE);
        assert_eq!(shutdowns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_lets_in_flight_requests_finish_past_the_grace() {
        let (driver, state, _shutdowns, phase) = driver(false);
        let request = state.request_started();
        let task = tokio::spawn(driver);
        phase.advance(ShutdownPhase::Drain);
        tokio::time::sleep(CLOSE_GRACE * 5).await;
        assert!(
            !task.is_finished(),
            "a busy connection is not cut at the grace"
        );
        drop(request);
        let done_from = Instant::now();
        assert_eq!(task.await.expect("driver"), CloseReason::Complete);
        assert_eq!(done_from.elapsed(), CLOSE_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_waits_briefly_for_the_first_request_of_a_new_connection() {
        let (driver, _state, shutdowns, phase) = driver(true);
        let task = tokio::spawn(driver);
        let drain_from = Instant::now();
        phase.advance(ShutdownPhase::Drain);
        assert_eq!(task.await.expect("driver"), CloseReason::Complete);
        assert_eq!(drain_from.elapsed(), CLOSE_GRACE);
        assert_eq!(
            shutdowns.load(Ordering::SeqCst),
            0,
            "hyper is not interrupted mid-greeting"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn force_closes_at_once() {
        let (driver, state, _shutdowns, phase) = driver(false);
        let _request = state.request_started();
        let task = tokio::spawn(driver);
        phase.advance(ShutdownPhase::Drain);
        tokio::time::sleep(Duration::from_secs(3)).await;
        phase.advance(ShutdownPhase::Forced);
        assert_eq!(task.await.expect("driver"), CloseReason::DrainForced);
    }

    /// A driver like `driver(true)` that follows `signal`.
    fn overloaded(signal: &OverloadSignal) -> (Driver<FakeConn>, Arc<ConnState>, Arc<AtomicUsize>) {
        let (mut driver, state, shutdowns, _phase) = driver(true);
        driver.overload = signal.watch();
        (driver, state, shutdowns)
    }

    #[tokio::test(start_paused = true)]
    async fn reclaim_closes_idle_connections_longest_idle_first() {
        let signal = OverloadSignal::new();
        let (old, old_state, _) = overloaded(&signal);
        drop(old_state.request_started());
        let old = tokio::spawn(old);
        tokio::time::sleep(Duration::from_secs(20)).await;
        let (young, young_state, _) = overloaded(&signal);
        drop(young_state.request_started());
        let young = tokio::spawn(young);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Round 1: idle longer than IDLE / 4 = 15 s: only the old one.
        let reclaimed = Instant::now();
        signal.set(Actions::new(true, 1, false, false, 0));
        assert_eq!(old.await.expect("driver"), CloseReason::Overload);
        assert_eq!(reclaimed.elapsed(), Duration::ZERO, "closed at once");
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!young.is_finished(), "idle for 2 s only");
        // The last round: every idle connection.
        signal.set(Actions::new(true, 4, false, false, 0));
        assert_eq!(young.await.expect("driver"), CloseReason::Overload);
    }

    #[tokio::test(start_paused = true)]
    async fn without_keep_alive_a_busy_connection_closes_after_its_request() {
        let signal = OverloadSignal::new();
        let (driver, state, shutdowns) = overloaded(&signal);
        let request = state.request_started();
        let task = tokio::spawn(driver);
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal.set(Actions::new(true, 0, false, false, 0));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            shutdowns.load(Ordering::SeqCst),
            1,
            "asked to finish gracefully"
        );
        assert!(!task.is_finished(), "the request in flight finishes");
        drop(request);
        assert_eq!(task.await.expect("driver"), CloseReason::Overload);
    }

    #[tokio::test(start_paused = true)]
    async fn shrunk_timeouts_apply_to_sleeping_connections_and_recover() {
        let signal = OverloadSignal::new();
        let (driver, state, _) = overloaded(&signal);
        drop(state.request_started());
        let idle_from = Instant::now();
        let task = tokio::spawn(driver);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Half way: the 60 s idle timeout becomes 30 s.
        signal.set(Actions::new(
            false,
            0,
            false,
            false,
            portcullis_health::overload::SCALE_STEPS / 2,
        ));
        assert_eq!(task.await.expect("driver"), CloseReason::Overload);
        assert_eq!(idle_from.elapsed(), IDLE / 2);

        // Back to normal before the shortened deadline: the configured one holds again.
        let (driver, state, _) = overloaded(&signal);
        drop(state.request_started());
        let idle_from = Instant::now();
        let task = tokio::spawn(driver);
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal.set(Actions::NONE);
        assert_eq!(task.await.expect("driver"), CloseReason::IdleTimeout);
        assert_eq!(idle_from.elapsed(), IDLE);
    }

    #[tokio::test(start_paused = true)]
    async fn huge_timeouts_do_not_overflow() {
        let state = ConnState::new(Instant::now());
        let conn = FakeConn {
            state: Arc::clone(&state),
            shutdowns: Arc::new(AtomicUsize::new(0)),
            honours_shutdown: true,
            burn_budget: false,
        };
        let never = Lifecycle::new();
        let driver = Driver::new(
            conn,
            state,
            Duration::MAX,
            Duration::MAX,
            never.watch(),
            OverloadSignal::new().watch(),
        );
        let result = tokio::time::timeout(Duration::from_secs(3600), driver).await;
        assert!(result.is_err(), "no deadline within the hour");
    }
}
