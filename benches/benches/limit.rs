//! Criterion benchmarks of portcullis-limit against governor used directly (docs/performance.md
//! records the figures and their ratios):
//!
//! - `check/governor` vs `check/portcullis`: one check of a global limit (governor's direct
//!   limiter vs `GlobalLimiter`), never over the quota.
//! - `keyed/governor/N` vs `keyed/portcullis/N` for N = 1 000, 100 000 and 1 000 000 live keys:
//!   one check of an existing key, cycling through all N (governor's DashMap keyed limiter vs
//!   `KeyedLimiter` with its key cap above N).
//! - `layer/bare` vs `layer/limit`: one request through a ready service and its body to the
//!   end, without and with `RateLimitLayer` (per client, not triggering), with the
//!   Prometheus exporter installed as in a server. The difference is the layer's cost.
//!
//! `cargo bench -p portcullis-benches --bench limit`

#![allow(missing_docs)]

use std::convert::Infallible;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Full;
use portcullis_benches::{drain, now};
use portcullis_limit::{GlobalLimiter, KeyedLimiter, PeerAddr, Quota, RateLimitLayer};
use portcullis_metrics::PrometheusExporter;
use tower::{Layer, Service};

/// A quota no benchmark loop reaches: 10^9 per second, the same burst.
fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MAX))
}

fn governor_quota() -> governor::Quota {
    governor::Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap_or(NonZeroU32::MAX))
}

/// The `i`-th of the live keys.
fn key(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("check");
    let governor = governor::RateLimiter::direct(governor_quota());
    group.bench_function("governor", |b| {
        b.iter(|| black_box(governor.check().is_ok()))
    });
    let portcullis = GlobalLimiter::new(quota());
    group.bench_function("portcullis", |b| {
        b.iter(|| black_box(portcullis.check().is_ok()))
    });
    group.finish();
}

fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed");
    for live in [1_000u32, 100_000, 1_000_000] {
        let governor = governor::RateLimiter::dashmap(governor_quota());
        let portcullis = KeyedLimiter::<IpAddr>::with_max_keys(
            quota(),
            NonZeroUsize::new(live as usize * 2).unwrap_or(NonZeroUsize::MIN),
        );
        for i in 0..live {
            let _ = governor.check_key(&key(i));
            let _ = portcullis.check(&key(i));
        }
        let mut next = 0u32;
        group.bench_with_input(BenchmarkId::new("governor", live), &live, |b, &live| {
            b.iter(|| {
                next = (next + 7919) % live;
                black_box(governor.check_key(&key(next)).is_ok())
            });
        });
        group.bench_with_input(BenchmarkId::new("portcullis", live), &live, |b, &live| {
            b.iter(|| {
                next = (next + 7919) % live;
                black_box(portcullis.check(&key(next)).is_ok())
            });
        });
        assert_eq!(portcullis.len(), live as usize);
    }
    group.finish();
}

async fn app(_request: Request<()>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

/// A request as portcullis-server hands it over: with the peer address extension.
fn request(peer: SocketAddr) -> Request<()> {
    let mut request = Request::builder()
        .uri("/")
        .body(())
        .unwrap_or_else(|_| unreachable!("a valid request"));
    request.extensions_mut().insert(PeerAddr(peer));
    request
}

fn layer(c: &mut Criterion) {
    let _exporter = PrometheusExporter::install().unwrap_or_else(|e| panic!("{e}"));
    portcullis_limit::metrics::describe();
    // Inside a runtime, as in a server: the first check spawns the limiter's housekeeping
    // task (never polled here), every later one pays one atomic load for it. Outside any
    // runtime each check would also look for one.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let _runtime = runtime.enter();
    let peer = SocketAddr::from(([127, 0, 0, 1], 40000));
    let mut group = c.benchmark_group("layer");
    let mut bare = tower::service_fn(app);
    group.bench_function("bare", |b| {
        b.iter(|| {
            let response = now(bare.call(black_box(request(peer)))).unwrap_or_else(|e| match e {});
            drain(response.into_body());
        });
    });
    let mut limited = RateLimitLayer::per_client(quota())
        .layer()
        .layer(tower::service_fn(app));
    group.bench_function("limit", |b| {
        b.iter(|| {
            let response =
                now(limited.call(black_box(request(peer)))).unwrap_or_else(|e| match e {});
            drain(response.into_body());
        });
    });
    group.finish();
}

criterion_group!(benches, check, keyed, layer);
criterion_main!(benches);
