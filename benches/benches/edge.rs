//! Criterion benchmarks of the accept-time checks of portcullis-limit (docs/performance.md,
//! "Edge security", records the figures):
//!
//! - `filter/N` for N = 10, 1 000 and 10 000 deny rules (a mix of /16 to /32 ranges): one
//!   `IpFilter::check` of a client no rule covers, cycling through 1 024 clients, and
//!   `filter/10000-denied`, a client the rules refuse.
//! - `bans/none`: `Bans::check` with no ban in force (the atomic load alone);
//!   `bans/10000-active`: with 10 000 bans in force, of a client that is not banned (the lock
//!   and one hash lookup).
//!
//! `cargo bench -p portcullis-benches --bench edge`

#![allow(missing_docs)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use portcullis_limit::client::IpNet;
use portcullis_limit::{BanPolicy, BanReason, FilterRules, IpFilter};

/// `n` deny rules inside 10.0.0.0/8, prefixes from /16 to /32, none covering 192.0.2.0/24.
fn rules(n: u32) -> FilterRules {
    (0..n).fold(FilterRules::new(), |rules, i| {
        let len = 16 + (i % 17) as u8;
        let address = Ipv4Addr::from(0x0a00_0000 | (i.wrapping_mul(2_654_435_761) >> 8));
        let net = IpNet::new(IpAddr::V4(address), len).unwrap_or_default();
        rules.deny(net.trunc())
    })
}

/// The `i`-th client outside every rule.
fn client(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0xc000_0200 | (i & 0xff)))
}

fn filter(c: &mut Criterion) {
    let mut group = c.benchmark_group("filter");
    for n in [10, 1_000, 10_000] {
        let filter = IpFilter::new(rules(n));
        let mut i = 0u32;
        group.bench_with_input(BenchmarkId::from_parameter(n), &filter, |b, filter| {
            b.iter(|| {
                i = i.wrapping_add(1);
                black_box(filter.check(client(i % 1_024)).is_ok())
            })
        });
    }
    let filter =
        IpFilter::new(rules(10_000).deny("10.0.0.0/8".parse::<IpNet>().unwrap_or_default()));
    group.bench_function("10000-denied", |b| {
        b.iter(|| {
            black_box(
                filter
                    .check(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)))
                    .is_err(),
            )
        })
    });
    group.finish();
}

fn bans(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap_or_else(|error| panic!("runtime: {error}"));
    let _entered = runtime.enter();
    let mut group = c.benchmark_group("bans");
    let none = BanPolicy::new(10).build();
    group.bench_function("none", |b| {
        b.iter(|| black_box(none.check(client(7)).is_none()))
    });
    let busy = BanPolicy::new(10).build();
    for i in 0..10_000u32 {
        busy.ban(
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
            Duration::from_secs(3600),
            BanReason::MANUAL,
        );
    }
    group.bench_function("10000-active", |b| {
        b.iter(|| black_box(busy.check(client(7)).is_none()))
    });
    group.finish();
}

criterion_group!(benches, filter, bans);
criterion_main!(benches);
