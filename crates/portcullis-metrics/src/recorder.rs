//! A metrics recorder built for servers, behind the `metrics` facade: counters and gauges
//! are one atomic each, and histograms are pre-bucketed: a sample is one bucket increment
//! and one add to the sum, with no timestamp, no sample buffer and no upkeep. A scrape reads
//! the atomics and renders the Prometheus text exposition format.
//!
//! Samples are folded into their bucket as they are recorded, so memory does not grow with
//! traffic and nothing has to run between scrapes: the cost of a general-purpose exporter's
//! sample buffer (an epoch-protected push and a clock read per sample, an upkeep to drain
//! it) is gone. The price is that a histogram's buckets are fixed when its series is first
//! recorded, which is what a Prometheus histogram is anyway.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use metrics_util::registry::{Registry, Storage};

/// Which bucket bounds a histogram gets, by its name.
#[derive(Clone, Debug)]
pub(crate) struct BucketRules {
    /// Bounds for one full name.
    pub(crate) names: Vec<(String, Arc<[f64]>)>,
    /// Bounds for names ending in a suffix.
    pub(crate) suffixes: Vec<(String, Arc<[f64]>)>,
    /// Bounds for every other histogram.
    pub(crate) default: Arc<[f64]>,
}

impl BucketRules {
    fn bounds(&self, name: &str) -> Arc<[f64]> {
        self.names
            .iter()
            .find(|(full, _)| full == name)
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| name.ends_with(suffix.as_str()))
            })
            .map_or_else(
                || Arc::clone(&self.default),
                |(_, bounds)| Arc::clone(bounds),
            )
    }
}

/// A histogram with fixed buckets: counts per bucket (the last one past every bound, `+Inf`)
/// and the sum of the samples.
#[derive(Debug)]
pub(crate) struct Buckets {
    bounds: Arc<[f64]>,
    counts: Box<[AtomicU64]>,
    /// The sum, as `f64` bits.
    sum: AtomicU64,
}

impl Buckets {
    fn new(bounds: Arc<[f64]>) -> Self {
        let counts = (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds,
            counts,
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// The counts per bucket (not cumulative) and the sum, as one scrape sees them.
    fn snapshot(&self) -> (Vec<u64>, f64) {
        let counts = self
            .counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        (counts, f64::from_bits(self.sum.load(Ordering::Relaxed)))
    }
}

/// Up to this many bounds, a sample's bucket is found by a scan from the bottom.
const LINEAR_SCAN: usize = 32;

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        if value.is_nan() {
            return;
        }
        // The first bound at or above the value: Prometheus buckets are `le`. Found from the
        // bottom: most samples (a server's durations, sizes) fall in the first few buckets,
        // where a scan is a predicted branch or two, against a binary search's chain of
        // dependent loads; long lists of bounds are searched.
        let at = if self.bounds.len() <= LINEAR_SCAN {
            self.bounds
                .iter()
                .position(|&bound| value <= bound)
                .unwrap_or(self.bounds.len())
        } else {
            self.bounds.partition_point(|&bound| bound < value)
        };
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        let mut sum = self.sum.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(sum) + value).to_bits();
            match self
                .sum
                .compare_exchange_weak(sum, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => sum = now,
            }
        }
    }
}

/// The registry's storage: plain atomics, and histograms bucketed by [`BucketRules`].
#[derive(Debug)]
pub(crate) struct ServerStorage {
    rules: BucketRules,
}

impl Storage<Key> for ServerStorage {
    type Counter = Arc<AtomicU64>;
    type Gauge = Arc<AtomicU64>;
    type Histogram = Arc<Buckets>;

    fn counter(&self, _: &Key) -> Self::Counter {
        Arc::new(AtomicU64::new(0))
    }

    fn gauge(&self, _: &Key) -> Self::Gauge {
        Arc::new(AtomicU64::new(0f64.to_bits()))
    }

    fn histogram(&self, key: &Key) -> Self::Histogram {
        Arc::new(Buckets::new(self.rules.bounds(key.name())))
    }
}

/// The recorder of a [`PrometheusExporter`](crate::PrometheusExporter): install it with
/// [`PrometheusExporter::install`](crate::PrometheusExporter::install), or use it locally
/// (`metrics::with_local_recorder`) and render it through
/// [`PrometheusExporter::for_recorder`](crate::PrometheusExporter::for_recorder). Cheap to
/// clone: clones share the metrics.
#[derive(Clone)]
pub struct PrometheusRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry<Key, ServerStorage>,
    /// `# HELP` texts by metric name.
    descriptions: Mutex<HashMap<String, SharedString>>,
}

