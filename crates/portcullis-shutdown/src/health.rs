//! Readiness and liveness: what `/readyz` and `/livez` answer.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Readiness and liveness of a server, shared by whoever changes them (start-up, shutdown)
/// and whoever reports them (an admin endpoint, a systemd notifier).
///
/// Cheap to clone: every clone sees and changes the same state.
///
/// - **Ready** (should the load balancer send traffic here?) starts `false`: nothing is
///   listening yet. A server sets it once every listener accepts, and shutdown clears it at
///   its very first moment, before the listeners close, so orchestrators stop routing new
///   requests while the server still answers them.
/// - **Live** (should the orchestrator restart this process?) starts `true`: a process that
///   runs its event loop is alive. Clear it only when the process is wedged beyond repair.
///
/// ```
/// use portcullis_shutdown::Health;
///
/// let health = Health::new();
/// assert!(!health.is_ready() && health.is_live());
/// health.set_ready(true);
/// let seen_by_admin = health.clone();
/// health.set_ready(false); // shutdown begins
/// assert!(!seen_by_admin.is_ready());
/// ```
#[derive(Clone, Default)]
pub struct Health(Arc<State>);

struct State {
    ready: AtomicBool,
    live: AtomicBool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            live: AtomicBool::new(true),
        }
    }
}

impl Health {
    /// Not ready, live.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the server should receive traffic.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// Whether the process is healthy enough to keep running.
    #[must_use]
    pub fn is_live(&self) -> bool {
        self.0.live.load(Ordering::Acquire)
    }

    /// Marks the server ready or not ready. Returns the previous value.
    pub fn set_ready(&self, ready: bool) -> bool {
        self.0.ready.swap(ready, Ordering::AcqRel)
    }

    /// Marks the process live or not live. Returns the previous value.
    pub fn set_live(&self, live: bool) -> bool {
        self.0.live.swap(live, Ordering::AcqRel)
    }
}

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.is_ready())
            .field("live", &self.is_live())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_state_and_debug_shows_it() {
        let health = Health::new();
        let other = health.clone();
        assert!(!other.set_ready(true));
        assert!(health.is_ready());
        assert!(other.set_live(false));
        assert!(!health.is_live());
        assert_eq!(format!("{health:?}"), "Health { ready: true, live: false }");
    }
}
