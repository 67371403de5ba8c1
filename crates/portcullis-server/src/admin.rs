//! The admin listener: portcullis-metrics' admin service on a listener of its own, with the
//! bans' API at `/bans` when the server has bans.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use portcullis_limit::Bans;
use portcullis_listen::Listener;
use portcullis_metrics::{Admin, AdminBody};
use portcullis_shutdown::{Health, Lifecycle};
use tokio_util::task::AbortOnDropHandle;

use crate::accept::Core;
use crate::config::HttpConfig;
use crate::metrics::ServerMetrics;
use crate::policy::ConnPolicy;
use crate::serve::ForceOnDrop;

/// How long the admin listener's own connections get to finish once the application's drain
/// has ended: a scrape in progress completes, an idle scraper is closed at once.
pub const ADMIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What the admin listener serves: the admin service, and the bans' API.
#[derive(Clone, Debug)]
pub(crate) struct AdminService {
    admin: Admin,
    bans: Option<Bans>,
}

impl AdminService {
    pub(crate) fn new(admin: Admin, bans: Option<Bans>) -> Self {
        Self { admin, bans }
    }
}

impl<B> tower::Service<Request<B>> for AdminService {
    type Response = Response<AdminBody>;
    type Error = Infallible;
    type Future = Ready<Result<Response<AdminBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if let Some(answer) = self
            .bans
            .as_ref()
            .and_then(|bans| bans.answer(request.method(), request.uri()))
        {
            return ready(Ok(answer.map(AdminBody::from)));
        }
        self.admin.call(request)
    }
}

/// A running admin listener. Dropping it closes everything at once.
pub(crate) struct AdminServer {
    core: Core<AdminService>,
    lifecycle: Lifecycle,
    accept_loops: Vec<AbortOnDropHandle<()>>,
    _force_on_drop: ForceOnDrop,
}

impl AdminServer {
    /// Starts serving `admin` on `listener`; its probes report `health` unless `admin` has
    /// checks of its own. Call within the runtime that serves it.
    pub(crate) fn start(listener: Listener, service: AdminService, health: &Health) -> Self {
        let AdminService { mut admin, bans } = service;
        if !admin.has_readiness() {
            let health = health.clone();
            admin = admin.readiness(move || health.is_ready());
        }
        if !admin.has_liveness() {
            let health = health.clone();
            admin = admin.liveness(move || health.is_live());
        }
        // Its own lifecycle: the admin listener outlives the application's drain.
        let lifecycle = Lifecycle::new();
        let force_on_drop = ForceOnDrop(lifecycle.clone());
        // Scrapes and probes are not the application's traffic: no connection metrics.
        let core = Core::new(
            AdminService { admin, bans },
            &HttpConfig::default(),
            ConnPolicy::admin(),
            (lifecycle.clone(), lifecycle.clone()),
            std::sync::Arc::default(),
            ServerMetrics::noop(),
            None,
        );
        let accept_loops = core.start(vec![listener]);
        Self {
            core,
            lifecycle,
            accept_loops,
            _force_on_drop: force_on_drop,
        }
    }

    /// Closes the admin listener and drains its connections under [`ADMIN_DRAIN_TIMEOUT`].
    /// Stops accepting (its connections finish) once `handed_over` is cancelled: after an
    /// upgrade the new process serves the admin listener, and this one, draining, would
    /// answer `/readyz` with 503.
    pub(crate) fn stop_accepting_on(
        &self,
        handed_over: tokio_util::sync::CancellationToken,
        blocks: &mut crate::blocks::BlockTasks,
    ) {
        let lifecycle = self.lifecycle.clone();
        blocks.spawn(move |stop| async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = handed_over.cancelled() => {
                    lifecycle.advance(portcullis_shutdown::ShutdownPhase::Drain);
                }
            }
        });
    }

    pub(crate) async fn stop(self) {
        let Self {
            core,
            lifecycle,
            accept_loops,
            _force_on_drop,
        } = self;
        lifecycle.advance(portcullis_shutdown::ShutdownPhase::Drain);
        core.drain(accept_loops, ADMIN_DRAIN_TIMEOUT).await;
        lifecycle.advance(portcullis_shutdown::ShutdownPhase::Done);
    }
}
