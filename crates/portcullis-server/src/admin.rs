//! The admin listener: portcullis-metrics' admin service on a listener of its own.

use std::time::Duration;

use portcullis_listen::Listener;
use portcullis_metrics::Admin;
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

/// A running admin listener. Dropping it closes everything at once.
pub(crate) struct AdminServer {
    core: Core<Admin>,
    lifecycle: Lifecycle,
    accept_loops: Vec<AbortOnDropHandle<()>>,
    _force_on_drop: ForceOnDrop,
}

impl AdminServer {
    /// Starts serving `admin` on `listener`; its probes report `health` unless `admin` has
    /// checks of its own. Call within the runtime that serves it.
    pub(crate) fn start(listener: Listener, mut admin: Admin, health: &Health) -> Self {
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
            admin,
            &HttpConfig::default(),
            ConnPolicy::admin(),
            (lifecycle.clone(), lifecycle.clone()),
            std::sync::Arc::default(),
            ServerMetrics::noop(),
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
