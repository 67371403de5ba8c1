//! The metrics layer's cost per request, measured two ways beside the criterion bench
//! `metrics` (whose runs of one service after the other a noisy machine skews):
//!
//! - in time, `alternate N`: 21 rounds of `N` requests through a ready service and its body
//!   to the end, bare and through `HttpMetricsLayer` recording into the installed Prometheus
//!   exporter, alternating which goes first; prints the medians and the median difference;
//! - in instructions, `bare N` and `metrics N` under callgrind, counting only the requests
//!   (`--toggle-collect`): the difference of the two totals over `N` is the layer's
//!   instructions per request.
//!
//! ```text
//! cargo build --release -p portcullis-benches --example layer_cost
//! target/release/examples/layer_cost alternate 200000
//! valgrind --tool=callgrind --toggle-collect='layer_cost::run*' target/release/examples/layer_cost bare 10000
//! valgrind --tool=callgrind --toggle-collect='layer_cost::run*' target/release/examples/layer_cost metrics 10000
//! ```

#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;

use http::{Request, Response};
use http_body::Body;
use portcullis_benches::{drain, get_root, hello, now};
use portcullis_metrics::{HttpMetricsLayer, PrometheusExporter};
use tower::{Layer, Service};

#[inline(never)]
fn run<S>(service: &mut S, n: u64)
where
    S: Service<Request<()>, Error = Infallible>,
    S::Response: IntoBody,
{
    for _ in 0..n {
        let response = now(service.call(black_box(get_root()))).unwrap_or_else(|e| match e {});
        response.drain();
    }
}

/// One request outside `run`, so the counted requests find their series resolved.
#[inline(never)]
fn warm<S>(service: &mut S)
where
    S: Service<Request<()>, Error = Infallible>,
    S::Response: IntoBody,
{
    now(service.call(get_root()))
        .unwrap_or_else(|e| match e {})
        .drain();
}

trait IntoBody {
    fn drain(self);
}

impl<B: Body> IntoBody for Response<B> {
    fn drain(self) {
        drain(self.into_body());
    }
}

/// `rounds` alternating rounds of `n` requests through each service: the medians of their
/// nanoseconds per request, and the median of the rounds' differences.
fn alternate(n: u64, rounds: usize) {
    let mut bare = tower::service_fn(hello);
    let mut measured = HttpMetricsLayer::new().layer(tower::service_fn(hello));
    let per_request = |run: &mut dyn FnMut(u64)| {
        let started = std::time::Instant::now();
        run(n);
        started.elapsed().as_nanos() as f64 / n as f64
    };
    // Warm both up (series resolved, caches hot) before the rounds that count.
    run(&mut bare, n);
    run(&mut measured, n);
    let (mut bares, mut layered, mut costs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always follows the other.
        let (b, m) = if round % 2 == 0 {
            let b = per_request(&mut |n| run(&mut bare, n));
            (b, per_request(&mut |n| run(&mut measured, n)))
        } else {
            let m = per_request(&mut |n| run(&mut measured, n));
            (per_request(&mut |n| run(&mut bare, n)), m)
        };
        bares.push(b);
        layered.push(m);
        costs.push(m - b);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "bare {:.1} ns, metrics {:.1} ns, layer cost {:.1} ns per request (medians of {rounds} alternating rounds of {n})",
        median(&mut bares),
        median(&mut layered),
        median(&mut costs)
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let which = args.next().unwrap_or_default();
    let n: u64 = args
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("usage: layer_cost bare|metrics|alternate N"));
    let _exporter = PrometheusExporter::install().unwrap_or_else(|e| panic!("{e}"));
    portcullis_metrics::describe();
    // The clock calibrates itself at its first reading, for a time rather than a count of
    // instructions: outside `run`, which callgrind counts (`--toggle-collect`).
    let _ = quanta::Clock::new();
    match which.as_str() {
        "bare" => {
            let mut service = tower::service_fn(hello);
            warm(&mut service);
            run(&mut service, n);
        }
        "metrics" => {
            let mut service = HttpMetricsLayer::new().layer(tower::service_fn(hello));
            warm(&mut service);
            run(&mut service, n);
        }
        "alternate" => alternate(n, 21),
        other => panic!("usage: layer_cost bare|metrics|alternate N (not {other:?})"),
    }
}
