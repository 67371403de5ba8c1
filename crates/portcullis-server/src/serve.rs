//! [`Builder::serve`]: one runtime serving every listener through the server's lifecycle.
//!
//! ```text
//! start    the lifecycle (triggers, SIGHUP), the blocks' work, the admin listener
//! Running  accept loops serve; readiness on, READY=1            lifecycle.serving()
//! Delay    trigger: readiness off, token cancelled, still serving   run_until_drain()
//! Drain    accept loops close their listeners; connections drain    Core::drain
//! Forced   at the deadline (or a second signal): the rest close
//! Done     tracked tasks waited for; the admin listener closes      lifecycle.finish()
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::RequestBody;
use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use portcullis_health::OverloadManager;
use portcullis_listen::Listener;
use portcullis_shutdown::Lifecycle;
use tokio::time::Instant;
use tower::Service;

use crate::BoxError;
use crate::accept::Core;
use crate::admin::{AdminServer, AdminService};
use crate::blocks::BlockTasks;
use crate::builder::Builder;
use crate::config::HttpConfig;
use crate::error::Error;
use crate::metrics::ServerMetrics;
use crate::monitoring::Monitoring;
use crate::policy::ConnPolicy;
use crate::report::ServeReport;
use crate::upgrade::{self, Inherited, Upgrader};
use tokio_util::sync::CancellationToken;

/// Forces the lifecycle when dropped: nothing a server started outlives its `serve` future.
pub(crate) struct ForceOnDrop(pub(crate) Lifecycle);

impl Drop for ForceOnDrop {
    fn drop(&mut self) {
        self.0.force();
    }
}

/// What `serve` and `serve_per_core` share, made inside the runtime that runs the lifecycle.
pub(crate) struct Prepared {
    pub(crate) listeners: Vec<Listener>,
    pub(crate) http: HttpConfig,
    pub(crate) conn: ConnPolicy,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) admin: Option<(Listener, AdminService)>,
    pub(crate) blocks: BlockTasks,
    /// Running in `blocks`, when configured.
    pub(crate) overload: Option<OverloadManager>,
    /// With upgrades: cancelled once a new process took the sockets over.
    pub(crate) handed_over: Option<CancellationToken>,
}

impl Builder {
    /// Starts the lifecycle and the blocks' work. Call within the runtime that runs them.
    pub(crate) fn prepare(mut self) -> Result<Prepared, Error> {
        if self.listeners.is_empty() {
            return Err(Error::NoListeners);
        }
        // The past first: it keeps a duplicate of the readiness channel.
        let past = self
            .handed_over()?
            .map(Inherited::take_past)
            .unwrap_or_default();
        let previous = self
            .handed_over()?
            .map_or(0, |inherited| inherited.previous());
        let ready_channel = self.handed_over()?.and_then(Inherited::take_ready);
        let conn = self.take_policy();
        if conn.filter.is_some() || conn.bans.is_some() {
            portcullis_limit::metrics::register_edge();
        }
        let lifecycle = self.shutdown.start();
        for reload in std::mem::take(&mut self.reloaders) {
            lifecycle.on_reload(move || reload());
        }
        let mut blocks = if self.run_block_tasks {
            let upkeep = self.admin.as_ref().and_then(|(_, admin)| admin.upkeep_fn());
            BlockTasks::start(&lifecycle, conn.acceptors(), upkeep)?
        } else {
            BlockTasks::none()
        };
        // The server's own: run whatever `run_block_tasks` says.
        let overload = self.overload.is_on().then(|| {
            let manager = OverloadManager::new(self.overload.clone());
            let limits = conn.limits.clone();
            let cap = u64::try_from(limits.limits().max_total()).unwrap_or(u64::MAX);
            manager.count_connections(move || limits.open() as u64, cap);
            portcullis_health::metrics::register_overload();
            manager
        });
        let monitoring = Monitoring::new(
            std::mem::take(&mut self.health),
            self.admin.is_some(),
            overload.clone(),
        );
        monitoring.start(&mut blocks);
        let health = lifecycle.health().clone();
        // Started by an upgrade: tell the previous generation once this one is ready; until
        // it confirms, this one is on probation.
        let confirmed = CancellationToken::new();
        match ready_channel {
            Some(channel) => {
                let ready = monitoring.ready_fn(&health);
                let (lifecycle, confirmed) = (lifecycle.clone(), confirmed.clone());
                blocks.spawn(move |stop| {
                    upgrade::report_ready(channel, ready, lifecycle, previous, confirmed, stop)
                });
            }
            None => confirmed.cancel(),
        }
        let handed_over = match self.upgrade.take() {
            Some(config) => {
                let admin = self.admin.as_ref().map(|(listener, _)| listener);
                let upgrader = Upgrader::new(config, &self.listeners, admin, past)?;
                let token = CancellationToken::new();
                let (lifecycle, done) = (lifecycle.clone(), token.clone());
                blocks.spawn(move |stop| upgrader.run(lifecycle, confirmed, done, stop));
                Some(token)
            }
            None => None,
        };
        let bans = self.bans.take();
        Ok(Prepared {
            listeners: self.listeners,
            http: self.http,
            conn,
            lifecycle,
            admin: self.admin.map(|(listener, admin)| {
                let admin = monitoring.compose(admin, &health);
                (listener, AdminService::new(admin, bans))
            }),
            blocks,
            overload,
            handed_over,
        })
    }

