use std::time::Duration;

use http::{Method, StatusCode};

use super::*;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a valid test address")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn policy() -> BanPolicy {
    BanPolicy::new(3)
        .window(secs(60))
        .ban_for(secs(60))
        .max_ban(secs(300))
}

async fn advance(by: Duration) {
    tokio::time::advance(by).await;
}

#[tokio::test(start_paused = true)]
async fn the_nth_refusal_within_the_window_bans() {
    let bans = policy().build();
    let client = ip("192.0.2.1");
    assert_eq!(bans.strike(client, BanReason::RATE_LIMITED), None);
    assert_eq!(bans.strike(client, BanReason::RATE_LIMITED), None);
    assert_eq!(bans.check(client), None);
    assert_eq!(bans.strike(client, BanReason::CONN_CAP), Some(secs(60)));
    assert_eq!(bans.check(client), Some(secs(60)));
    assert_eq!(bans.check(ip("192.0.2.2")), None, "only that client");
    let listed = bans.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].client, client);
    assert_eq!(
        listed[0].reason,
        BanReason::CONN_CAP,
        "the refusal that banned"
    );
}

#[tokio::test(start_paused = true)]
async fn refusals_spread_past_the_window_do_not_ban() {
    let bans = policy().build();
    let client = ip("192.0.2.1");
    bans.strike(client, BanReason::MALFORMED);
    bans.strike(client, BanReason::MALFORMED);
    advance(secs(61)).await;
    assert_eq!(bans.strike(client, BanReason::MALFORMED), None);
    assert_eq!(bans.strike(client, BanReason::MALFORMED), None);
    assert_eq!(bans.check(client), None);
    assert_eq!(bans.strike(client, BanReason::MALFORMED), Some(secs(60)));
}

#[tokio::test(start_paused = true)]
async fn a_ban_ends_on_time_and_refusals_while_banned_do_not_count() {
    let bans = policy().build();
    let client = ip("192.0.2.1");
    for _ in 0..3 {
        bans.strike(client, BanReason::TLS_HANDSHAKE);
    }
    // Closures of a banned client are not refusals that count.
    for _ in 0..10 {
        assert_eq!(bans.strike(client, BanReason::TLS_HANDSHAKE), None);
    }
    advance(secs(59)).await;
    assert_eq!(bans.check(client), Some(secs(1)));
    advance(secs(1)).await;
    assert_eq!(bans.check(client), None);
    assert!(bans.list().is_empty());
    // Its window started over with the ban: two more refusals do not ban again.
    bans.strike(client, BanReason::TLS_HANDSHAKE);
    assert_eq!(bans.strike(client, BanReason::TLS_HANDSHAKE), None);
}

#[tokio::test(start_paused = true)]
async fn repeat_bans_double_up_to_the_ceiling_and_a_day_resets_them() {
    let bans = policy().build();
    let client = ip("2001:db8:1:2::7");
    let mut lengths = Vec::new();
    for _ in 0..5 {
        let length = (0..3)
            .find_map(|_| bans.strike(client, BanReason::RATE_LIMITED))
            .expect("banned within three refusals");
        lengths.push(length.as_secs());
        advance(length).await;
    }
    assert_eq!(lengths, [60, 120, 240, 300, 300]);
    // A day after the last ban ended, the history is forgotten.
    advance(BAN_HISTORY).await;
    let length = (0..3)
        .find_map(|_| bans.strike(client, BanReason::RATE_LIMITED))
        .expect("banned within three refusals");
    assert_eq!(length, secs(60));
}

#[tokio::test(start_paused = true)]
async fn ipv6_clients_are_banned_by_their_64() {
    let bans = policy().build();
    for _ in 0..3 {
        bans.strike(ip("2001:db8:1:2::7"), BanReason::RATE_LIMITED);
    }
    assert!(bans.check(ip("2001:db8:1:2:ffff::1")).is_some());
    assert!(bans.check(ip("2001:db8:1:3::7")).is_none());
    assert_eq!(bans.list()[0].client, ip("2001:db8:1:2::"));
}

#[tokio::test(start_paused = true)]
async fn ipv4_mapped_clients_are_their_ipv4_selves() {
    let bans = policy().build();
    for _ in 0..3 {
        bans.strike(ip("::ffff:192.0.2.9"), BanReason::RATE_LIMITED);
    }
    assert!(bans.check(ip("192.0.2.9")).is_some());
    assert_eq!(bans.list()[0].client, ip("192.0.2.9"));
}

#[tokio::test(start_paused = true)]
async fn exempt_clients_are_never_banned() {
    let bans = policy()
        .exempt("10.0.0.0/8".parse().expect("a valid range"))
        .build();
    for _ in 0..10 {
        assert_eq!(bans.strike(ip("10.1.2.3"), BanReason::RATE_LIMITED), None);
    }
    assert!(!bans.ban(ip("10.1.2.3"), secs(60), BanReason::MANUAL));
    assert_eq!(bans.check(ip("10.1.2.3")), None);
    assert_eq!(bans.offenders(), 0, "not even remembered");
}

