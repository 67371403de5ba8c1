//! loom models of the bans' shared state: the mutex over the tables and the atomic count of
//! bans that lets a check skip the lock.

use super::*;

/// A ban raised on one thread while another lifts it and a third checks: whatever the order,
/// the atomic count ends equal to the table's size, so a check never skips a ban in force
/// and never keeps taking the lock for a ban that is gone.
#[test]
fn the_lock_free_count_always_matches_the_table() {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(|| {
        let bans = BanPolicy::new(1).build();
        let client = ip("192.0.2.1");
        let striker = {
            let bans = bans.clone();
            loom::thread::spawn(move || {
                bans.strike(client, BanReason::RATE_LIMITED);
            })
        };
        let lifter = {
            let bans = bans.clone();
            loom::thread::spawn(move || {
                bans.lift(client);
            })
        };
        let _ = bans.check(client);
        striker.join().expect("no panic");
        lifter.join().expect("no panic");
        let in_table = bans.lock().bans.len();
        assert_eq!(bans.inner.active.load(Ordering::Acquire), in_table);
        assert_eq!(bans.check(client).is_some(), in_table == 1);
    });
}

/// A ban made before a check (ordered by a join) is always seen by it.
#[test]
fn a_ban_that_happened_before_a_check_is_seen() {
    loom::model(|| {
        let bans = BanPolicy::new(1).build();
        let client = ip("192.0.2.1");
        let banner = {
            let bans = bans.clone();
            loom::thread::spawn(move || bans.ban(client, secs(60), BanReason::MANUAL))
        };
        assert!(banner.join().expect("no panic"));
        let checker = {
            let bans = bans.clone();
            loom::thread::spawn(move || bans.check(client))
        };
        assert!(checker.join().expect("no panic").is_some());
    });
}
