use std::net::{IpAddr, Ipv4Addr};
use std::num::NonZeroU32;

use super::*;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

#[cfg(portcullis_loom)]
mod loom_conn;

#[cfg(not(portcullis_loom))]
mod std_tests {
    use std::net::Ipv6Addr;

    use super::*;

    #[test]
    fn global_cap_is_enforced_and_released_on_drop() {
        let limiter = ConnLimiter::new(2);
        let a = limiter.try_acquire(v4(1)).expect("first");
        let _b = limiter.try_acquire(v4(2)).expect("second");
        assert_eq!(
            limiter.try_acquire(v4(3)).map(drop),
            Err(ConnRejected::MaxConnections)
        );
        assert_eq!(limiter.open(), 2);
        drop(a);
        assert_eq!(limiter.open(), 1);
        let _c = limiter.try_acquire(v4(3)).expect("a place was freed");
    }

    #[test]
    fn per_client_cap_leaves_other_clients_alone_and_forgets_idle_clients() {
        let limiter = ConnLimits::new(100).per_client(nz(2)).build();
        let first = limiter.try_acquire(v4(1)).expect("first");
        let second = limiter.try_acquire(v4(1)).expect("second");
        let third = limiter.try_acquire(v4(1)).map(drop);
        assert_eq!(third, Err(ConnRejected::MaxConnectionsPerClient));
        // A refused connection gave its global place back.
        assert_eq!(limiter.open(), 2);
        let other = limiter.try_acquire(v4(2)).expect("another client");
        assert_eq!((limiter.open_from(v4(1)), limiter.clients()), (2, 2));
        drop((first, second, other));
        assert_eq!((limiter.open(), limiter.clients()), (0, 0));
    }

    #[test]
    fn proxies_are_exempt_and_a_client_can_be_added_later() {
        let proxies = crate::client::TrustedProxies::new(["127.0.0.10/32".parse().expect("net")]);
        let limiter = ConnLimits::new(10)
            .per_client(nz(1))
            .exempt_from_per_client(proxies)
            .build();
        let from_proxy: Vec<_> = (0..3)
            .map(|_| {
                limiter
                    .try_acquire(v4(10))
                    .expect("a proxy is not capped per client")
            })
            .collect();
        assert_eq!(limiter.open(), 3);
        // The client behind the proxy, learnt from a PROXY header, is capped.
        let mut first = limiter.try_acquire_global().expect("global");
        first
            .add_client(v4(1))
            .expect("first connection of 127.0.0.1");
        let mut second = limiter.try_acquire_global().expect("global");
        assert_eq!(
            second.add_client(v4(1)),
            Err(ConnRejected::MaxConnectionsPerClient)
        );
        drop(second);
        assert_eq!(limiter.open(), 4);
        drop((first, from_proxy));
        assert_eq!((limiter.open(), limiter.clients()), (0, 0));
    }

    #[test]
    fn ipv6_clients_share_a_cap_within_their_prefix() {
        let limiter = ConnLimiter::from(ConnLimits::new(100).per_client(nz(1)));
        let a: IpAddr = "2001:db8:1:2::1"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let b: IpAddr = "2001:db8:1:2:ffff::9"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let c: IpAddr = "2001:db8:1:3::1"
            .parse()
            .unwrap_or(IpAddr::V6(Ipv6Addr::LOCALHOST));
        let _a = limiter.try_acquire(a).expect("first in the /64");
        assert!(limiter.try_acquire(b).is_err(), "same /64");
        let _c = limiter.try_acquire(c).expect("another /64");
        // IPv4-mapped IPv6 is the same client as its IPv4 address.
        let _v4 = limiter.try_acquire(v4(9)).expect("v4");
        let mapped = IpAddr::V6(Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped());
        assert!(limiter.try_acquire(mapped).is_err(), "mapped = plain IPv4");
    }

