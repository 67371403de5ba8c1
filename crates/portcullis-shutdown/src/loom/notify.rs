//! A stand-in for tokio's `Notify` in loom models.

/// A stand-in for `tokio::sync::Notify` in loom models, built on loom's mutex, with the part
/// of tokio's contract that the phase relies on: a `notified_owned()` future created before a
/// `notify_waiters()` call completes when polled after it, and a pending one is woken by it.
/// (tokio's own `Notify` is checked with loom by tokio; what the models here check is portcullis's
/// use of it: the order of the stage store and the notification, and the register-then-recheck
/// protocol of the watchers.)
#[derive(Debug, Default)]
pub(crate) struct Notify(loom::sync::Mutex<NotifyState>);

#[derive(Debug, Default)]
struct NotifyState {
    /// How many `notify_waiters` calls happened.
    epoch: u64,
    wakers: Vec<std::task::Waker>,
}

impl Notify {
    /// A stand-in with no notification yet.
    #[must_use]
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// A future that completes after the next `notify_waiters`.
    #[must_use]
    pub(crate) fn notified_owned(self: std::sync::Arc<Self>) -> OwnedNotified {
        let epoch = self.0.lock().expect("lock").epoch;
        OwnedNotified {
            notify: self,
            epoch,
        }
    }

    /// Completes every future created before this call.
    pub(crate) fn notify_waiters(&self) {
        let wakers = {
            let mut state = self.0.lock().expect("lock");
            state.epoch += 1;
            std::mem::take(&mut state.wakers)
        };
        for waker in wakers {
            waker.wake();
        }
    }
}

/// The future of [`Notify::notified_owned`] in loom models.
#[derive(Debug)]
pub(crate) struct OwnedNotified {
    notify: std::sync::Arc<Notify>,
    epoch: u64,
}

impl std::future::Future for OwnedNotified {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let mut state = self.notify.0.lock().expect("lock");
        if state.epoch != self.epoch {
            return std::task::Poll::Ready(());
        }
        state.wakers.push(cx.waker().clone());
        std::task::Poll::Pending
    }
}