    /// Serves `service` on every listener until the shutdown begins, then drains.
    ///
    /// `service` is any tower service over `http::Request<RequestBody>`, an axum
    /// `Router` included. It is cloned for every request. A panic in it, and an error it
    /// returns, become a 500 answer for that one request; a panic while producing a response
    /// body cuts that response short. The connection and the server live on either way.
    ///
    /// # Errors
    ///
    /// [`Error::NoListeners`] when no listener was added; [`Error::Signal`] when the SIGHUP
    /// handler for TLS reloads cannot be installed. Failures of individual connections are
    /// never errors of the server: they are counted and logged.
    ///
    /// # Panics
    ///
    /// Needs a tokio runtime with its I/O and time drivers enabled (`#[tokio::main]` has both):
    /// connection deadlines are tokio timers, and tokio panics on a timer without a time
    /// driver.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the returned future stops everything it started: the accept loops end (the
    /// listeners close), every connection is closed at once, as if forced, and the blocks'
    /// background work stops.
    pub async fn serve<S, B>(self, service: S) -> Result<ServeReport, Error>
    where
        S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Prepared {
            listeners,
            http,
            conn,
            lifecycle,
            admin,
            mut blocks,
            overload,
            handed_over,
        } = self.prepare()?;
        // Dropped early (the future was cancelled) or at the end: either way nothing of this
        // server outlives it.
        let _force_on_drop = ForceOnDrop(lifecycle.clone());
        let admin =
            admin.map(|(listener, admin)| AdminServer::start(listener, admin, lifecycle.health()));
        if let (Some(admin), Some(handed_over)) = (&admin, handed_over) {
            admin.stop_accepting_on(handed_over, &mut blocks);
        }
        let open = Arc::new(AtomicU64::new(0));
        let core = Core::new(
            service,
            &http,
            conn,
            (lifecycle.clone(), lifecycle.clone()),
            Arc::clone(&open),
            ServerMetrics::resolve(),
            overload,
        );
        lifecycle.count_open(move || open.load(Ordering::Relaxed));
        let accept_loops = core.start(listeners);
        lifecycle.serving();
        let delay_duration = lifecycle.run_until_drain().await;
        let drain_started = Instant::now();
        let mut report = core.drain(accept_loops, lifecycle.drain_timeout()).await;
        report.tasks_left = lifecycle
            .wait_for_tasks(drain_started + lifecycle.drain_timeout())
            .await;
        report.delay_duration = delay_duration;
        report.drain_duration = drain_started.elapsed();
        lifecycle.finish(drain_started);
        if let Some(admin) = admin {
            admin.stop().await;
        }
        drop(blocks);
        Ok(report)
    }
}
