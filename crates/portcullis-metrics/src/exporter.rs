//! Prometheus exposition: portcullis's own recorder ([`PrometheusRecorder`]) and its buckets.

use std::fmt;
use std::sync::Arc;

use crate::http::{REQUEST_DURATION, REQUEST_DURATION_BUCKETS};
use crate::recorder::{BucketRules, PrometheusRecorder};
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

/// How a [`PrometheusRecorder`] buckets its histograms: [`PrometheusExporter::builder`]
/// gives portcullis's; change them before [`build_recorder`](Self::build_recorder) or
/// [`PrometheusExporter::install_from`].
#[derive(Clone, Debug)]
pub struct ExporterBuilder {
    rules: BucketRules,
}

impl ExporterBuilder {
    /// The bucket upper bounds (seconds, or the histogram's unit) of every histogram
    /// without bounds of its own.
    ///
    /// # Panics
    ///
    /// When `bounds` is empty, not strictly increasing, or holds a NaN.
    #[must_use]
    pub fn default_buckets(mut self, bounds: &[f64]) -> Self {
        self.rules.default = checked(bounds);
        self
    }

    /// The bucket bounds of the histogram named `name`; they win over a suffix's.
    ///
    /// # Panics
    ///
    /// As [`default_buckets`](Self::default_buckets).
    #[must_use]
    pub fn buckets_for_name(mut self, name: impl Into<String>, bounds: &[f64]) -> Self {
        self.rules.names.insert(0, (name.into(), checked(bounds)));
        self
    }

    /// The bucket bounds of the histograms whose names end in `suffix`.
    ///
    /// # Panics
    ///
    /// As [`default_buckets`](Self::default_buckets).
    #[must_use]
    pub fn buckets_for_suffix(mut self, suffix: impl Into<String>, bounds: &[f64]) -> Self {
        self.rules
            .suffixes
            .insert(0, (suffix.into(), checked(bounds)));
        self
    }

    /// A recorder with these buckets, not installed: for `metrics::with_local_recorder` in
    /// tests, or to install by hand.
    #[must_use]
    pub fn build_recorder(self) -> PrometheusRecorder {
        PrometheusRecorder::new(self.rules)
    }
}

/// Bucket bounds as the recorder keeps them.
fn checked(bounds: &[f64]) -> Arc<[f64]> {
    assert!(
        !bounds.is_empty()
            && bounds.iter().all(|b| !b.is_nan())
            && bounds.windows(2).all(|w| w[0] < w[1]),
        "histogram buckets must be non-empty and strictly increasing: {bounds:?}"
    );
    Arc::from(bounds)
}

/// The Prometheus exposition of the process's metrics: renders its [`PrometheusRecorder`]
/// in the text format. Nothing runs between scrapes: histograms are bucketed as they are
/// recorded.
///
/// Only an executable installs it, once, early in `main`: a library that installed a
/// process-global recorder would take that choice away from its users. Installing a second
/// recorder is an [`InstallError`], never a panic. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PrometheusExporter {
    recorder: PrometheusRecorder,
}

impl PrometheusExporter {
    /// Portcullis's histogram buckets: [`REQUEST_DURATION_BUCKETS`] for the HTTP request
    /// duration, [`CALL_BUCKETS`] for calls to dependencies (names ending in
    /// [`CALL_DURATION_SUFFIX`]), [`LAG_BUCKETS`] for event-loop lag (names ending in
    /// [`LAG_SUFFIX`]) and [`DEFAULT_BUCKETS`] for every other histogram, so that
    /// histograms render as Prometheus histograms (aggregatable across instances). Adjust
    /// it and pass it to [`install_from`](Self::install_from).
    #[must_use]
    pub fn builder() -> ExporterBuilder {
        ExporterBuilder {
            rules: BucketRules {
                names: vec![(
                    REQUEST_DURATION.to_owned(),
                    checked(REQUEST_DURATION_BUCKETS),
                )],
                suffixes: vec![
                    (CALL_DURATION_SUFFIX.to_owned(), checked(CALL_BUCKETS)),
                    (LAG_SUFFIX.to_owned(), checked(LAG_BUCKETS)),
                ],
                default: checked(DEFAULT_BUCKETS),
            },
        }
    }

    /// Installs the recorder of [`builder`](Self::builder) as the process-global recorder.
    ///
    /// # Errors
    ///
    /// [`InstallError`] when a recorder is already installed.
    pub fn install() -> Result<Self, InstallError> {
        Self::install_from(Self::builder())
    }

    /// Installs the recorder of `builder` as the process-global recorder.
    ///
    /// # Errors
    ///
    /// [`InstallError`] when a recorder is already installed.
    pub fn install_from(builder: ExporterBuilder) -> Result<Self, InstallError> {
        let recorder = builder.build_recorder();
        metrics::set_global_recorder(recorder.clone()).map_err(|_| InstallError(()))?;
        Ok(Self { recorder })
    }

    /// An exporter for a recorder the caller installs (or uses locally, with
    /// `metrics::with_local_recorder`, as tests do).
    #[must_use]
    pub fn for_recorder(recorder: &PrometheusRecorder) -> Self {
        Self {
            recorder: recorder.clone(),
        }
    }

    /// The metrics in the Prometheus text exposition format.
    #[must_use]
    pub fn render(&self) -> String {
        self.recorder.render()
    }
}

/// A metrics recorder was already installed in this process.
#[derive(Debug)]
pub struct InstallError(());

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "cannot install the Prometheus exporter: a metrics recorder is already installed \
             in this process (install one recorder, once, from the executable)",
        )
    }
}

impl std::error::Error for InstallError {}
