//! Drives one hyper connection under keel's deadlines, drain and force signals.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::metrics::CloseReason;
use crate::state::ConnState;

/// How long an idle connection that was asked to close gracefully (HTTP/2 GOAWAY) may take
/// to do so before it is dropped.
const IDLE_CLOSE_GRACE: Duration = Duration::from_secs(1);

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

pin_project! {
    /// Completes with the reason the connection closed.
    pub(crate) struct Driver<C> {
        #[pin]
        conn: C,
        #[pin]
        sleep: Sleep,
        // What `sleep` is set to; `None` until the first deadline.
        armed: Option<Instant>,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        #[pin]
        drain: WaitForCancellationFutureOwned,
        #[pin]
        force: WaitForCancellationFutureOwned,
        draining: bool,
        // Set once keel decided to close: the connection is finishing gracefully.
        closing: Option<CloseReason>,
    }
}

impl<C> Driver<C> {
    pub(crate) fn new(
        conn: C,
        state: Arc<ConnState>,
        header_timeout: Duration,
        idle_timeout: Duration,
        drain: WaitForCancellationFutureOwned,
        force: WaitForCancellationFutureOwned,
    ) -> Self {
        Self {
            conn,
            sleep: tokio::time::sleep_until(Instant::now() + header_timeout),
            armed: None,
            state,
            header_timeout,
            idle_timeout,
            drain,
            force,
            draining: false,
            closing: None,
        }
    }
}

impl<C, T, E> Future for Driver<C>
where
    C: GracefulConnection<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    type Output = CloseReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut this = self.project();
        if this.force.as_mut().poll(cx).is_ready() {
            return Poll::Ready(CloseReason::DrainForced);
        }
        if !*this.draining && this.drain.as_mut().poll(cx).is_ready() {
            *this.draining = true;
            this.conn.as_mut().graceful_shutdown();
        }
        loop {
            match this.conn.as_mut().poll(cx) {
                Poll::Ready(Ok(_)) => {
                    return Poll::Ready(this.closing.unwrap_or(CloseReason::Complete));
                }
                Poll::Ready(Err(error)) => {
                    if let Some(reason) = *this.closing {
                        return Poll::Ready(reason);
                    }
                    tracing::debug!(%error, "connection ended with an error");
                    return Poll::Ready(CloseReason::Error);
                }
                Poll::Pending => {}
            }
            if let Some(reason) = *this.closing {
                // Grace period of a graceful close: `sleep` holds its end.
                return match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(reason),
                    Poll::Pending => Poll::Pending,
                };
            }

            // Register before reading the state, so an HTTP/2 stream ending on another thread
            // after the read still wakes this task.
            this.state.register(cx.waker());
            let Some(deadline) = this
                .state
                .deadline(*this.header_timeout, *this.idle_timeout)
            else {
                return Poll::Pending;
            };
            // Re-arm only when the deadline moved earlier. A later deadline leaves the timer
            // early; it fires, the deadline is recomputed and the timer re-armed. That keeps
            // timer-wheel updates to about one per timeout period instead of one per request.
            if this.armed.is_none_or(|armed| armed > deadline.at) {
                this.sleep.as_mut().reset(deadline.at);
                *this.armed = Some(deadline.at);
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            if Instant::now() < deadline.at {
                this.sleep.as_mut().reset(deadline.at);
                *this.armed = Some(deadline.at);
                if this.sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            match deadline.reason {
                CloseReason::IdleTimeout => {
                    // Idle: close politely (HTTP/2 GOAWAY; an idle HTTP/1 connection closes at
                    // once), with a short grace before dropping it.
                    tracing::trace!("closing idle connection");
                    *this.closing = Some(CloseReason::IdleTimeout);
                    this.conn.as_mut().graceful_shutdown();
                    let grace = Instant::now() + IDLE_CLOSE_GRACE;
                    this.sleep.as_mut().reset(grace);
                    *this.armed = Some(grace);
                    // Loop: poll the connection so it can act on the shutdown.
                }
                reason => {
                    tracing::debug!(reason = reason.as_str(), "closing connection at deadline");
                    return Poll::Ready(reason);
                }
            }
        }
    }
}
