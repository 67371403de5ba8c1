//! The core of one runtime: the accept loops, the tracked connection tasks, and their drain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::RequestBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper_util::rt::TokioTimer;
use hyper_util::server::conn::auto;
use portcullis_health::{OverloadManager, OverloadSignal};
use portcullis_limit::PeerAddr;
use portcullis_listen::Listener;
use portcullis_shutdown::{Lifecycle, ShutdownPhase};
use tokio::time::Instant;
use tokio_util::task::{AbortOnDropHandle, TaskTracker};
use tower::Service;

use crate::BoxError;
use crate::config::HttpConfig;
use crate::connection::serve_connection;
use crate::metrics::ServerMetrics;
use crate::policy::ConnPolicy;
use crate::rate::StreamTask;
use crate::report::ServeReport;

/// hyper's built-in HTTP/1 header count limit, and portcullis's default.
const HYPER_MAX_HEADERS: usize = 100;

/// Everything one runtime needs to serve connections.
pub(crate) struct Core<S> {
    pub(crate) shared: Arc<Shared<S>>,
}

pub(crate) struct Shared<S> {
    pub(crate) service: S,
    pub(crate) builder: auto::Builder<TrackedExecutor>,
    pub(crate) http: HttpConfig,
    pub(crate) conn: ConnPolicy,
    /// The phase this core's connections watch (a follower of the server's in per-core mode).
    pub(crate) lifecycle: Lifecycle,
    /// The server's own lifecycle, moved when this core's drain deadline passes.
    pub(crate) leader: Lifecycle,
    pub(crate) metrics: Arc<ServerMetrics>,
    /// Connection tasks, and the HTTP/2 stream tasks hyper spawns for them.
    pub(crate) tracker: TaskTracker,
    /// Connections open on this core.
    pub(crate) open: Arc<AtomicU64>,
    /// Connections accepted (counted in the accept loop, before their task runs).
    pub(crate) connections: AtomicU64,
    /// Connections that were open when the drain began and closed by themselves.
    pub(crate) drained: AtomicU64,
    /// Connections closed by force.
    pub(crate) forced: AtomicU64,
    /// The overload manager, told of every accept (none on the admin listener).
    pub(crate) overload: Option<OverloadManager>,
    /// The actions its connections, requests and accept loops follow (one that never
    /// changes without a manager).
    pub(crate) actions: OverloadSignal,
}

/// hyper's executor for HTTP/2 stream tasks: tracked like connections, so the drain waits for
/// them, stopped when the drain is forced, and each ended (its stream reset) when its response
/// stalls below the minimum rate.
#[derive(Clone, Debug)]
pub(crate) struct TrackedExecutor {
    tracker: TaskTracker,
    lifecycle: Lifecycle,
}

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        let lifecycle = self.lifecycle.clone();
        // Stream tasks are spawned from their connection's task: they keep its peer scope.
        let peer = PeerAddr::current();
        self.tracker.spawn(async move {
            // The stream's own response rate is watched by its task (`rate/stream.rs`).
            let stream = StreamTask::new(future);
            let run = async move {
                tokio::select! {
                    biased;
                    () = lifecycle.reached(ShutdownPhase::Forced) => {}
                    () = stream => {}
                }
            };
            match peer {
                Some(peer) => PeerAddr::scope(peer, run).await,
                None => run.await,
            }
        });
    }
}

