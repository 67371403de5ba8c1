//! Graceful shutdown for production servers: one lifecycle from serving to drained, the
//! signals that move it, readiness, and systemd.
//!
//! portcullis-server runs the shutdown (readiness off, drain delay, listeners closed, drain,
//! deadline, force, report); this crate holds the configuration, the state machine it moves
//! through, and what application code watches:
//!
//! - [`Shutdown`]: the configuration of one graceful shutdown, and the handles application
//!   code keeps: the triggers (signals and/or a [`ShutdownHandle`], any future with
//!   [`Shutdown::trigger`]), the drain delay and deadline, [`Health`], the shutdown token, the
//!   task tracker, hooks ([`Shutdown::on_phase`], [`Shutdown::on_drain_progress`]) and
//!   systemd reporting ([`Shutdown::systemd`]). Hand it to `portcullis_server::Builder::graceful`.
//! - [`Lifecycle`]: the running shutdown, made by [`Shutdown::start`]. A cheap handle over the
//!   phase state machine and everything that follows its moves: readiness, the token, the
//!   phase gauge, the hooks, systemd's `READY`/`STOPPING`/`STATUS`/`WATCHDOG`, and the
//!   reloads run on SIGHUP ([`Lifecycle::on_reload`]). A server drives it; application code
//!   rarely sees it.
//! - [`ShutdownPhase`]: the five phases, in order: `running` (serving), `delay` (readiness
//!   off, still serving for the drain delay), `drain` (listeners closed, connections
//!   finishing), `forced` (the deadline passed or a second signal came: every connection
//!   closes now), `done`. The [`phase`] module draws the diagram; [`PhaseWatch`] follows it
//!   from hand-written futures at the cost of one atomic load per poll.
//! - [`Signals`]: SIGTERM and SIGINT (and optionally SIGQUIT) handled explicitly, so they
//!   work as PID 1 in a container; the first starts a graceful shutdown, the next forces it.
//!   On Unix it catches SIGHUP too ([`Hangups`]): a SIGHUP never ends the process, and a
//!   lifecycle started with signals runs its reloaders on each one (portcullis-server's TLS
//!   certificates).
//! - [`Health`]: readiness and liveness, shared by whoever changes them and whoever reports
//!   them (`/readyz`, `/livez`). Readiness starts false and is cleared at the first moment of
//!   a shutdown, before any listener closes.
//! - [`systemd`]: the `sd_notify` protocol (`READY=1`, `STOPPING=1`, `STATUS=`,
//!   `WATCHDOG=1`) and the watchdog interval from `WATCHDOG_USEC`, for [`Shutdown::systemd`]
//!   or by hand.
//! - [`end_on_shutdown`]: ends a long-lived stream (SSE, chunked responses) when the
//!   shutdown token is cancelled, so its connection drains instead of being cut.
//! - [`metrics`]: the names of the metrics it emits (signals received, the phase, the drain
//!   duration), [`metrics::describe`] for their help text and [`metrics::register`] to export
//!   every series of their closed label sets (as 0) from the start.
//!
//! It does not accept connections or close them (portcullis-server does, watching the
//! phase), never installs a metrics recorder, and installs signal handlers only when asked
//! ([`Signals::new`], [`Shutdown::from_signals`]).
//!
//! # Example
//!
//! With portcullis-server the whole sequence below is `.graceful(Shutdown::from_signals()?)`;
//! this is what a server does with a [`Shutdown`]:
//!
//! ```
//! use std::time::Duration;
//! use portcullis_shutdown::{Shutdown, ShutdownPhase};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // `Shutdown::from_signals()?` for SIGTERM/SIGINT; here only the handle triggers it.
//! let shutdown = Shutdown::new().drain_timeout(Duration::from_secs(10));
//! let handle = shutdown.handle();
//! let health = shutdown.health();
//! let token = shutdown.token();
//! // Background work the drain waits for, under its deadline.
//! shutdown.tasks().spawn(async move {
//!     token.cancelled().await; // the first moment of the shutdown
//!     // flush, then return
//! });
//!
//! let lifecycle = shutdown.start(); // triggers listened for from now on
//! lifecycle.serving(); // every listener accepts: ready (and READY=1 under systemd)
//! assert!(health.is_ready());
//!
//! handle.shutdown(); // as SIGTERM would
//! lifecycle.run_until_drain().await; // readiness off, token cancelled, drain delay
//! assert!(!health.is_ready());
//! assert_eq!(lifecycle.phase(), ShutdownPhase::Drain);
//! // ... the server closes its listeners and drains its connections here ...
//! let drain_started = tokio::time::Instant::now();
//! let left = lifecycle.wait_for_tasks(drain_started + lifecycle.drain_timeout()).await;
//! assert_eq!(left, 0);
//! lifecycle.finish(drain_started);
//! assert_eq!(lifecycle.phase(), ShutdownPhase::Done);
//! # }
//! ```
//!
//! # Design
//!
//! Configuration and the running state are different types: a [`Shutdown`] is plain
//! configuration plus the handles it hands out; [`Shutdown::start`] turns it into the one
//! [`Lifecycle`] whose clones all share one state machine. The triggers (signals, the handle,
//! added futures) and SIGHUP are listened for on tasks the lifecycle owns; they end with its
//! last handle, so nothing has to be spawned or stopped by hand.
//!
//! There is one representation of where a server is: the phase atomic of [`phase`]. The
//! token, readiness, the gauges, the hooks and systemd's messages are all derived from its
//! moves, at the move itself (readiness is off before anything waiting for `delay` runs). The
//! phase only moves forward, so a repeat or a late trigger does nothing. Connections read it
//! on every poll (one atomic load) and are woken through one `Notify` per phase; the reasons,
//! and the loom schedule that forced that design, are in the [`phase`] module's docs
//! (`RUSTFLAGS="--cfg portcullis_loom" cargo test -p portcullis-shutdown --lib loom`). A
//! per-core server gives each core a [`Lifecycle::follower`], moved along by the leader.
//!
//! # Metrics
//!
//! Emitted through the [`metrics`](https://docs.rs/metrics) facade only. The phase and
//! drain-duration gauges are resolved by [`Shutdown::start`] (when serving starts, after the
//! executable installed its recorder), the signal counter at each signal.
//!
//! # Dependencies in the public API
//!
//! - **tokio**: the lifecycle and the signals need a tokio runtime; [`Lifecycle::finish`]
//!   and [`Lifecycle::wait_for_tasks`] take `tokio::time::Instant`.
//! - **tokio-util**: [`CancellationToken`] (the shutdown token) and [`TaskTracker`] (the
//!   tracked tasks), re-exported so callers need not depend on the same version.
//! - **futures-core**: [`EndOnShutdown`] implements its `Stream` trait, the one every async
//!   stream crate uses.
//!
//! # Crate features
//!
//! None. Builds on every target tokio supports: [`systemd`] exists on Unix only (the protocol
//! uses Unix datagram sockets), and so does SIGHUP; [`Signals`] maps the Windows console
//! events to the signals and is unsupported elsewhere.
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

/// The shutdown token's type, from tokio-util.
pub use tokio_util::sync::CancellationToken;
/// The tracked tasks' type, from tokio-util.
pub use tokio_util::task::TaskTracker;
