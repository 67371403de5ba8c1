use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

fn net(text: &str) -> IpNet {
    text.parse().expect("a valid test address")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("a valid test address")
}

#[test]
fn no_rule_serves_everyone() {
    let filter = IpFilter::new(FilterRules::new());
    assert_eq!(filter.check(ip("203.0.113.7")), Ok(()));
    assert_eq!(filter.check(ip("2001:db8::1")), Ok(()));
}

#[test]
fn deny_wins_over_a_more_specific_allow() {
    let filter = IpFilter::new(
        FilterRules::new()
            .allow(net("10.1.2.0/24"))
            .deny(net("10.0.0.0/8")),
    );
    assert_eq!(
        filter.check(ip("10.1.2.3")),
        Err(Refused::Denied("10.0.0.0/8".into()))
    );
}

#[test]
fn with_an_allow_rule_only_allowed_ranges_are_served() {
    let filter = IpFilter::new(
        FilterRules::new()
            .allow(Rule::named("office", net("192.0.2.0/24")))
            .deny(net("192.0.2.128/25")),
    );
    assert_eq!(filter.check(ip("192.0.2.1")), Ok(()));
    assert_eq!(
        filter.check(ip("192.0.2.200")),
        Err(Refused::Denied("192.0.2.128/25".into()))
    );
    assert_eq!(filter.check(ip("198.51.100.1")), Err(Refused::NotAllowed));
    // An IPv6 client is outside every (IPv4) allowed range too.
    assert_eq!(filter.check(ip("2001:db8::1")), Err(Refused::NotAllowed));
}

#[test]
fn ipv4_mapped_addresses_and_ranges_are_their_ipv4_selves() {
    let filter = IpFilter::new(FilterRules::new().deny(net("::ffff:10.0.0.0/104")));
    assert_eq!(filter.rules().denied()[0].net(), net("10.0.0.0/8"));
    assert!(filter.check(ip("::ffff:10.9.8.7")).is_err());
    assert!(filter.check(ip("10.9.8.7")).is_err());
    assert!(filter.check(ip("11.0.0.1")).is_ok());
}

#[test]
fn the_most_specific_deny_rule_is_the_one_counted() {
    let filter = IpFilter::new(
        FilterRules::new()
            .deny(Rule::named("wide", net("2001:db8::/32")))
            .deny(Rule::named("narrow", net("2001:db8:1::/48"))),
    );
    assert_eq!(
        filter.check(ip("2001:db8:1::5")),
        Err(Refused::Denied("narrow".into()))
    );
    assert_eq!(
        filter.check(ip("2001:db8:2::5")),
        Err(Refused::Denied("wide".into()))
    );
}

#[test]
fn the_whole_space_and_its_edges() {
    let filter = IpFilter::new(
        FilterRules::new()
            .deny(net("0.0.0.0/0"))
            .deny(Rule::named("top", net("255.255.255.255/32")))
            .deny(Rule::named("bottom", net("0.0.0.0/32"))),
    );
    assert_eq!(
        filter.check(IpAddr::V4(Ipv4Addr::BROADCAST)),
        Err(Refused::Denied("top".into()))
    );
    assert_eq!(
        filter.check(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
        Err(Refused::Denied("bottom".into()))
    );
    assert_eq!(
        filter.check(ip("1.2.3.4")),
        Err(Refused::Denied("0.0.0.0/0".into()))
    );
    let v6 = IpFilter::new(FilterRules::new().deny(net("::/0")));
    assert!(
        v6.check(IpAddr::V6(Ipv6Addr::from_bits(u128::MAX)))
            .is_err()
    );
    assert!(v6.check(ip("1.2.3.4")).is_ok(), "::/0 is IPv6 only");
}

#[test]
fn replace_swaps_the_lists_at_once() {
    let filter = IpFilter::new(FilterRules::new().deny(net("127.0.0.2/32")));
    let clone = filter.clone();
    assert!(clone.check(ip("127.0.0.2")).is_err());
    filter.replace(FilterRules::new().deny(net("127.0.0.3/32")));
    assert!(clone.check(ip("127.0.0.2")).is_ok());
    assert!(clone.check(ip("127.0.0.3")).is_err());
    assert_eq!(clone.rules().denied().len(), 1);
}

#[test]
fn refusals_are_counted_by_rule() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let filter = IpFilter::new(
            FilterRules::new()
                .allow(net("10.0.0.0/8"))
                .deny(Rule::named("bad", net("10.6.6.0/24"))),
        );
        for address in ["10.6.6.1", "10.6.6.2", "192.0.2.1", "10.1.1.1"] {
            let _ = filter.check(ip(address));
        }
    });
    let mut counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == FILTER_REJECTED_TOTAL)
        .map(|(key, _, _, value)| {
            let rule = key
                .key()
                .labels()
                .next()
                .expect("the rule label")
                .value()
                .to_string();
            let DebugValue::Counter(count) = value else {
                panic!("not a counter")
            };
            (rule, count)
        })
        .collect();
    counts.sort();
    assert_eq!(
        counts,
        [("bad".to_string(), 2), ("not_allowed".to_string(), 1)]
    );
}