impl std::fmt::Debug for PrometheusRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusRecorder").finish_non_exhaustive()
    }
}

impl PrometheusRecorder {
    pub(crate) fn new(rules: BucketRules) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Registry::new(ServerStorage { rules }),
                descriptions: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn describe(&self, name: &KeyName, description: SharedString) {
        self.inner
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.as_str().to_owned(), description);
    }

    /// Every series in the Prometheus text exposition format (version 0.0.4): metrics sorted
    /// by name, each with its `# HELP` (when described) and `# TYPE`, series sorted by their
    /// labels.
    #[must_use]
    pub fn render(&self) -> String {
        enum Family {
            Counter(Vec<(String, u64)>),
            Gauge(Vec<(String, f64)>),
            Histogram(Vec<(Key, Arc<Buckets>)>),
        }
        let mut families: BTreeMap<String, Family> = BTreeMap::new();
        let registry = &self.inner.registry;
        registry.visit_counters(|key, counter| {
            let family = families
                .entry(key.name().to_owned())
                .or_insert_with(|| Family::Counter(Vec::new()));
            if let Family::Counter(series) = family {
                series.push((labels(key, None), counter.load(Ordering::Relaxed)));
            }
        });
        registry.visit_gauges(|key, gauge| {
            let family = families
                .entry(key.name().to_owned())
                .or_insert_with(|| Family::Gauge(Vec::new()));
            if let Family::Gauge(series) = family {
                series.push((
                    labels(key, None),
                    f64::from_bits(gauge.load(Ordering::Relaxed)),
                ));
            }
        });
        registry.visit_histograms(|key, histogram| {
            let family = families
                .entry(key.name().to_owned())
                .or_insert_with(|| Family::Histogram(Vec::new()));
            if let Family::Histogram(series) = family {
                series.push((key.clone(), Arc::clone(histogram)));
            }
        });
        let descriptions = self
            .inner
            .descriptions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut out = String::with_capacity(64 * families.len());
        for (name, family) in families {
            if let Some(help) = descriptions.get(&name) {
                let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            }
            match family {
                Family::Counter(mut series) => {
                    let _ = writeln!(out, "# TYPE {name} counter");
                    series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    for (labels, value) in series {
                        let _ = writeln!(out, "{name}{labels} {value}");
                    }
                }
                Family::Gauge(mut series) => {
                    let _ = writeln!(out, "# TYPE {name} gauge");
                    series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    for (labels, value) in series {
                        let _ = writeln!(out, "{name}{labels} {}", float(value));
                    }
                }
                Family::Histogram(series) => {
                    let _ = writeln!(out, "# TYPE {name} histogram");
                    let mut series: Vec<(String, Arc<Buckets>, Key)> = series
                        .into_iter()
                        .map(|(key, histogram)| (labels(&key, None), histogram, key))
                        .collect();
                    series.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    for (labels_text, histogram, key) in series {
                        let (counts, sum) = histogram.snapshot();
                        let mut cumulative = 0u64;
                        for (at, count) in counts.iter().enumerate() {
                            cumulative += count;
                            let le = histogram
                                .bounds
                                .get(at)
                                .map_or_else(|| "+Inf".to_owned(), |&bound| float(bound));
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {cumulative}",
                                labels(&key, Some(&le))
                            );
                        }
                        let _ = writeln!(out, "{name}_sum{labels_text} {}", float(sum));
                        let _ = writeln!(out, "{name}_count{labels_text} {cumulative}");
                    }
                }
            }
        }
        out
    }
}

/// `{name="value",...}` of `key`'s labels (with `le` last when given), or nothing.
fn labels(key: &Key, le: Option<&str>) -> String {
    let mut out = String::new();
    let mut first = true;
    let mut push = |name: &str, value: &str| {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    };
    for label in key.labels() {
        push(label.key(), label.value());
    }
    if let Some(le) = le {
        push("le", le);
    }
    if !first {
        out.push('}');
    }
    out
}

/// A `# HELP` text: backslashes and line breaks escaped.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as Prometheus writes one.
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

