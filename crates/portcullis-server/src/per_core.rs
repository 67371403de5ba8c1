//! [`Builder::serve_per_core`]: one single-threaded runtime per core, nothing shared on the
//! request path.
//!
//! The lifecycle, the triggers, the blocks' work and the admin listener run on a small
//! runtime of the calling thread. Each core's connections watch a follower of the server's
//! lifecycle (its own atomic and wake-ups, moved with the leader), serve their share of the
//! listeners, and drain on their own runtime when the leader reaches `Drain`.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RequestBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use portcullis_listen::DetachedListener;
use portcullis_shutdown::{Lifecycle, ShutdownPhase};
use tokio::time::Instant;
use tower::Service;

use crate::BoxError;
use crate::accept::Core;
use crate::admin::AdminServer;
use crate::builder::Builder;
use crate::error::Error;
use crate::metrics::ServerMetrics;
use crate::report::ServeReport;
use crate::serve::{ForceOnDrop, Prepared};
use crate::service::panic_message;

/// The started cores; on an early return, forces and joins them.
struct Cores {
    handles: Vec<std::thread::JoinHandle<ServeReport>>,
    lifecycle: Lifecycle,
}

impl Drop for Cores {
    fn drop(&mut self) {
        if self.handles.is_empty() {
            return;
        }
        self.lifecycle.force();
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// Moves a listener off the runtime it was created on.
fn detach(listener: portcullis_listen::Listener) -> Result<DetachedListener, Error> {
    let addr = listener.local_addr().clone();
    listener
        .detach()
        .map_err(|source| Error::Listener { addr, source })
}

impl Builder {
    /// Serves, blocking the calling thread: on `runtime` with [`serve`](Self::serve), or with
    /// [`serve_per_core`](Self::serve_per_core) when `per_core` says how many cores (the
    /// listeners move off `runtime`, which stays alive until the cores have drained). The
    /// usual end of an executable's `main`, whichever mode it was asked for.
    ///
    /// # Errors
    ///
    /// As [`serve`](Self::serve) or [`serve_per_core`](Self::serve_per_core).
    pub fn run<F, S, B>(
        self,
        runtime: tokio::runtime::Runtime,
        per_core: Option<NonZeroUsize>,
        make_service: F,
    ) -> Result<ServeReport, Error>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match per_core {
            Some(cores) => self.serve_per_core(cores, make_service),
            None => {
                // The service may spawn tasks as it is made: make it inside the runtime.
                let service = {
                    let _entered = runtime.enter();
                    make_service()
                };
                runtime.block_on(self.serve(service))
            }
        }
    }

    /// Serves with one single-threaded runtime per core instead of one shared runtime.
    ///
    /// `threads` OS threads each run a current-thread tokio runtime with its own share of the
    /// listeners (add `threads` acceptors per address with
    /// [`ListenerConfig::acceptors`](portcullis_listen::ListenerConfig::acceptors), so the kernel
    /// spreads connections over them through `SO_REUSEPORT`) and its own service, built by
    /// `make_service` on that thread. Nothing is shared between cores on the request path,
    /// like nginx's worker processes. Blocks the calling thread until every core has drained.
    /// The listeners must have been created on a runtime that is still alive (they are moved
    /// off it here); the lifecycle, the blocks' work and the admin listener run on a small
    /// runtime of their own.
    ///
    /// # Errors
    ///
    /// [`Error::NoListeners`]; [`Error::InsideRuntime`] when called from within a tokio
    /// runtime; [`Error::Runtime`] or [`Error::Listener`] when a core cannot be started (the
    /// cores already started are stopped first); [`Error::CorePanicked`] when a core's thread
    /// panicked.
    pub fn serve_per_core<F, S, B>(
        self,
        threads: NonZeroUsize,
        make_service: F,
    ) -> Result<ServeReport, Error>
    where
        F: Fn() -> S + Send + Sync + 'static,
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if self.listeners.is_empty() {
            return Err(Error::NoListeners);
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(Error::InsideRuntime);
        }
        // Runs the lifecycle, the admin listener, and waits for the cores.
        let waiter = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let Prepared {
            listeners,
            http,
            conn,
            lifecycle,
            admin,
            mut blocks,
            overload,
            handed_over,
        } = {
            let _on_waiter = waiter.enter();
            self.prepare()?
        };
        let admin = match admin {
            Some((listener, admin)) => {
                let addr = listener.local_addr().clone();
                let detached = detach(listener)?;
                let _on_waiter = waiter.enter();
                let listener = detached.attach().map_err(|error| Error::Listener {
                    addr,
                    source: std::io::Error::from(error),
                })?;
                Some((listener, admin))
            }
            None => None,
        };
        // Each core re-registers its share on its own runtime.
        let mut shares: Vec<Vec<DetachedListener>> =
            (0..threads.get()).map(|_| Vec::new()).collect();
        for (i, listener) in listeners.into_iter().enumerate() {
            shares[i % threads.get()].push(detach(listener)?);
        }
        let open: Arc<[Arc<AtomicU64>]> = (0..threads.get())
            .map(|_| Arc::new(AtomicU64::new(0)))
            .collect();
        {
            let open = Arc::clone(&open);
            lifecycle.count_open(move || open.iter().map(|o| o.load(Ordering::Relaxed)).sum());
        }
        let make_service = Arc::new(make_service);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), Error>>();
        let mut cores = Cores {
            handles: Vec::new(),
            lifecycle: lifecycle.clone(),
        };
        for (index, share) in shares.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(Error::Runtime)?;
            let follower = lifecycle.follower();
            let leader = lifecycle.clone();
            let make_service = Arc::clone(&make_service);
            let http = http.clone();
            let conn = conn.clone();
            let open = Arc::clone(&open[index]);
            let overload = overload.clone();
            let ready = ready_tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("portcullis-core-{index}"))
                .spawn(move || {
                    runtime.block_on(async move {
                        let mut listeners = Vec::with_capacity(share.len());
                        for detached in share {
                            let addr = detached.local_addr().clone();
                            match detached.attach() {
                                Ok(listener) => listeners.push(listener),
                                Err(error) => {
                                    let source = std::io::Error::from(error);
                                    let _ = ready.send(Err(Error::Listener { addr, source }));
                                    return ServeReport::default();
                                }
                            }
                        }
                        let _ = ready.send(Ok(()));
                        let drain_timeout = leader.drain_timeout();
                        let core = Core::new(
                            make_service(),
                            &http,
                            conn,
                            (follower.clone(), leader),
                            open,
                            ServerMetrics::resolve(),
                            overload,
                        );
                        let accept_loops = core.start(listeners);
                        follower.reached(ShutdownPhase::Drain).await;
                        let deadline = Instant::now() + drain_timeout;
                        let mut report = core.drain(accept_loops, drain_timeout).await;
                        // Application tasks spawned on this core run on its runtime, which
                        // ends with this closure: wait for them here, under the deadline.
                        report.tasks_left = follower.wait_for_tasks(deadline).await;
                        report
                    })
                })
                .map_err(Error::Runtime)?;
            cores.handles.push(handle);
        }
        drop(ready_tx);
        for _ in 0..cores.handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => break,
            }
        }
        let handles = std::mem::take(&mut cores.handles);
        let mut report = ServeReport::default();
        let mut failed = None;
        waiter.block_on(async {
            let _force_on_drop = ForceOnDrop(lifecycle.clone());
            let admin = admin
                .map(|(listener, admin)| AdminServer::start(listener, admin, lifecycle.health()));
            if let (Some(admin), Some(handed_over)) = (&admin, handed_over) {
                admin.stop_accepting_on(handed_over, &mut blocks);
            }
            lifecycle.serving();
            let drain_timing = {
                let lifecycle = lifecycle.clone();
                tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                    let delay = lifecycle.run_until_drain().await;
                    (Instant::now(), delay)
                }))
            };
            for (core, handle) in handles.into_iter().enumerate() {
                match tokio::task::spawn_blocking(move || handle.join()).await {
                    Ok(Ok(part)) => report.merge(&part),
                    Ok(Err(payload)) => {
                        failed = Some(Error::CorePanicked {
                            core,
                            message: panic_message(payload.as_ref()).to_owned(),
                        });
                    }
                    Err(_) => {
                        failed = Some(Error::CorePanicked {
                            core,
                            message: "its join task failed".to_owned(),
                        });
                    }
                }
            }
            // Every core has drained, so the drain began and the announcer is done (unless
            // the cores failed, and no shutdown may ever come).
            if failed.is_none()
                && let Ok((drain_started, delay)) = drain_timing.await
            {
                // Tasks spawned outside the cores (on this thread's runtime or elsewhere).
                let left = lifecycle
                    .wait_for_tasks(drain_started + lifecycle.drain_timeout())
                    .await;
                report.tasks_left = report.tasks_left.max(left);
                report.delay_duration = delay;
                report.drain_duration = drain_started.elapsed();
                lifecycle.finish(drain_started);
            }
            if failed.is_some() {
                // A core died: whatever state the shutdown got to, nobody should keep
                // routing here or waiting for it.
                lifecycle.force();
                lifecycle.advance(ShutdownPhase::Done);
            }
            if let Some(admin) = admin {
                admin.stop().await;
            }
        });
        drop(blocks);
        match failed {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}
