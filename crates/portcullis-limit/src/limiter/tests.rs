use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use governor::clock::FakeRelativeClock;
use proptest::prelude::*;

use super::*;
use crate::Per;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

fn keys(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

fn fake(
    quota: Quota,
    max_keys: usize,
) -> (KeyedLimiter<u32, FakeRelativeClock>, FakeRelativeClock) {
    let clock = FakeRelativeClock::default();
    (
        KeyedLimiter::with_clock(quota, keys(max_keys), clock.clone()),
        clock,
    )
}

#[test]
fn retry_after_rounds_up_and_is_never_zero() {
    assert_eq!(Limited::new(Duration::ZERO).retry_after_secs(), 1);
    assert_eq!(Limited::new(Duration::from_nanos(1)).retry_after_secs(), 1);
    assert_eq!(
        Limited::new(Duration::from_millis(1000)).retry_after_secs(),
        1
    );
    assert_eq!(
        Limited::new(Duration::from_millis(1001)).retry_after_secs(),
        2
    );
    assert_eq!(Limited::new(Duration::from_secs(59)).retry_after_secs(), 59);
}

#[test]
fn burst_then_one_per_interval() {
    let (limiter, clock) = fake(Quota::per_second(nz(10)).burst(nz(3)), 10);
    for _ in 0..3 {
        assert_eq!(limiter.check(&1), Ok(()));
    }
    let limited = limiter.check(&1).expect_err("the burst is spent");
    assert_eq!(limited.wait(), Duration::from_millis(100));
    // Another key is unaffected.
    assert_eq!(limiter.check(&2), Ok(()));
    clock.advance(Duration::from_millis(100));
    assert_eq!(limiter.check(&1), Ok(()));
    assert!(limiter.check(&1).is_err());
}

#[test]
fn the_key_table_never_grows_past_its_cap_and_new_keys_share_the_overflow_state() {
    let (limiter, _clock) = fake(Quota::per_minute(nz(1)), 10);
    for key in 0..10 {
        assert_eq!(limiter.check(&key), Ok(()));
    }
    assert_eq!(limiter.len(), 10);
    // Ten more keys: no new entries; between them they get one key's quota.
    assert_eq!(limiter.check(&10), Ok(()));
    for key in 11..20 {
        assert!(
            limiter.check(&key).is_err(),
            "key {key} shares the spent overflow state"
        );
    }
    assert_eq!(limiter.len(), 10);
    assert_eq!(limiter.overflowed(), 10);
    // Tracked keys keep their own state.
    assert!(limiter.check(&0).is_err());
}

#[test]
fn eviction_removes_only_keys_back_to_a_fresh_state() {
    let quota = Quota::per_second(nz(10)).burst(nz(5));
    let (limiter, clock) = fake(quota, 100);
    for key in 0..50 {
        assert_eq!(limiter.check(&key), Ok(()));
    }
    // Half a burst later: every key is still refilling, nothing may go.
    clock.advance(Duration::from_millis(50));
    assert_eq!(limiter.evict_idle(), 0);
    assert_eq!(limiter.len(), 50);
    // Key 0 spends its whole burst. The others are back to a fresh state once their
    // theoretical arrival time (100 ms) is one interval in the past.
    for _ in 0..5 {
        let _ = limiter.check(&0);
    }
    clock.advance(Duration::from_millis(149));
    assert_eq!(limiter.evict_idle(), 0);
    clock.advance(Duration::from_millis(1));
    assert_eq!(limiter.evict_idle(), 49);
    assert_eq!(limiter.len(), 1);
    assert_eq!(limiter.evicted(), 49);
    // A freed slot is usable again, and the remaining key still remembers its state.
    assert_eq!(limiter.check(&1000), Ok(()));
    assert_eq!(limiter.len(), 2);
    clock.advance(Duration::from_secs(10));
    assert_eq!(limiter.evict_idle(), 2);
    assert!(limiter.is_empty());
}

#[test]
fn evicted_slots_are_reused_after_an_overflow() {
    let (limiter, clock) = fake(Quota::per_second(nz(1)), 2);
    for key in 0..3 {
        let _ = limiter.check(&key);
    }
    assert_eq!((limiter.len(), limiter.overflowed()), (2, 1));
    clock.advance(Duration::from_secs(2));
    limiter.evict_idle();
    assert_eq!(limiter.check(&2), Ok(()));
    assert_eq!((limiter.len(), limiter.overflowed()), (1, 1));
}

proptest! {
    /// Over every window that starts at an allowed request, at most `burst + elapsed / interval`
    /// requests are allowed: the GCRA bound, for any request pattern.
    #[test]
    fn never_more_than_burst_plus_rate_times_elapsed(
        rate in 1u32..2_000,
        burst in 1u32..50,
        unit in 0..3u8,
        steps in proptest::collection::vec((0u64..2_000_000_000, 0u32..8), 1..60),
    ) {
        let per = [Per::Second, Per::Minute, Per::Hour][usize::from(unit)];
        let quota = Quota::new(nz(rate), per).burst(nz(burst));
        let (limiter, clock) = fake(quota, 4);
        let interval = quota.interval().as_nanos();
        let mut now = 0u128;
        let mut allowed = Vec::new();
        let mut denied_fresh = false;
        for (advance, requests) in steps {
            // Advance in steps scaled to the interval, so slow quotas see refills too.
            let advance = u128::from(advance) * interval / 1_000_000_000;
            clock.advance(Duration::from_nanos(u64::try_from(advance).unwrap_or(u64::MAX)));
            now += advance;
            for _ in 0..requests {
                match limiter.check(&7) {
                    Ok(()) => allowed.push(now),
                    Err(limited) => {
                        prop_assert!(limited.wait() > Duration::ZERO);
                        prop_assert!(limited.wait() <= quota.interval() * burst);
                        // Denied although nothing was allowed within a full refill.
                        let refill_start = now.saturating_sub(interval * u128::from(burst));
                        if !allowed.iter().any(|&t| t >= refill_start) && now >= interval * u128::from(burst) {
                            denied_fresh = true;
                        }
                    }
                }
            }
        }
        prop_assert!(!denied_fresh, "a key idle for a whole refill was denied");
        for (i, &start) in allowed.iter().enumerate() {
            for (j, &end) in allowed.iter().enumerate().skip(i) {
                let count = (j - i + 1) as u128;
                let bound = u128::from(burst) + (end - start) / interval;
                prop_assert!(count <= bound, "{count} allowed in {} ns, bound {bound}", end - start);
            }
        }
    }
}