    /// `(reason, count)` of every rejection counter in `snapshotter`.
    fn rejections(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<(String, u64)> {
        let mut counts: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let reason = key.key().labels().next()?.value().to_owned();
                match value {
                    metrics_util::debugging::DebugValue::Counter(n) => Some((reason, n)),
                    _ => None,
                }
            })
            .collect();
        counts.sort();
        counts
    }

    fn reject_one_of_each(limiter: &ConnLimiter, handshakes: &HandshakeLimiter) {
        let _held = limiter.try_acquire(v4(1)).expect("first");
        assert!(limiter.try_acquire(v4(1)).is_err());
        let _other = limiter.try_acquire(v4(2)).expect("second client");
        assert!(limiter.try_acquire(v4(3)).is_err());
        assert!(handshakes.try_acquire().is_none());
    }

    const ONE_OF_EACH: [(&str, u64); 3] = [
        ("max_conns", 1),
        ("max_conns_per_ip", 1),
        ("max_handshakes", 1),
    ];

    #[test]
    fn rejections_are_counted_by_reason() {
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let limiter = ConnLimits::new(2).per_client(nz(1)).build();
            reject_one_of_each(&limiter, &HandshakeLimiter::new(0));
        });
        let expected: Vec<_> = ONE_OF_EACH
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect();
        assert_eq!(rejections(&snapshotter), expected);
    }

    /// Metric handles are resolved at the first rejection: limiters built before the recorder
    /// is installed count into it all the same.
    #[test]
    fn limiters_built_before_the_recorder_still_report_to_it() {
        let limiter = ConnLimits::new(2).per_client(nz(1)).build();
        let handshakes = HandshakeLimiter::new(0);
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || reject_one_of_each(&limiter, &handshakes));
        let expected: Vec<_> = ONE_OF_EACH
            .iter()
            .map(|(r, n)| (r.to_string(), *n))
            .collect();
        assert_eq!(rejections(&snapshotter), expected);
    }

    #[test]
    fn every_clone_counts_against_the_same_caps() {
        let limits = ConnLimits::new(2).per_client(nz(1));
        assert_eq!(limits.max_total(), 2);
        assert_eq!(limits.max_per_client(), Some(nz(1)));
        let limiter = ConnLimiter::from(limits.clone());
        assert_eq!(limiter.limits(), &limits);
        let clone = limiter.clone();
        let _a = limiter.try_acquire(v4(1)).expect("first");
        assert_eq!(
            clone.try_acquire(v4(1)).map(drop),
            Err(ConnRejected::MaxConnectionsPerClient)
        );
        let _b = clone.try_acquire(v4(2)).expect("second");
        assert_eq!(
            limiter.try_acquire(v4(3)).map(drop),
            Err(ConnRejected::MaxConnections)
        );
        assert_eq!((limiter.open(), clone.open()), (2, 2));
        // `new` is the global cap alone.
        let global = ConnLimiter::new(5);
        assert_eq!(global.limits(), &ConnLimits::new(5));
    }

    #[test]
    fn handshake_clones_share_one_cap() {
        let limiter = HandshakeLimiter::new(1);
        let clone = limiter.clone();
        let _held = limiter.try_acquire().expect("free");
        assert!(clone.try_acquire().is_none());
        assert_eq!((clone.in_progress(), clone.max()), (1, 1));
    }

    #[tokio::test]
    async fn handshake_cap_waits_for_a_place() {
        let limiter = HandshakeLimiter::new(1);
        let held = limiter.acquire().await;
        assert_eq!(limiter.in_progress(), 1);
        assert!(limiter.try_acquire().is_none());
        let waiting = tokio::spawn({
            let limiter = limiter.clone();
            async move { limiter.acquire().await }
        });
        drop(held);
        let permit = waiting.await.expect("the waiter gets the freed place");
        assert_eq!(limiter.in_progress(), 1);
        drop(permit);
        assert_eq!(limiter.in_progress(), 0);
    }
}
