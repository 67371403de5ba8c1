//! loom models of the connection caps' shared state: the global counter and the sharded
//! per-client table.

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
        let limiter = ConnLimits::new(2).per_client(nz(1)).build();
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
        let limiter = ConnLimits::new(10).per_client(nz(2)).build();
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
