//! What serving did, reported when it ends.

use std::process::ExitCode;
use std::time::Duration;

/// The result of a server run that ended in a shutdown.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServeReport {
    /// Connections served over the whole run.
    pub connections: u64,
    /// Connections that closed without being forced once the drain had begun (gracefully,
    /// or by a timeout or an error of their own).
    pub drained: u64,
    /// Connections still open at the drain deadline (or when the drain was forced), closed by
    /// force.
    pub forced: u64,
    /// From the shutdown trigger until the drain began: the drain delay, with readiness off
    /// and the server still serving (shorter if the force trigger cut it).
    pub delay_duration: Duration,
    /// From the start of the drain (listeners closed) until the last connection and tracked
    /// task was gone, or the deadline.
    pub drain_duration: Duration,
    /// Application tasks ([`Builder::track_tasks`](crate::Builder::track_tasks)) still
    /// running at the drain deadline.
    pub tasks_left: u64,
}

impl ServeReport {
    /// Whether every connection, and every tracked application task, finished by itself
    /// before the drain deadline.
    #[must_use]
    pub fn is_clean(&self) -> bool {
        self.forced == 0 && self.tasks_left == 0
    }

    /// The process exit status this run deserves: success after a clean drain, 1 when
    /// connections had to be forced closed.
    #[must_use]
    pub fn exit_code(&self) -> ExitCode {
        if self.is_clean() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }

    pub(crate) fn merge(&mut self, other: &ServeReport) {
        self.connections += other.connections;
        self.drained += other.drained;
        self.forced += other.forced;
        // Every core sees the same application tracker: the count is shared, not per core.
        self.tasks_left = self.tasks_left.max(other.tasks_left);
        self.drain_duration = self.drain_duration.max(other.drain_duration);
        self.delay_duration = self.delay_duration.max(other.delay_duration);
    }
}
