//! Reload triggers: the file watcher (started by the acceptor itself, or run by the
//! application) and SIGHUP.

use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::acceptor::{Inner, TlsAcceptor};
use crate::pair::{self, Source};

/// What the watcher remembers about one file-backed pair between polls.
#[derive(Clone, Copy, Debug, Default)]
struct SlotWatch {
    /// A fingerprint seen once that differs from the served one; put in service if the next
    /// poll sees it again (the debounce).
    pending: Option<u64>,
    /// The last fingerprint tried and refused; not tried again until the files change.
    refused: Option<u64>,
}

/// No watcher yet.
const PENDING: u8 = 0;
/// The automatic watcher runs (or has been spawned and not polled yet).
const AUTO: u8 = 1;
/// The application runs [`TlsAcceptor::watch`] itself, or the runtime has no time driver.
const OFF: u8 = 2;

/// Who watches an acceptor's files: nobody yet, its own task, or the application.
///
/// | mode | meaning | next |
/// |---|---|---|
/// | [`PENDING`] | no watcher | the acceptor built, or a handshake, inside a runtime CASes to [`AUTO`] and spawns |
/// | [`AUTO`] | the automatic watcher runs | [`PENDING`] when its runtime drops it (another runtime's handshake takes over); [`OFF`] on [`TlsAcceptor::watch`] |
/// | [`OFF`] | the application watches, or no time driver (logged) | final |
pub(crate) struct AutoWatch {
    mode: AtomicU8,
    /// Cancelled when the acceptor's shared state is dropped, so a watcher waiting for its
    /// next tick ends at once.
    dropped: CancellationToken,
}

impl AutoWatch {
    pub(crate) fn new() -> Self {
        Self {
            mode: AtomicU8::new(PENDING),
            dropped: CancellationToken::new(),
        }
    }
}

