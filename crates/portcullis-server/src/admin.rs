//! The admin listener: portcullis-metrics' admin service on a listener of its own.

use std::sync::Arc;
use std::time::Duration;

use portcullis_limit::{ConnLimiter, HandshakeLimiter};
use portcullis_listen::Listener;
use portcullis_metrics::Admin;
use portcullis_shutdown::Health;
use tokio_util::task::AbortOnDropHandle;

use super::{ConnPolicy, Core, ForceOnDrop, Tokens};
use crate::config::HttpConfig;
use crate::metrics::ServerMetrics;

/// How long the admin listener's own connections get to finish once the application's drain
/// has ended: a scrape in progress completes, an idle scraper is closed at once.
pub const ADMIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A running admin listener. Dropping it closes everything at once.
pub(super) struct AdminServer {
    core: Core<Admin>,
    accept_loops: Vec<AbortOnDropHandle<()>>,
    _force_on_drop: ForceOnDrop,
}

impl AdminServer {
    /// Starts serving `admin` on `listener`; its probes report `health` unless `admin` has
    /// checks of its own. Call within the runtime that serves it.
    pub(super) fn start(listener: Listener, mut admin: Admin, health: Option<&Health>) -> Self {
        if let Some(health) = health {
            if !admin.has_readiness() {
                let health = health.clone();
                admin = admin.readiness(move || health.is_ready());
            }
            if !admin.has_liveness() {
                let health = health.clone();
                admin = admin.liveness(move || health.is_live());
            }
        }
        // Its own phase: the admin listener outlives the application's drain.
        let tokens = Tokens::default();
        let force_on_drop = ForceOnDrop(Arc::clone(&tokens.phase));
        // Scrapes and probes are not the application's traffic: no connection metrics, and
        // none of its connection caps (a probe must get through when the caps are reached).
        let conn = ConnPolicy {
            info: false,
            peer: false,
            limits: ConnLimiter::new(usize::MAX),
            proxy: None,
            tls: None,
            listener_tls: Arc::from([]),
            handshakes: HandshakeLimiter::new(0),
        };
        let core = Core::new(
            admin,
            &HttpConfig::default(),
            conn,
            tokens,
            ServerMetrics::noop(),
        );
        let accept_loops = core.start(vec![listener]);
        Self {
            core,
            accept_loops,
            _force_on_drop: force_on_drop,
        }
    }

    /// Closes the admin listener and drains its connections under [`ADMIN_DRAIN_TIMEOUT`].
    pub(super) async fn stop(self) {
        let Self {
            core,
            accept_loops,
            _force_on_drop,
        } = self;
        core.drain(accept_loops, ADMIN_DRAIN_TIMEOUT).await;
    }
}