/// The rule a linear scan finds: the most specific covering rule, the later of equals.
fn linear(rules: &[Rule], address: IpAddr) -> Option<usize> {
    let address = address.to_canonical();
    rules
        .iter()
        .enumerate()
        .filter(|(_, rule)| rule.net().contains(&address))
        .max_by_key(|(index, rule)| (rule.net().prefix_len(), *index))
        .map(|(index, _)| index)
}

fn v4_rule() -> impl Strategy<Value = Rule> {
    // Few distinct networks, so rules nest and repeat often.
    (0u32..16, 0u8..=32).prop_map(|(seed, len)| {
        let address = Ipv4Addr::from_bits(seed.wrapping_mul(0x1111_1111) ^ 0x0a00_0000);
        Rule::new(IpNet::new(IpAddr::V4(address), len).expect("len <= 32"))
    })
}

fn v6_rule() -> impl Strategy<Value = Rule> {
    (0u128..16, 0u8..=128).prop_map(|(seed, len)| {
        let address =
            Ipv6Addr::from_bits(seed.wrapping_mul(0x1111_1111_1111_1111_1111_1111_1111_1111));
        Rule::new(IpNet::new(IpAddr::V6(address), len).expect("len <= 128"))
    })
}

fn address() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (0u32..16, any::<u32>()).prop_map(|(seed, noise)| {
            // Near the rules' networks, or anywhere.
            let base = seed.wrapping_mul(0x1111_1111) ^ 0x0a00_0000;
            IpAddr::V4(Ipv4Addr::from_bits(base ^ (noise >> (noise % 32))))
        }),
        any::<u32>().prop_map(|bits| IpAddr::V4(Ipv4Addr::from_bits(bits))),
        (0u128..16, any::<u128>()).prop_map(|(seed, noise)| {
            let base = seed.wrapping_mul(0x1111_1111_1111_1111_1111_1111_1111_1111);
            IpAddr::V6(Ipv6Addr::from_bits(base ^ (noise >> (noise % 128))))
        }),
    ]
}

proptest! {
    /// The interval tables decide exactly what a scan of every rule decides.
    #[test]
    fn the_tables_agree_with_a_linear_scan(
        deny in proptest::collection::vec(prop_oneof![v4_rule(), v6_rule()], 0..12),
        allow in proptest::collection::vec(prop_oneof![v4_rule(), v6_rule()], 0..12),
        addresses in proptest::collection::vec(address(), 1..40),
    ) {
        let mut rules = FilterRules::new();
        for rule in &deny {
            rules = rules.deny(rule.clone());
        }
        for rule in &allow {
            rules = rules.allow(rule.clone());
        }
        let table = Table::compile(rules);
        for address in addresses {
            let expected = match linear(&deny, address) {
                Some(index) => Decision::Denied(index),
                None if allow.is_empty() || linear(&allow, address).is_some() => Decision::Served,
                None => Decision::NotAllowed,
            };
            prop_assert_eq!(table.decide(address), expected, "{}", address);
        }
    }

    /// The intervals are sorted, disjoint, and never two touching ones with the same rule.
    #[test]
    fn intervals_are_disjoint_and_merged(
        rules in proptest::collection::vec(v4_rule(), 0..20),
    ) {
        let (v4, _) = Intervals::of(&rules);
        for pair in v4.0.windows(2) {
            prop_assert!(pair[0].1 < pair[1].0);
            prop_assert!(pair[0].2 != pair[1].2 || pair[0].1 + 1 < pair[1].0);
        }
    }
}
