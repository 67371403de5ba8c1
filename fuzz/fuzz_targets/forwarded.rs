//! Fuzz target: forwarding headers sent through a trusted peer never produce an invented
//! client address.
//!
//! `cargo +nightly fuzz run forwarded -- -max_total_time=60` from the repository root.
//!
//! Input layout: the first byte picks the trusted set, the header order and `max_hops`; the rest
//! is split on `\n` (a byte no header value can hold) into up to six field lines, dealt in turn
//! to `Forwarded`, `X-Forwarded-For` and `X-Real-IP`.
//!
//! Invariant: the result is the peer, or an address written literally in the input.
#![no_main]

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use portcullis_limit::client::{ClientIp, ForwardingHeader, MAX_ELEMENT_LEN, TrustedProxies};
use portcullis_limit::internal::{RevElements, parse_forwarded_element, parse_xff_element};

const NAMES: [&str; 3] = ["forwarded", "x-forwarded-for", "x-real-ip"];

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };

    // Trusting everything walks as deep as max_hops allows; the narrow set exercises stops.
    let cidrs: &[&str] = if control & 1 == 0 {
        &["0.0.0.0/0", "::/0"]
    } else {
        &["10.0.0.0/8", "2001:db8::/32", "::ffff:192.0.2.0/120"]
    };
    let trusted = TrustedProxies::new(cidrs.iter().map(|c| c.parse().expect("constant CIDR")));
    let order = match (control >> 1) & 3 {
        0 => vec![
            ForwardingHeader::Forwarded,
            ForwardingHeader::XForwardedFor,
            ForwardingHeader::XRealIp,
        ],
        1 => vec![ForwardingHeader::XForwardedFor],
        2 => vec![ForwardingHeader::XRealIp, ForwardingHeader::Forwarded],
        _ => vec![ForwardingHeader::Forwarded],
    };
    let max_hops = usize::from(control >> 3);
    let resolver = ClientIp::new(trusted).headers(order).max_hops(max_hops);

    let mut headers = HeaderMap::new();
    for (i, line) in input.split(|&b| b == b'\n').take(6).enumerate() {
        // The element-level parsers keep the same invariant on their own.
        for got in [parse_xff_element(line), parse_forwarded_element(line)]
            .into_iter()
            .flatten()
        {
            assert!(appears_literally(line, got), "parser invented {got}");
        }
        for element in RevElements::forwarded(line).take(64) {
            if let Some(got) = parse_forwarded_element(element) {
                assert!(element.len() <= MAX_ELEMENT_LEN);
                assert!(appears_literally(element, got), "parser invented {got}");
            }
        }
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(HeaderName::from_static(NAMES[i % 3]), value);
        }
    }

    let peer: IpAddr = if control & 4 == 0 {
        IpAddr::from([10, 0, 0, 1])
    } else {
        "::ffff:10.0.0.1".parse().expect("constant address")
    };
    let client = resolver.resolve(peer, &headers);
    assert!(
        client == peer.to_canonical() || appears_literally(input, client),
        "{client} is neither the peer nor in the input"
    );
});

/// Whether `ip` is written in `input`: some run of address characters (hex digits, `.`, `:`),
/// possibly without a trailing `:port`, parses to it (both canonicalised).
fn appears_literally(input: &[u8], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    input
        .split(|b| !(b.is_ascii_hexdigit() || *b == b'.' || *b == b':'))
        .filter(|run| !run.is_empty())
        .any(|run| {
            let without_port = run
                .iter()
                .rposition(|&b| b == b':')
                .map_or(run, |at| &run[..at]);
            [run, without_port].iter().any(|candidate| {
                std::str::from_utf8(candidate)
                    .ok()
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .is_some_and(|parsed| parsed.to_canonical() == ip)
            })
        })
}
