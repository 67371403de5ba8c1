//! The response rate of one HTTP/2 stream: a frame its body hands on must leave within its
//! allowance. hyper polls a stream's body only once the stream can send (its flow-control
//! window open, the connection taking data), so a stalled stream is seen from outside: the
//! task that runs the stream holds the timer, and dropping the stream resets it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::{Instant, Sleep};

use crate::loom::{AtomicU64, Ordering};
use crate::metrics::{CloseReason, STREAMS_RESET};
use crate::state::{ConnState, Nanos, later};

use super::MinRate;

const NONE: Nanos = u64::MAX;

tokio::task_local! {
    /// The watch of the HTTP/2 stream whose task is running.
    static STREAM: Arc<StreamWatch>;
}

/// The deadline of one HTTP/2 stream's response, shared by its body and its task.
#[derive(Debug)]
pub(crate) struct StreamWatch {
    origin: Instant,
    /// When the frame the body last handed on must have left, on `origin`'s clock; `NONE`
    /// while nothing is owed.
    deadline: AtomicU64,
    /// The stream's connection, told when the stream is reset.
    conn: std::sync::OnceLock<Arc<ConnState>>,
}

impl StreamWatch {
    /// The watch of the stream task running now, if this is one.
    pub(crate) fn current() -> Option<Arc<StreamWatch>> {
        STREAM.try_with(Arc::clone).ok()
    }

    fn now(&self) -> Nanos {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(NONE - 1)
    }

    /// The body handed on a frame of `bytes`: it must leave within the rate's allowance.
    pub(crate) fn handed_on(&self, bytes: u64, rate: MinRate) {
        if rate.is_off() {
            return;
        }
        let at = self.now().saturating_add(rate.allowance(bytes));
        self.deadline.store(at.min(NONE - 1), Ordering::Relaxed);
    }

    /// The stream's response belongs to `conn`.
    pub(crate) fn bind(&self, conn: &Arc<ConnState>) {
        let _ = self.conn.set(Arc::clone(conn));
    }

    /// hyper asked the body for more: what it handed on has left.
    pub(crate) fn taken(&self) {
        self.deadline.store(NONE, Ordering::Relaxed);
    }
}

pin_project! {
    /// An HTTP/2 stream's task: runs the stream with its watch in scope, and ends it (which
    /// resets the stream) when a frame overstays its allowance.
    pub(crate) struct StreamTask<F: Future> {
        #[pin]
        future: TaskLocalFuture<Arc<StreamWatch>, F>,
        watch: Arc<StreamWatch>,
        // Armed at `armed`, made at the first deadline.
        timer: Option<Pin<Box<Sleep>>>,
        armed: Nanos,
    }
}

impl<F: Future> StreamTask<F> {
    pub(crate) fn new(future: F) -> Self {
        let watch = Arc::new(StreamWatch {
            origin: Instant::now(),
            deadline: AtomicU64::new(NONE),
            conn: std::sync::OnceLock::new(),
        });
        Self {
            future: STREAM.scope(Arc::clone(&watch), future),
            watch,
            timer: None,
            armed: NONE,
        }
    }
}

impl<F: Future> Future for StreamTask<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.future.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        loop {
            let deadline = this.watch.deadline.load(Ordering::Relaxed);
            if deadline == NONE {
                return Poll::Pending;
            }
            if this.watch.now() >= deadline {
                tracing::debug!("HTTP/2 stream below the minimum response rate; resetting it");
                metrics::counter!(STREAMS_RESET, "reason" => CloseReason::MinResponseRate.as_str())
                    .increment(1);
                // h2 drops what the stream still had buffered.
                if let Some(conn) = this.watch.conn.get() {
                    conn.h2_stream_reset();
                }
                return Poll::Ready(());
            }
            let at = later(this.watch.origin, std::time::Duration::from_nanos(deadline));
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if *this.armed != deadline {
                timer.as_mut().reset(at);
                *this.armed = deadline;
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const RATE: MinRate = MinRate::new(100, Duration::from_secs(2));

    #[tokio::test(start_paused = true)]
    async fn a_frame_overstaying_its_allowance_ends_the_stream() {
        let started = Instant::now();
        let task = StreamTask::new(async {
            let watch = StreamWatch::current().expect("in scope");
            watch.handed_on(1000, RATE);
            std::future::pending::<()>().await;
        });
        task.await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(10),
            "1000 B at 100 B/s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_taken_in_time_owes_nothing() {
        let task = tokio::spawn(StreamTask::new(async {
            let watch = StreamWatch::current().expect("in scope");
            watch.handed_on(10, RATE);
            tokio::time::sleep(Duration::from_secs(1)).await;
            watch.taken();
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!task.is_finished(), "nothing owed, nothing cut");
        assert!(StreamWatch::current().is_none(), "outside a stream task");
    }
}
