//! Prometheus exposition through metrics-exporter-prometheus.

use std::fmt;

use metrics_exporter_prometheus::{
    BuildError, Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use tokio_util::sync::CancellationToken;

use crate::http::{REQUEST_DURATION, REQUEST_DURATION_BUCKETS};

use crate::admin::UPKEEP_INTERVAL;

/// Bucket upper bounds, in seconds, of every histogram without its own: portcullis's other
/// histograms are durations from milliseconds (a handshake) to an hour (a long-lived
/// connection).
pub const DEFAULT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// Bucket upper bounds, in seconds, of histograms named `*_call_duration_seconds`: calls to a
/// dependency on the request path (Redis for fleet rate limits), which take tens of
/// microseconds to a few milliseconds and are cut at a deadline of a few milliseconds.
pub const CALL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 1.0,
];

/// The name suffix of the histograms that get [`CALL_BUCKETS`].
pub const CALL_DURATION_SUFFIX: &str = "_call_duration_seconds";

/// Bucket upper bounds, in seconds, of histograms named `*_lag_seconds`: how late an event
/// loop runs a timer, tens of microseconds when healthy, seconds when something blocks it.
pub const LAG_BUCKETS: &[f64] = &[0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];

/// The name suffix of the histograms that get [`LAG_BUCKETS`].
pub const LAG_SUFFIX: &str = "_lag_seconds";

/// The installed Prometheus recorder: renders the text exposition format, and needs its
/// [upkeep](Self::upkeep) run regularly.
///
/// An exporter [installed](Self::install) as the process's recorder runs its own upkeep
/// every [`UPKEEP_INTERVAL`], on a thread of its own (`portcullis-metrics-upkeep`) that
/// lives as long as the recorder, that is as long as the process: nothing to spawn, and it
/// works with any runtime or none. An exporter [for a recorder of the caller's](Self::for_recorder)
/// (a test's local recorder) does not: handed to portcullis-server in an
/// [`Admin`](crate::Admin) ([`Admin::prometheus`](crate::Admin::prometheus)), the server runs
/// its upkeep while it serves; otherwise spawn [`run_upkeep`](Self::run_upkeep).
///
/// Only an executable installs it, once, early in `main`: a library that installed a
/// process-global recorder would take that choice away from its users. Installing a second
/// recorder is an [`InstallError`], never a panic. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PrometheusExporter {
    handle: PrometheusHandle,
    /// Whether the exporter's own thread runs the upkeep.
    upkeeps_itself: bool,
}

impl PrometheusExporter {
    /// A `PrometheusBuilder` with portcullis's histogram buckets: [`REQUEST_DURATION_BUCKETS`] for
    /// the HTTP request duration, [`CALL_BUCKETS`] for calls to dependencies (names ending in
    /// [`CALL_DURATION_SUFFIX`]), [`LAG_BUCKETS`] for event-loop lag (names ending in
    /// [`LAG_SUFFIX`]) and [`DEFAULT_BUCKETS`] for every other histogram, so that
    /// histograms render as Prometheus histograms (aggregatable across instances), not as
    /// per-process summaries. Adjust it and pass it to [`install_from`](Self::install_from).
    #[must_use]
    pub fn builder() -> PrometheusBuilder {
        PrometheusBuilder::new()
            .set_buckets(DEFAULT_BUCKETS)
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Full(REQUEST_DURATION.to_owned()),
                    REQUEST_DURATION_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(
                    Matcher::Suffix(CALL_DURATION_SUFFIX.to_owned()),
                    CALL_BUCKETS,
                )
            })
            .and_then(|builder| {
                builder.set_buckets_for_metric(Matcher::Suffix(LAG_SUFFIX.to_owned()), LAG_BUCKETS)
            })
            .unwrap_or_else(|_| unreachable!("the bucket lists are not empty"))
    }

    /// Installs the recorder of [`builder`](Self::builder) as the process-global recorder.
    ///
    /// # Errors
    ///
    /// [`InstallError`] when a recorder is already installed.
    pub fn install() -> Result<Self, InstallError> {
        Self::install_from(Self::builder())
    }

    /// Installs the recorder of `builder` as the process-global recorder, and starts the
    /// thread that runs its upkeep every [`UPKEEP_INTERVAL`] (see [`upkeeps_itself`](Self::upkeeps_itself)).
    ///
    /// # Errors
    ///
    /// [`InstallError`] when a recorder is already installed.
    pub fn install_from(builder: PrometheusBuilder) -> Result<Self, InstallError> {
        let handle = builder
            .install_recorder()
            .map_err(|error| InstallError { error })?;
        let upkept = handle.clone();
        // The global recorder is never uninstalled, so the thread never needs to end.
        let started = std::thread::Builder::new()
            .name("portcullis-metrics-upkeep".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkept.run_upkeep();
                }
            });
        if let Err(error) = &started {
            tracing::warn!(
                %error,
                "cannot start the metrics upkeep thread: the server serving /metrics runs the \
                 upkeep instead (or spawn PrometheusExporter::run_upkeep)"
            );
        }
        Ok(Self {
            handle,
            upkeeps_itself: started.is_ok(),
        })
    }

    /// Whether this exporter runs its own upkeep: one installed as the process's recorder
    /// does, on its own thread; one [for a recorder of the caller's](Self::for_recorder) does
    /// not, and [`Admin::prometheus`](crate::Admin::prometheus) then leaves the upkeep to the
    /// server.
    #[must_use]
    pub fn upkeeps_itself(&self) -> bool {
        self.upkeeps_itself
    }

    /// An exporter for a recorder the caller installs (or uses locally, with
    /// `metrics::with_local_recorder`, as tests do). Its upkeep is the caller's: a server
    /// serving it in an [`Admin`](crate::Admin) runs it, or spawn [`run_upkeep`](Self::run_upkeep).
    #[must_use]
    pub fn for_recorder(recorder: &PrometheusRecorder) -> Self {
        Self {
            handle: recorder.handle(),
            upkeeps_itself: false,
        }
    }

    /// The metrics in the Prometheus text exposition format.
    #[must_use]
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Runs the exporter's upkeep once.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// Runs the upkeep every [`UPKEEP_INTERVAL`] until `stop` is cancelled: for an exporter
    /// [for a recorder of the caller's](Self::for_recorder) that no portcullis server serves
    /// (one that does runs the upkeep itself). An installed exporter needs none of this.
    ///
    /// # Cancellation safety
    ///
    /// Safe to drop at any time; it holds nothing across an await but a timer.
    pub async fn run_upkeep(self, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(UPKEEP_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => self.upkeep(),
            }
        }
    }
}

/// A metrics recorder was already installed in this process.
#[derive(Debug)]
pub struct InstallError {
    error: BuildError,
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.error {
            BuildError::FailedToSetGlobalRecorder(_) => f.write_str(
                "cannot install the Prometheus exporter: a metrics recorder is already installed \
                 in this process (install one recorder, once, from the executable)",
            ),
            other => write!(f, "cannot install the Prometheus exporter: {other}"),
        }
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
