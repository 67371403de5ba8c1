use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;

use super::*;

fn v4(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

#[cfg(not(portcullis_loom))]
mod std_tests {
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
        let limiter = ConnLimiter::new(100).per_client(nz(2));
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
        let limiter = ConnLimiter::new(10)
            .per_client(nz(1))
            .exempt_from_per_client(proxies);
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
        let limiter = ConnLimiter::new(100).per_client(nz(1));
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

    #[test]
    fn rejections_are_counted_by_reason() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let limiter = ConnLimiter::new(2).per_client(nz(1));
            let _held = limiter.try_acquire(v4(1)).expect("first");
            assert!(limiter.try_acquire(v4(1)).is_err());
            let _other = limiter.try_acquire(v4(2)).expect("second client");
            assert!(limiter.try_acquire(v4(3)).is_err());
            let handshakes = HandshakeLimiter::new(0);
            assert!(handshakes.try_acquire().is_none());
        });
        let mut counts: Vec<(String, u64)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter_map(|(key, _, _, value)| {
                let reason = key.key().labels().next()?.value().to_owned();
                match value {
                    DebugValue::Counter(n) => Some((reason, n)),
                    _ => None,
                }
            })
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                ("max_conns".to_owned(), 1),
                ("max_conns_per_ip".to_owned(), 1),
                ("max_handshakes".to_owned(), 1),
            ]
        );
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

#[cfg(portcullis_loom)]
mod loom_models {
    use super::*;
    use loom::sync::atomic::AtomicUsize as LoomUsize;
    use loom::sync::atomic::Ordering::SeqCst;

    /// Two threads race for one client's two places (cap 1) while a third client holds
    /// the global cap's second place: the per-client cap is never exceeded, the global cap
    /// is never exceeded, and everything is given back.
    #[test]
    fn caps_are_never_exceeded_and_permits_never_lost() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let limiter = ConnLimiter::new(2).per_client(nz(1));
            let holders = Arc::new(LoomUsize::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let limiter = limiter.clone();
                    let holders = Arc::clone(&holders);
                    loom::thread::spawn(move || {
                        if let Ok(permit) = limiter.try_acquire(v4(1)) {
                            let now = holders.fetch_add(1, SeqCst) + 1;
                            assert!(now <= 1, "two connections of one client under a cap of 1");
                            holders.fetch_sub(1, SeqCst);
                            drop(permit);
                            true
                        } else {
                            false
                        }
                    })
                })
                .collect();
            let other = limiter.try_acquire(v4(2));
            let mut acquired = 0;
            for thread in threads {
                acquired += usize::from(thread.join().unwrap_or(false));
            }
            assert!(acquired >= 1 || other.is_ok(), "someone got a place");
            assert!(limiter.open() <= 2);
            drop(other);
            assert_eq!(limiter.open(), 0, "a permit was lost or released twice");
            assert_eq!(limiter.clients(), 0, "an idle client kept its entry");
        });
    }

    /// Three clients race for a global cap of 2 while one of them releases: at no moment do
    /// more than two hold a place.
    #[test]
    fn global_cap_is_never_exceeded() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let limiter = ConnLimiter::new(2);
            let holders = Arc::new(LoomUsize::new(0));
            let threads: Vec<_> = (1..=3)
                .map(|client| {
                    let limiter = limiter.clone();
                    let holders = Arc::clone(&holders);
                    loom::thread::spawn(move || {
                        if let Ok(permit) = limiter.try_acquire(v4(client)) {
                            let now = holders.fetch_add(1, SeqCst) + 1;
                            assert!(now <= 2, "{now} connections under a cap of 2");
                            holders.fetch_sub(1, SeqCst);
                            drop(permit);
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap_or(());
            }
            assert_eq!(limiter.open(), 0);
        });
    }

    /// Acquire and release of the same client on two threads: the entry disappears with the
    /// last connection even when a release and an acquire interleave.
    #[test]
    fn entry_of_a_client_without_connections_is_removed() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let limiter = ConnLimiter::new(10).per_client(nz(2));
            let first = limiter.try_acquire(v4(1)).expect("empty limiter");
            let releaser = loom::thread::spawn(move || drop(first));
            let second = limiter.try_acquire(v4(1));
            assert!(second.is_ok(), "cap 2 with at most 2 holders");
            releaser.join().unwrap_or(());
            assert_eq!(limiter.open_from(v4(1)), 1);
            drop(second);
            assert_eq!(limiter.open(), 0);
            assert_eq!(limiter.clients(), 0);
        });
    }
}
