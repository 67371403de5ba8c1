//! Dependency health for portcullis servers: checks that run in the background, the
//! event-loop lag, and the overload manager.
//!
//! - [`HealthChecks`] holds the checks an application registers ([`Check`]: a name, an async
//!   probe, an interval, a timeout, the failures that take it down and the successes that
//!   bring it back, critical or not). [`HealthChecks::run`] runs them; [`HealthChecks::status`]
//!   reads their cached state, so a readiness probe never runs a check and never waits on a
//!   dependency (Spring Boot's probes run the checks on the request: a slow database makes
//!   the probes slow and piles load on it).
//! - [`checks`] has ready-made probes: a TCP connect, an HTTP GET expecting 2xx.
//! - [`LagProbe`] measures how late the event loop runs a timer (stable tokio, no
//!   instrumentation), records it as a histogram and a gauge, and tells liveness whether the
//!   loop still answers.
//!
//! - [`OverloadManager`] samples monitors of descriptors, memory, event-loop lag and open
//!   connections ([`Monitor`]), each a pressure from 0 to 1, and publishes the actions
//!   they trigger ([`Action`], [`Trigger`], configured by [`Overload`]) as one word the
//!   server's connections read with one atomic load ([`OverloadSignal`]). See [`overload`].
//!
//! portcullis-server runs all three for as long as it serves (`Builder::health_checks`,
//! `Builder::overload`), and its admin listener answers `/readyz` from them: 503 while any
//! critical check is down or the server sheds load, 200 with non-critical checks down
//! (degraded, listed by `/readyz?verbose`).
//!
//! ```
//! use std::time::Duration;
//!
//! use portcullis_health::{Check, HealthChecks, checks};
//!
//! let health = HealthChecks::new();
//! health.add(checks::tcp("db", "127.0.0.1:5432").interval(Duration::from_secs(2)));
//! // Not critical: when it is down the instance is degraded, and stays in rotation.
//! health.add(
//!     Check::new("cache", || async { Ok::<(), String>(()) }).critical(false),
//! );
//! // The server spawns `health.run(stop)`; until each critical check succeeded once, not ready.
//! assert!(!health.status().ready);
//! ```
//!
//! # Choosing critical checks
//!
//! A check is critical when this instance cannot serve anything useful without the
//! dependency *and* other instances could: a local sidecar, a database replica of its own. A
//! dependency every instance shares (the one primary database, a payment API) must not be
//! critical, or its outage takes every instance out of rotation at once and turns a partial
//! outage into a total one; make it non-critical and let the requests that need it fail
//! fast. See the repository's `docs/health.md`.
//!
//! # Metrics
//!
//! [`metrics`] lists the names; handles are resolved when [`HealthChecks::run`] starts.

mod check;
pub mod checks;
mod lag;
mod loom;
pub mod metrics;
pub mod overload;

pub use check::{
    Check, CheckState, CheckStatus, DEFAULT_FAILURES_TO_DOWN, DEFAULT_INTERVAL,
    DEFAULT_SUCCESSES_TO_UP, DEFAULT_TIMEOUT, HealthChecks, Status,
};
pub use lag::{DEFAULT_LAG_INTERVAL, LagProbe};
pub use overload::{
    Action, Actions, Monitor, Overload, OverloadManager, OverloadSignal, OverloadStatus,
    OverloadWatch, Trigger,
};
pub use tokio_util::sync::CancellationToken;