impl<S, B> Core<S>
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    /// A core whose connections watch `lifecycle` and are counted in `open`; `leader` is
    /// forced at its drain deadline. `overload` is told of every accept, and its actions
    /// are followed.
    pub(crate) fn new(
        service: S,
        http: &HttpConfig,
        conn: ConnPolicy,
        (lifecycle, leader): (Lifecycle, Lifecycle),
        open: Arc<AtomicU64>,
        metrics: ServerMetrics,
        overload: Option<OverloadManager>,
    ) -> Self {
        let tracker = TaskTracker::new();
        let executor = TrackedExecutor {
            tracker: tracker.clone(),
            lifecycle: lifecycle.clone(),
        };
        Core {
            shared: Arc::new(Shared {
                service,
                builder: hyper_builder(http, executor),
                http: http.clone(),
                conn,
                lifecycle,
                leader,
                metrics: Arc::new(metrics),
                tracker,
                open,
                connections: AtomicU64::new(0),
                drained: AtomicU64::new(0),
                forced: AtomicU64::new(0),
                actions: overload
                    .as_ref()
                    .map_or_else(OverloadSignal::new, |o| o.signal().clone()),
                overload,
            }),
        }
    }

    /// Starts an accept loop per listener; each ends when the phase reaches `Drain`.
    pub(crate) fn start(&self, listeners: Vec<Listener>) -> Vec<AbortOnDropHandle<()>> {
        listeners
            .into_iter()
            .map(|listener| {
                let shared = Arc::clone(&self.shared);
                AbortOnDropHandle::new(tokio::spawn(accept_loop(listener, shared)))
            })
            .collect()
    }

    /// Waits for the accept loops to close their listeners, then for every connection to
    /// finish, until `drain_timeout` (or a force) closes the rest.
    pub(crate) async fn drain(
        self,
        accept_loops: Vec<AbortOnDropHandle<()>>,
        drain_timeout: Duration,
    ) -> ServeReport {
        let started = Instant::now();
        let shared = &self.shared;
        for accept_loop in accept_loops {
            // The loop drops its listener on exit: new connections are refused from here on.
            let _ = accept_loop.await;
        }
        shared.tracker.close();
        let finished = tokio::select! {
            () = shared.tracker.wait() => true,
            () = tokio::time::sleep(drain_timeout) => false,
            () = shared.lifecycle.reached(ShutdownPhase::Forced) => false,
        };
        if !finished {
            tracing::warn!(
                open = shared.tracker.len(),
                "drain cut short; closing the remaining connections"
            );
            shared.leader.force();
            shared.tracker.wait().await;
        }
        ServeReport {
            connections: shared.connections.load(Ordering::Acquire),
            drained: shared.drained.load(Ordering::Acquire),
            forced: shared.forced.load(Ordering::Acquire),
            drain_duration: started.elapsed(),
            delay_duration: Duration::ZERO,
            tasks_left: 0,
        }
    }
}

fn hyper_builder(http: &HttpConfig, executor: TrackedExecutor) -> auto::Builder<TrackedExecutor> {
    let mut builder = auto::Builder::new(executor);
    builder
        .http1()
        .timer(TokioTimer::new())
        // portcullis enforces the head deadline itself, per request; hyper's would also close
        // idle keep-alive connections at the header timeout.
        .header_read_timeout(None)
        .max_buf_size(http.max_header_bytes)
        .keep_alive(true);
    if http.max_headers != HYPER_MAX_HEADERS {
        // Any explicit value makes hyper allocate and fill a header array for every request;
        // its built-in limit uses a fixed array on the stack. `tests/limits.rs` checks that the
        // built-in limit is still 100.
        builder.http1().max_headers(http.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(http.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(http.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(http.h2_max_local_error_reset_streams)
        .max_header_list_size(http.h2_max_header_list_size);
    builder
}

async fn accept_loop<S, B>(mut listener: Listener, shared: Arc<Shared<S>>)
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // Polled before every accept: a registered watch answers with one atomic load, where
    // `Lifecycle::reached` would poll two `async` layers around it.
    let mut phase = std::pin::pin!(shared.lifecycle.watch());
    let mut stop = std::future::poll_fn(|cx| phase.as_mut().poll_reached(ShutdownPhase::Drain, cx));
    loop {
        // The overload manager's last resort: leave new clients in the kernel's backlog
        // until the pressure is off. One atomic load per accept otherwise.
        let actions = shared.actions.current();
        if actions.accepting_paused() {
            tracing::debug!(listener = %listener.local_addr(), "overload: accepting paused");
            tokio::select! {
                biased;
                () = &mut stop => break,
                _ = shared.actions.changed(actions) => continue,
            }
        }
        let accepted = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        // The filter, the bans and the caps first, before anything is read; a connection
        // turned away is dropped (closed) here, which is cheap, and counted by what refused it.
        let Ok(permit) = shared.conn.admit(&accepted.peer) else {
            continue;
        };
        // Never await anything per connection here: everything a connection waits for
        // (a PROXY header, protocol detection, its requests) happens in its own task.
        shared.connections.fetch_add(1, Ordering::Relaxed);
        if let Some(overload) = &shared.overload {
            overload.on_accept();
        }
        let task = serve_connection(Arc::clone(&shared), accepted, permit, Instant::now());
        shared.tracker.spawn(task);
    }
    tracing::debug!(listener = %listener.local_addr(), "listener closed");
}
