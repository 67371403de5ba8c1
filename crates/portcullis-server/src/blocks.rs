//! The background work of the blocks a server holds, run for as long as it serves: TLS
//! certificate watching and SIGHUP reloads, the admin service's upkeep, and the monitoring
//! (health checks, the lag probe).
//!
//! Each task ends when the [`BlockTasks`] that started it is dropped, at the end of
//! `serve`; none of it is the user's to remember.

use std::future::Future;
use std::sync::Arc;

use portcullis_shutdown::Lifecycle;
use portcullis_tls::TlsAcceptor;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::AbortOnDropHandle;

use crate::error::Error;

/// The running background work of one server.
pub(crate) struct BlockTasks {
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    tasks: Vec<AbortOnDropHandle<()>>,
}

impl BlockTasks {
    /// Starts the work of `acceptors` and `upkeep` on the current runtime.
    ///
    /// SIGHUP reloads every acceptor: through `lifecycle` when it catches SIGHUP already
    /// (it was started with signals), through a handler installed here otherwise.
    pub(crate) fn start(
        lifecycle: &Lifecycle,
        acceptors: Vec<TlsAcceptor>,
        upkeep: Option<Arc<dyn Fn() + Send + Sync>>,
    ) -> Result<Self, Error> {
        let stop = CancellationToken::new();
        let mut tasks = Vec::new();
        for acceptor in &acceptors {
            // A changed certificate or key file (a symlink swap included) is live after two
            // polls agree on it.
            tasks.push(AbortOnDropHandle::new(tokio::spawn(
                acceptor.watch(stop.clone()),
            )));
            let reloading = acceptor.clone();
            // The outcome is logged and counted by `reload` itself.
            lifecycle.on_reload(move || {
                let _ = reloading.reload();
            });
        }
        #[cfg(unix)]
        if (!acceptors.is_empty() || lifecycle.has_reloaders()) && !lifecycle.catches_hangups() {
            use tokio::signal::unix::{SignalKind, signal};
            let mut hangups = signal(SignalKind::hangup()).map_err(Error::Signal)?;
            let lifecycle = lifecycle.clone();
            tasks.push(AbortOnDropHandle::new(tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    metrics::counter!(portcullis_shutdown::metrics::SIGNALS_RECEIVED, "signal" => "hup")
                        .increment(1);
                    tracing::info!("SIGHUP received");
                    lifecycle.reload().await;
                }
            })));
        }
        if let Some(upkeep) = upkeep {
            let stop = stop.clone();
            tasks.push(AbortOnDropHandle::new(tokio::spawn(async move {
                let mut ticks = tokio::time::interval(portcullis_metrics::UPKEEP_INTERVAL);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = ticks.tick() => upkeep(),
                    }
                }
            })));
        }
        Ok(Self {
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            tasks,
        })
    }

    /// Runs the future `make` returns, until the server stops (the token it is given is
    /// cancelled then, and the task aborted if it is still running).
    pub(crate) fn spawn<F>(&mut self, make: impl FnOnce(CancellationToken) -> F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let task = tokio::spawn(make(self.stop.clone()));
        self.tasks.push(AbortOnDropHandle::new(task));
    }

    /// Nothing running (the application runs the blocks' work itself).
    pub(crate) fn none() -> Self {
        let stop = CancellationToken::new();
        Self {
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            tasks: Vec::new(),
        }
    }
}