impl Recorder for PrometheusRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(&key, description);
    }

    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(&key, description);
    }

    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        self.describe(&key, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.inner
            .registry
            .get_or_create_counter(key, |counter| Counter::from_arc(Arc::clone(counter)))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.inner
            .registry
            .get_or_create_gauge(key, |gauge| Gauge::from_arc(Arc::clone(gauge)))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.inner
            .registry
            .get_or_create_histogram(key, |histogram| Histogram::from_arc(Arc::clone(histogram)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rules() -> BucketRules {
        BucketRules {
            names: vec![("latency".to_owned(), Arc::from(&[0.1, 1.0][..]))],
            suffixes: vec![("_lag_seconds".to_owned(), Arc::from(&[0.5][..]))],
            default: Arc::from(&[10.0][..]),
        }
    }

    #[test]
    fn renders_every_kind_with_help_type_and_escaped_labels() {
        let recorder = PrometheusRecorder::new(rules());
        metrics::with_local_recorder(&recorder, || {
            metrics::describe_counter!("hits_total", "Hits.\nMany of them.");
            metrics::counter!("hits_total", "path" => "a\"b\\c").increment(3);
            metrics::counter!("hits_total").increment(1);
            metrics::gauge!("open").set(2.5);
            metrics::gauge!("open").decrement(1.0);
            let latency = metrics::histogram!("latency", "method" => "GET");
            for value in [0.05, 0.1, 0.5, 7.0, f64::NAN] {
                latency.record(value);
            }
            metrics::histogram!("loop_lag_seconds").record(0.25);
        });
        let text = recorder.render();
        let expected = "\
# HELP hits_total Hits.\\nMany of them.
# TYPE hits_total counter
hits_total 1
hits_total{path=\"a\\\"b\\\\c\"} 3
# TYPE latency histogram
latency_bucket{method=\"GET\",le=\"0.1\"} 2
latency_bucket{method=\"GET\",le=\"1\"} 3
latency_bucket{method=\"GET\",le=\"+Inf\"} 4
latency_sum{method=\"GET\"} 7.65
latency_count{method=\"GET\"} 4
# TYPE loop_lag_seconds histogram
loop_lag_seconds_bucket{le=\"0.5\"} 1
loop_lag_seconds_bucket{le=\"+Inf\"} 1
loop_lag_seconds_sum 0.25
loop_lag_seconds_count 1
# TYPE open gauge
open 1.5
";
        assert_eq!(text, expected);
    }

    #[test]
    fn values_are_written_as_prometheus_reads_them() {
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(0.0001), "0.0001");
        assert_eq!(float(3.0), "3");
    }

    proptest! {
        /// Every sample lands in exactly one bucket, the first whose bound is at or above it,
        /// and the sum is the samples' sum.
        #[test]
        fn buckets_count_each_sample_once(samples in proptest::collection::vec(0.0f64..100.0, 0..200)) {
            let bounds: Arc<[f64]> = Arc::from(&[0.5, 1.0, 10.0, 50.0][..]);
            let long: Arc<[f64]> = (1..=LINEAR_SCAN + 8).map(|n| n as f64 * 2.5).collect();
            let searched = Buckets::new(Arc::clone(&long));
            for &sample in &samples {
                searched.record(sample);
            }
            let (counts, _) = searched.snapshot();
            for (at, &count) in counts.iter().enumerate() {
                let low = if at == 0 { f64::NEG_INFINITY } else { long[at - 1] };
                let high = long.get(at).copied().unwrap_or(f64::INFINITY);
                let expected = samples.iter().filter(|&&s| s > low && s <= high).count() as u64;
                prop_assert_eq!(count, expected, "searched bucket {}", at);
            }
            let histogram = Buckets::new(Arc::clone(&bounds));
            for &sample in &samples {
                histogram.record(sample);
            }
            let (counts, sum) = histogram.snapshot();
            prop_assert_eq!(counts.iter().sum::<u64>(), samples.len() as u64);
            for (at, &count) in counts.iter().enumerate() {
                let low = if at == 0 { f64::NEG_INFINITY } else { bounds[at - 1] };
                let high = bounds.get(at).copied().unwrap_or(f64::INFINITY);
                let expected = samples.iter().filter(|&&s| s > low && s <= high).count() as u64;
                prop_assert_eq!(count, expected);
            }
            let total: f64 = samples.iter().sum();
            prop_assert!((sum - total).abs() <= 1e-9 * total.max(1.0));
        }
    }
}
