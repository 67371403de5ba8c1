//! A keyed limiter keeps bounded memory while a million distinct clients (IPv4 and IPv6) pass
//! through it, and the memory per key is what docs/limits.md says. Measured with a counting
//! global allocator (this test binary only).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicIsize, Ordering};

use portcullis_limit::client::KeyPrefix;
use portcullis_limit::{Key, KeyedLimiter, Quota};

/// Bytes allocated and not yet freed, by anyone in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is only
// arithmetic on the sizes the caller passes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests measure the whole process's heap: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `i`-th distinct client: even ones IPv4, odd ones IPv6 in distinct /64s.
fn client(i: u32) -> IpAddr {
    if i.is_multiple_of(2) {
        IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))
    } else {
        let net = (0x2001_0db8_u128 << 96) | (u128::from(i) << 64) | 0x1234;
        IpAddr::V6(Ipv6Addr::from(net))
    }
}

fn quota() -> Quota {
    Quota::per_minute(NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN))
}

#[test]
fn a_million_distinct_clients_cost_no_more_than_the_key_cap() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const CAP: usize = 50_000;
    const CLIENTS: u32 = 1_000_000;
    let prefix = KeyPrefix::default();
    let limiter = KeyedLimiter::<Key>::with_max_keys(
        quota(),
        NonZeroUsize::new(CAP).unwrap_or(NonZeroUsize::MIN),
    );
    // Fill the table, then measure while the other 950 000 clients pass.
    for i in 0..CAP as u32 {
        assert!(limiter.check(&Key::ip(prefix.apply(client(i)))).is_ok());
    }
    let full = LIVE.load(Ordering::Relaxed);
    for i in CAP as u32..CLIENTS {
        let _ = limiter.check(&Key::ip(prefix.apply(client(i))));
    }
    let after = LIVE.load(Ordering::Relaxed);
    assert_eq!(limiter.len(), CAP);
    assert_eq!(limiter.overflowed(), u64::from(CLIENTS) - CAP as u64);
    // Nothing grew: not one byte per passing client.
    assert!(
        after - full < 64 * 1024,
        "heap grew by {} bytes while {} new clients passed a full table",
        after - full,
        CLIENTS as usize - CAP
    );
}

#[test]
fn memory_per_key_is_under_100_bytes() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const KEYS: u32 = 200_000;
    let prefix = KeyPrefix::default();
    let before = LIVE.load(Ordering::Relaxed);
    let limiter = KeyedLimiter::<Key>::with_max_keys(
        quota(),
        NonZeroUsize::new(KEYS as usize).unwrap_or(NonZeroUsize::MIN),
    );
    for i in 0..KEYS {
        assert!(limiter.check(&Key::ip(prefix.apply(client(i)))).is_ok());
    }
    let per_key = (LIVE.load(Ordering::Relaxed) - before) as f64 / f64::from(KEYS);
    println!("{per_key:.1} bytes per key at {KEYS} keys");
    assert!(per_key < 100.0, "{per_key:.1} bytes per key");
    drop(limiter);
}

/// Live heap bytes while `f` runs its course, before dropping what it returns.
fn grown_by<T>(f: impl FnOnce() -> T) -> (T, isize) {
    let before = LIVE.load(Ordering::Relaxed);
    let kept = f();
    (kept, LIVE.load(Ordering::Relaxed) - before)
}

#[test]
fn a_million_offenders_are_measured_and_the_ban_tables_stay_under_their_caps() {
    use portcullis_limit::{BanPolicy, BanReason};
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    const CLIENTS: u32 = 1_000_000;
    // Room for all of them: what one remembered offender costs.
    let (bans, grown) = grown_by(|| {
        let bans = BanPolicy::new(1_000)
            .max_offenders(CLIENTS as usize)
            .build();
        for i in 0..CLIENTS {
            bans.strike(client(i), BanReason::RATE_LIMITED);
        }
        bans
    });
    assert_eq!(bans.offenders(), CLIENTS as usize);
    let per_offender = grown / CLIENTS as isize;
    println!("{per_offender} bytes per remembered offender ({grown} for {CLIENTS})");
    assert!(per_offender <= 80, "{per_offender} bytes per offender");
    drop(bans);

    // Capped at 10 000: a million distinct offenders (and a million bans) keep both tables
    // at their caps, and the memory with them.
    const CAP: usize = 10_000;
    let (bans, grown) = grown_by(|| {
        let bans = BanPolicy::new(1).max_offenders(CAP).max_bans(CAP).build();
        for i in 0..CLIENTS {
            bans.strike(client(i), BanReason::RATE_LIMITED);
        }
        bans
    });
    assert!(bans.offenders() <= CAP, "{}", bans.offenders());
    assert!(bans.list().len() <= CAP, "{}", bans.list().len());
    // Both tables at the cap, at the worst load factor a hash table grows to.
    let bound = 2 * CAP as isize * 2 * per_offender.max(40);
    assert!(
        grown <= bound,
        "{grown} bytes for two tables capped at {CAP} (bound {bound})"
    );
}