#[tokio::test(start_paused = true)]
async fn lift_ends_a_ban_but_keeps_the_history() {
    let bans = policy().build();
    let client = ip("192.0.2.1");
    for _ in 0..3 {
        bans.strike(client, BanReason::RATE_LIMITED);
    }
    assert!(bans.lift(client));
    assert!(!bans.lift(client), "nothing left to lift");
    assert_eq!(bans.check(client), None);
    let again = (0..3)
        .find_map(|_| bans.strike(client, BanReason::RATE_LIMITED))
        .expect("banned within three refusals");
    assert_eq!(again, secs(120));
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_bans_nobody() {
    let bans = policy().dry_run(true).build();
    let client = ip("192.0.2.1");
    let would = (0..3).find_map(|_| bans.strike(client, BanReason::RATE_LIMITED));
    assert_eq!(would, Some(secs(60)));
    assert_eq!(bans.check(client), None);
    assert!(bans.list().is_empty());
    // Nor does it escalate.
    let would = (0..3).find_map(|_| bans.strike(client, BanReason::RATE_LIMITED));
    assert_eq!(would, Some(secs(60)));
}

#[tokio::test(start_paused = true)]
async fn jitter_lengthens_bans_within_its_fraction() {
    let bans = BanPolicy::new(1).ban_for(secs(100)).jitter(0.5).build();
    let mut lengths = Vec::new();
    for n in 0..20u8 {
        let length = bans
            .strike(IpAddr::from([192, 0, 2, n]), BanReason::RATE_LIMITED)
            .expect("one refusal bans");
        assert!(length >= secs(100) && length <= secs(150), "{length:?}");
        lengths.push(length);
        advance(Duration::from_millis(7)).await;
    }
    lengths.dedup();
    assert!(lengths.len() > 10, "the jitter varies: {lengths:?}");
}

#[tokio::test(start_paused = true)]
async fn full_tables_drop_what_expires_soonest() {
    let bans = BanPolicy::new(1)
        .ban_for(secs(60))
        .max_bans(16)
        .max_offenders(16)
        .build();
    // 16 bans, each a second later than the one before (so ending a second later).
    for n in 0..16u8 {
        bans.strike(IpAddr::from([192, 0, 2, n]), BanReason::RATE_LIMITED);
        advance(secs(1)).await;
    }
    assert_eq!(bans.list().len(), 16);
    // The 17th drops the two that end soonest (an eighth of the table), the oldest.
    bans.strike(IpAddr::from([192, 0, 2, 100]), BanReason::RATE_LIMITED);
    let listed = bans.list();
    assert_eq!(listed.len(), 15);
    assert!(bans.check(IpAddr::from([192, 0, 2, 0])).is_none());
    assert!(bans.check(IpAddr::from([192, 0, 2, 1])).is_none());
    assert!(bans.check(IpAddr::from([192, 0, 2, 2])).is_some());
    assert!(bans.check(IpAddr::from([192, 0, 2, 100])).is_some());
    assert!(bans.offenders() <= 16);
}

#[tokio::test(start_paused = true)]
async fn with_no_ban_left_a_check_takes_no_lock_again() {
    let bans = BanPolicy::new(1).ban_for(secs(5)).build();
    bans.strike(ip("192.0.2.1"), BanReason::RATE_LIMITED);
    assert_eq!(bans.inner.active.load(Ordering::Acquire), 1);
    advance(secs(6)).await;
    // Another client's check sweeps the expired ban.
    assert_eq!(bans.check(ip("192.0.2.2")), None);
    assert_eq!(bans.inner.active.load(Ordering::Acquire), 0);
}

#[tokio::test(start_paused = true)]
async fn only_the_statuses_chosen_count() {
    let bans = BanPolicy::new(1)
        .strike_on_status(401, BanReason::new("auth"))
        .build();
    assert_eq!(bans.status_reason(429), Some(BanReason::RATE_LIMITED));
    assert_eq!(bans.status_reason(401), Some(BanReason::new("auth")));
    assert_eq!(bans.status_reason(404), None);
}

#[tokio::test(start_paused = true)]
async fn the_admin_api_lists_adds_and_lifts() {
    let bans = policy()
        .exempt("10.0.0.0/8".parse().expect("a valid range"))
        .build();
    let call = |method: Method, uri: &str| {
        let response = bans
            .answer(&method, &uri.parse().expect("a valid URI"))
            .expect("an API path");
        let status = response.status();
        (
            status,
            String::from_utf8(response.into_body().to_vec()).expect("UTF-8"),
        )
    };
    assert_eq!(
        call(Method::GET, "/bans"),
        (StatusCode::OK, "[]\n".to_string())
    );
    let (status, body) = call(Method::POST, "/bans/192.0.2.5?for=90s");
    assert_eq!(status, StatusCode::CREATED);
    assert!(body.contains(r#""client":"192.0.2.5""#), "{body}");
    assert!(body.contains(r#""remaining_seconds":90.000"#), "{body}");
    assert!(body.contains(r#""reason":"manual""#), "{body}");
    let (status, body) = call(Method::GET, "/bans");
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.starts_with(r#"[{"client":"192.0.2.5","until_unix":"#),
        "{body}"
    );
    assert_eq!(
        call(Method::POST, "/bans/10.0.0.1").0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(Method::POST, "/bans/192.0.2.6?for=soon").0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(Method::DELETE, "/bans/nonsense").0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        call(Method::PUT, "/bans/192.0.2.5").0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(
        call(Method::DELETE, "/bans/192.0.2.5").0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(Method::DELETE, "/bans/192.0.2.5").0,
        StatusCode::NOT_FOUND
    );
    assert!(
        bans.answer(&Method::GET, &"/metrics".parse().expect("a URI"))
            .is_none()
    );
    assert!(
        bans.answer(&Method::GET, &"/bansx".parse().expect("a URI"))
            .is_none()
    );
}

#[cfg(portcullis_loom)]
mod loom_ban;
