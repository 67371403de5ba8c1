//! Graceful-shutdown building blocks for production servers.
//!
//! portcullis-server runs the shutdown (readiness off, drain delay, listeners closed, drain,
//! deadline, force, report); this crate holds what configures it and what application code
//! watches:
//!
//! - [`Shutdown`]: one value with the triggers (signals and/or a [`ShutdownHandle`]), the
//!   drain delay and deadline, and the handles: [`Health`], the shutdown token, the task
//!   tracker. Hand it to `portcullis_server::Builder::graceful`.
//! - [`Health`]: readiness and liveness state, shared by whoever changes it (start-up,
//!   shutdown) and whoever reports it (`/readyz`, `/livez`). Readiness starts false and is
//!   cleared at the first moment of a shutdown, before any listener closes.
//! - [`Signals`]: SIGTERM and SIGINT (and optionally SIGQUIT) handled explicitly, so they
//!   work as PID 1 in a container; the first starts a graceful shutdown, the next forces it.
//! - [`systemd`]: the `sd_notify` protocol (`READY=1`, `STOPPING=1`, `STATUS=`,
//!   `WATCHDOG=1`) and the watchdog interval from `WATCHDOG_USEC`.
//! - [`end_on_shutdown`]: ends a long-lived stream (SSE, chunked responses) when the
//!   server's shutdown token is cancelled, so its connection drains instead of being cut.
//! - [`metrics`]: the names of the metrics it emits (signals received).
//!
//! It never installs process-global state and never changes the environment.
//!
//! # Example
//!
//! ```no_run
//! use portcullis_shutdown::{Health, systemd};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let health = Health::new();
//! let notifier = systemd::Notifier::from_env()?; // None outside systemd
//! // ... every listener accepts:
//! health.set_ready(true);
//! if let Some(notifier) = &notifier {
//!     notifier.ready()?;
//! }
//! // ... shutdown begins: stop advertising first.
//! health.set_ready(false);
//! if let Some(notifier) = &notifier {
//!     notifier.stopping()?;
//! }
//! # Ok(()) }
//! ```
//!
//! # Crate features
//!
//! None. Builds on every target tokio supports: [`systemd`] exists on Unix only (the protocol
//! uses Unix datagram sockets); [`Signals`] maps the Windows console events to the signals and
//! is unsupported elsewhere.
#![forbid(unsafe_code)]

mod health;
mod lifecycle;
mod loom;
pub mod metrics;
pub mod phase;
mod shutdown;
mod signal;
mod stream;
#[cfg(unix)]
pub mod systemd;

pub use health::Health;
pub use lifecycle::{DrainProgress, Lifecycle};
pub use phase::{PhaseWatch, ShutdownPhase};
pub use shutdown::{
    DEFAULT_DRAIN_DELAY, DEFAULT_DRAIN_TIMEOUT, Shutdown, ShutdownHandle, ShutdownParts, Trigger,
};
pub use signal::{Hangups, Signal, Signals};
pub use stream::{EndOnShutdown, end_on_shutdown};