impl Drop for AutoWatch {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

/// Puts the switch back to [`PENDING`] when the automatic watcher's future is dropped by its
/// runtime (not when it ends because the application took over or the acceptor is gone).
struct BackToPending(Weak<Inner>);

impl Drop for BackToPending {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            let _ = inner.auto_watch.mode.compare_exchange(
                AUTO,
                PENDING,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

/// The watcher: polls every file-backed pair each interval until `stop`, the acceptor is
/// dropped, or (for the automatic one, which holds `automatic`) the application takes over.
/// Holds the acceptor only during a poll, never across the wait for the next tick.
async fn run(inner: Weak<Inner>, stop: CancellationToken, automatic: Option<BackToPending>) {
    let Some(acceptor) = inner.upgrade().map(|inner| TlsAcceptor { inner }) else {
        return;
    };
    let mut state = vec![SlotWatch::default(); acceptor.inner.slots.len()];
    if acceptor
        .inner
        .slots
        .iter()
        .all(|slot| matches!(slot.source, Source::Memory))
    {
        tracing::debug!("no TLS certificate files to watch (expiry gauges only)");
    }
    let mut ticks = tokio::time::interval(acceptor.inner.watch_interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    drop(acceptor);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(polling) = inner.upgrade().map(|inner| TlsAcceptor { inner }) else {
            return;
        };
        if automatic.is_some() && polling.inner.auto_watch.mode.load(Ordering::Relaxed) != AUTO {
            return;
        }
        let mut polled = state.clone();
        let poll = tokio::task::spawn_blocking(move || {
            polling.poll_files(&mut polled);
            polled
        });
        tokio::select! {
            () = stop.cancelled() => return,
            result = poll => match result {
                Ok(polled) => state = polled,
                Err(error) => {
                    tracing::error!(%error, "TLS certificate file poll failed");
                }
            },
        }
    }
}

impl TlsAcceptor {
    /// Watches the certificate and key files and reloads a pair when its files change.
    ///
    /// Every [watch interval](crate::TlsConfig::watch_interval) (500 ms by default) the files
    /// of each file-backed pair are read, following symlinks, and compared with what is in
    /// service. This sees every way files get replaced: written in place (certbot's `cp`, an
    /// editor), renamed over, and the symlink flip of Kubernetes secret volumes and
    /// cert-manager (`tls.crt -> ..data/tls.crt`, `..data -> ..2026_01_01_…`), where no event
    /// on the watched path itself would fire. A change must read the same on two polls in a
    /// row before it is tried, so a certificate and key written one after the other are taken
    /// together, and the new pair is live within two intervals (about one second).
    ///
    /// A pair that fails validation is logged and counted as a failed reload, the previous one
    /// stays in service, and the same contents are not tried again; the next change is. Each
    /// poll also updates the expiry gauges. File reads run on tokio's blocking thread pool.
    ///
    /// Nobody needs to call this: an acceptor built or first used inside a tokio runtime
    /// runs this watcher by itself on that runtime, until its last clone is dropped. Calling
    /// `watch` takes the watching over: the automatic watcher stops at its next tick, and
    /// this one runs until `stop` is cancelled or the last clone of the acceptor is dropped.
    /// portcullis-server calls it for every acceptor it serves, so the watching stops with
    /// its drain.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops the watcher; a poll already on the blocking pool finishes
    /// on its own.
    pub fn watch(&self, stop: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        // The caller runs the watcher from now on: the automatic one ends at its next tick.
        self.inner.auto_watch.mode.store(OFF, Ordering::Relaxed);
        run(Arc::downgrade(&self.inner), stop, None)
    }

    /// Starts the acceptor's own watcher if none runs yet and a tokio runtime is at hand.
    /// Called when the acceptor is built and at every handshake (one relaxed load).
    #[inline]
    pub(crate) fn ensure_watching(&self) {
        // Relaxed: the flag publishes no data; the compare-exchange in `start_watching`
        // decides who spawns.
        if self.inner.auto_watch.mode.load(Ordering::Relaxed) == PENDING {
            self.start_watching();
        }
    }

    #[cold]
    #[inline(never)]
    fn start_watching(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let switch = &self.inner.auto_watch;
        if switch
            .mode
            .compare_exchange(PENDING, AUTO, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        // A runtime without its time driver panics on the first timer. Found out here, once,
        // rather than by a task that every handshake would spawn again.
        if std::panic::catch_unwind(|| tokio::time::sleep(Duration::ZERO)).is_err() {
            switch.mode.store(OFF, Ordering::Relaxed);
            tracing::error!(
                "this tokio runtime has no time driver (enable_time): TLS certificate files \
                 are not watched; spawn TlsAcceptor::watch on a runtime that has one"
            );
            return;
        }
        let guard = BackToPending(Arc::downgrade(&self.inner));
        runtime.spawn(run(
            Arc::downgrade(&self.inner),
            switch.dropped.clone(),
            Some(guard),
        ));
    }

    /// One poll of the watcher: compares every file-backed pair with what is served.
    fn poll_files(&self, state: &mut [SlotWatch]) {
        self.update_expiry();
        for (index, (slot, watch)) in self.inner.slots.iter().zip(state.iter_mut()).enumerate() {
            let Source::Files { cert, key } = &slot.source else {
                continue;
            };
            let cert_read = std::fs::read(cert);
            let key_read = std::fs::read(key);
            let seen = match (&cert_read, &key_read) {
                (Ok(cert_pem), Ok(key_pem)) => pair::fingerprint(cert_pem, key_pem),
                (cert_read, key_read) => pair::fingerprint(
                    format!(
                        "unreadable {:?}",
                        cert_read.as_ref().err().map(io::Error::kind)
                    )
                    .as_bytes(),
                    format!(
                        "unreadable {:?}",
                        key_read.as_ref().err().map(io::Error::kind)
                    )
                    .as_bytes(),
                ),
            };
            let served = self
                .inner
                .resolver
                .snapshot
                .load()
                .slots
                .get(index)
                .map(|loaded| loaded.parsed.fingerprint);
            if Some(seen) == served {
                *watch = SlotWatch::default();
                continue;
            }
            if watch.refused == Some(seen) {
                continue;
            }
            if watch.pending != Some(seen) {
                // Changed since the last poll: wait until it stays the same for one interval.
                watch.pending = Some(seen);
                continue;
            }
            watch.pending = None;
            let result = match (cert_read, key_read) {
                (Ok(cert_pem), Ok(key_pem)) => self.reload_slot(index, &cert_pem, &key_pem, served),
                (Err(error), _) => {
                    let result = Err(pair::file_error(cert, error));
                    self.finish_reload(&result, Some(slot));
                    result
                }
                (_, Err(error)) => {
                    let result = Err(pair::file_error(key, error));
                    self.finish_reload(&result, Some(slot));
                    result
                }
            };
            watch.refused = result.is_err().then_some(seen);
        }
    }

    /// Reloads every file-backed pair each time the process receives SIGHUP, the signal
    /// certbot deploy hooks and `systemctl reload` send.
    ///
    /// The signal handler is installed by this call, so a SIGHUP that arrives after it returns
    /// is never missed (nor does it kill the process, SIGHUP's default action). Each reload
    /// runs [`reload`](Self::reload) on the blocking thread pool, with its validation, logging
    /// and counting. The future returns when `stop` is cancelled. portcullis-server
    /// needs none of this: it reloads every acceptor it serves on SIGHUP itself (through its
    /// shutdown lifecycle's SIGHUP handling). Call it only without the server.
    ///
    /// # Errors
    ///
    /// When not called inside a tokio runtime, or when the signal handler cannot be installed.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future stops listening; SIGHUP stays caught (ignored) for the rest of the
    /// process's life, as with every tokio signal handler.
    #[cfg(unix)]
    pub fn reload_on_sighup(
        &self,
        stop: CancellationToken,
    ) -> io::Result<impl Future<Output = ()> + Send + 'static> {
        use tokio::signal::unix::{SignalKind, signal};

        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "reload_on_sighup must be called inside a tokio runtime",
            ));
        }
        let mut hangups = signal(SignalKind::hangup())?;
        let acceptor = self.clone();
        Ok(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    received = hangups.recv() => if received.is_none() { return },
                }
                tracing::info!("SIGHUP received: reloading TLS certificates");
                let reloading = acceptor.clone();
                // The outcome is logged and counted by `reload` itself.
                if let Err(error) = tokio::task::spawn_blocking(move || reloading.reload()).await {
                    tracing::error!(%error, "TLS certificate reload task failed");
                }
            }
        })
    }
}
