//! Ending long-lived streams (server-sent events, chunked responses) at shutdown.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

pin_project! {
    /// A stream that ends (yields `None`) once its shutdown token is cancelled; see
    /// [`end_on_shutdown`].
    #[must_use = "streams do nothing unless polled"]
    pub struct EndOnShutdown<S> {
        #[pin]
        stream: S,
        // Boxed so that the wrapper is `Unpin` whenever the stream is.
        cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
        ended: bool,
    }
}

/// Wraps `stream` so that it ends as soon as `token` is cancelled: a response body built from
/// it then finishes cleanly at shutdown, and its connection drains instead of being cut at the
/// drain deadline. Pass the token given to the server (`Builder::shutdown_token` in
/// portcullis-server).
///
/// ```
/// use portcullis_shutdown::end_on_shutdown;
/// use tokio_util::sync::CancellationToken;
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use futures_util::StreamExt;
/// let token = CancellationToken::new();
/// let mut events = end_on_shutdown(futures_util::stream::repeat("tick"), &token);
/// assert_eq!(events.next().await, Some("tick"));
/// token.cancel();
/// assert_eq!(events.next().await, None);
/// # });
/// ```
pub fn end_on_shutdown<S: Stream>(stream: S, token: &CancellationToken) -> EndOnShutdown<S> {
    EndOnShutdown {
        stream,
        cancelled: Box::pin(token.clone().cancelled_owned()),
        ended: false,
    }
}

impl<S: Stream> Stream for EndOnShutdown<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if this.cancelled.as_mut().poll(cx).is_ready() {
            *this.ended = true;
            return Poll::Ready(None);
        }
        match this.stream.poll_next(cx) {
            Poll::Ready(None) => {
                *this.ended = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.ended {
            (0, Some(0))
        } else {
            (0, self.stream.size_hint().1)
        }
    }
}

impl<S> std::fmt::Debug for EndOnShutdown<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndOnShutdown")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_pending_stream_ends_when_the_token_is_cancelled() {
        let token = CancellationToken::new();
        let mut stream = end_on_shutdown(futures_util::stream::pending::<u8>(), &token);
        let waiter = tokio::spawn(async move { stream.next().await });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        token.cancel();
        assert_eq!(waiter.await.expect("task"), None);
    }

    #[tokio::test]
    async fn a_finished_stream_stays_finished() {
        let token = CancellationToken::new();
        let mut stream = end_on_shutdown(futures_util::stream::iter([1, 2]), &token);
        assert_eq!(stream.next().await, Some(1));
        assert_eq!(stream.next().await, Some(2));
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.next().await, None);
    }
}
