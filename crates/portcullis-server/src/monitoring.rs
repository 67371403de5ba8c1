//! The server's monitoring: the dependency health checks the application registers and the
//! event-loop lag probe, run for as long as it serves, and what the admin listener's probes
//! and `/metrics` read from them.
//!
//! | probe | answers 200 when |
//! |---|---|
//! | `/readyz` | the lifecycle is serving (not starting, not draining) *and* every critical check is up *and* the overload manager neither sheds requests nor stopped accepting |
//! | `/readyz?verbose` | the same status; the body lists the server's state and every check |
//! | `/livez` | the lifecycle is live *and* the lag probe ran within [`LIVENESS_LAG_LIMIT`] |
//!
//! Liveness never depends on a dependency: a database outage must take instances out of
//! rotation (readiness), never get them restarted (liveness), which would only add a
//! restart storm to the outage.

use std::time::Duration;

use portcullis_health::{DEFAULT_LAG_INTERVAL, HealthChecks, LagProbe, OverloadManager};
use portcullis_metrics::Admin;
use portcullis_shutdown::Health;

use crate::blocks::BlockTasks;

/// How late the event-loop lag probe may be before `/livez` answers 503: a loop that has not
/// run a 100 ms timer for 10 s is wedged (a blocking call, a deadlock), and a restart is
/// what helps.
pub const LIVENESS_LAG_LIMIT: Duration = Duration::from_secs(10);

/// The checks and the probe of one server.
#[derive(Debug)]
pub(crate) struct Monitoring {
    checks: HealthChecks,
    /// Only with an admin listener: nobody else reads it.
    lag: Option<LagProbe>,
    overload: Option<OverloadManager>,
}

impl Monitoring {
    pub(crate) fn new(
        checks: HealthChecks,
        admin: bool,
        overload: Option<OverloadManager>,
    ) -> Self {
        Self {
            checks,
            lag: admin.then(|| LagProbe::new(DEFAULT_LAG_INTERVAL)),
            overload,
        }
    }

    /// Runs the checks and the probe in `blocks`, so that they stop with the server.
    pub(crate) fn start(&self, blocks: &mut BlockTasks) {
        if !self.checks.is_empty() {
            let checks = self.checks.clone();
            blocks.spawn(move |stop| async move { checks.run(stop).await });
        }
        if let Some(lag) = &self.lag {
            let lag = lag.clone();
            blocks.spawn(move |stop| async move { lag.run(stop).await });
        }
        if let Some(overload) = &self.overload {
            let overload = overload.clone();
            blocks.spawn(move |stop| async move { overload.run(stop).await });
        }
    }

    /// The server's readiness: serving, every critical check up, no overload refusal.
    pub(crate) fn ready_fn(&self, health: &Health) -> impl Fn() -> bool + Send + 'static {
        let (serving, checks) = (health.clone(), self.checks.clone());
        let overload = self.overload.clone();
        move || {
            serving.is_ready()
                && checks.status().ready
                && overload.as_ref().is_none_or(|o| !o.status().is_refusing())
        }
    }

    /// `admin` with the server's probes where it has none of its own, and the current
    /// runtime's metrics unless it names a runtime.
    pub(crate) fn compose(&self, mut admin: Admin, health: &Health) -> Admin {
        if !admin.has_readiness() {
            admin = admin.readiness(self.ready_fn(health));
            let (serving, checks) = (health.clone(), self.checks.clone());
            let overload = self.overload.clone();
            admin = admin.readiness_details(move || details(&serving, &checks, overload.as_ref()));
        }
        if !admin.has_liveness() {
            let (alive, lag) = (health.clone(), self.lag.clone());
            admin = admin.liveness(move || {
                alive.is_live()
                    && lag
                        .as_ref()
                        .is_none_or(|lag| lag.is_live(LIVENESS_LAG_LIMIT))
            });
        }
        if !admin.has_runtime()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            admin = admin.runtime(runtime);
        }
        admin
    }
}

/// The body of `/readyz?verbose`.
fn details(health: &Health, checks: &HealthChecks, overload: Option<&OverloadManager>) -> String {
    let status = checks.status();
    let overload = overload.map(OverloadManager::status);
    let refusing = overload.as_ref().is_some_and(|o| o.is_refusing());
    let ready = health.is_ready() && status.ready && !refusing;
    let mut out = format!(
        "{}\nserver: {}\n",
        if !ready {
            "not ready"
        } else if status.degraded {
            "ready, degraded"
        } else {
            "ready"
        },
        if !health.is_ready() {
            "not serving (starting or draining)"
        } else if refusing {
            "overloaded (shedding requests or not accepting)"
        } else {
            "serving"
        },
    );
    out.push_str(&status.verbose());
    if let Some(overload) = overload {
        out.push_str(&overload.verbose());
    }
    out
}
