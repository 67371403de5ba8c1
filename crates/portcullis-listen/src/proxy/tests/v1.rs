//! v1 lines: the specification's examples, every malformation, early errors.

use super::*;

#[test]
fn v1_tcp4_spec_example() {
    let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
    let mut buf = line.to_vec();
    buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(
        complete(&buf),
        (
            header(
                Version::V1,
                Command::Proxy,
                Some("192.168.0.1:56324"),
                Some("192.168.0.11:443")
            ),
            line.len()
        )
    );
}

#[test]
fn v1_tcp6() {
    let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n";
    assert_eq!(
        complete(line),
        (
            header(
                Version::V1,
                Command::Proxy,
                Some("[2001:db8::1]:56324"),
                Some("[2001:db8::2]:443")
            ),
            line.len()
        )
    );
    let widest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                   ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    let (h, len) = complete(widest);
    assert_eq!(len, 104);
    assert_eq!(
        h.source,
        Some(addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
    );
    // An IPv4-mapped address is a valid IPv6 address and is kept as such.
    let (h, _) = complete(b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1 0\r\n");
    assert_eq!(h.source, Some(addr("[::ffff:10.1.2.3]:1")));
    assert_eq!(h.destination, Some(addr("[::1]:0")));
}

#[test]
fn v1_unknown() {
    let none = header(Version::V1, Command::Proxy, None, None);
    assert_eq!(complete(b"PROXY UNKNOWN\r\nGET"), (none, 15));
    // The specification's worst case, exactly the 107-byte limit; what follows UNKNOWN is
    // ignored.
    let worst = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                  ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(worst.len(), V1_MAX_LEN);
    assert_eq!(complete(worst), (none, V1_MAX_LEN));
    assert_eq!(complete(b"PROXY UNKNOWN garbage\xff\n!\r\n"), (none, 26));
}

#[test]
fn v1_longer_than_107_bytes_is_too_long() {
    let long = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655350\r\n";
    assert_eq!(long.len(), V1_MAX_LEN + 1);
    assert_eq!(error(long).kind(), ParseErrorKind::TooLong);
    // Rejected as soon as the CRLF can no longer fit, without waiting for more.
    assert_eq!(error(&long[..V1_MAX_LEN - 1]).reason(), "too_long");
    assert_eq!(parse(&long[..V1_MAX_LEN - 2]), Ok(Parsed::Incomplete));
}

#[test]
fn v1_malformed() {
    let cases: &[(&[u8], ParseErrorKind, &str)] = &[
        (b"PROXZ TCP4", ParseErrorKind::NotProxy, "\"PROXZ TCP4\""),
        (b"proxy TCP4", ParseErrorKind::NotProxy, "\"proxy TCP4\""),
        (b"PROXY tcp4 ", ParseErrorKind::BadV1, "\"tcp4\""),
        (b"PROXY TCP5 ", ParseErrorKind::BadV1, "\"TCP5\""),
        (b"PROXY UNKNOWNX\r\n", ParseErrorKind::BadV1, "\"UNKNOWNX\""),
        (b"PROXY \r\n", ParseErrorKind::BadV1, "got \"\""),
        (b"PROXY  TCP4", ParseErrorKind::BadV1, "got \"\""),
        (
            b"PROXY TCP4\r\n",
            ParseErrorKind::BadV1,
            "without addresses",
        ),
        // Missing CRLF: LF alone, CR followed by something else.
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
            ParseErrorKind::BadV1,
            "destination port \"443\\n\"",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX",
            ParseErrorKind::BadV1,
            "CR not followed by LF but by \"X\"",
        ),
        (
            b"PROXY UNKNOWN\r\r\n",
            ParseErrorKind::BadV1,
            "CR not followed by LF but by \"\\r\"",
        ),
        // Ports.
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n",
            ParseErrorKind::BadV1,
            "source port \"65536\"",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 080\r\n",
            ParseErrorKind::BadV1,
            "destination port \"080\"",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n",
            ParseErrorKind::BadV1,
            "source port \"+80\"",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n",
            ParseErrorKind::BadV1,
            "source port \"-1\"",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8  443\r\n",
            ParseErrorKind::BadV1,
            "source port \"\"",
        ),
        // Addresses of the wrong family or invalid.
        (
            b"PROXY TCP4 ::1 ::1 80 443\r\n",
            ParseErrorKind::BadV1,
            "TCP4 line with an IPv6 source address",
        ),
        (
            b"PROXY TCP6 1.2.3.4 ::1 80 443\r\n",
            ParseErrorKind::BadV1,
            "TCP6 line with an IPv4 source address \"1.2.3.4\"",
        ),
        (
            b"PROXY TCP4 1.2.3.4 256.1.1.1 80 443\r\n",
            ParseErrorKind::BadV1,
            "invalid TCP4 destination address \"256.1.1.1\"",
        ),
        (
            b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n",
            ParseErrorKind::BadV1,
            "\"01.2.3.4\"",
        ),
        (
            b"PROXY TCP6 fe80::1%eth0 ::1 80 443\r\n",
            ParseErrorKind::BadV1,
            "invalid TCP6 source address",
        ),
        // Field count.
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
            ParseErrorKind::BadV1,
            "after 3 of its 4 fields",
        ),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 x\r\n",
            ParseErrorKind::BadV1,
            "unexpected \"x\"",
        ),
    ];
    for &(input, kind, needle) in cases {
        let e = error(input);
        assert_eq!(e.kind(), kind, "{e} for {}", quote(input));
        assert_eq!(e.reason(), kind.as_str());
        let shown = e.to_string();
        assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    }
}

#[test]
fn errors_are_reported_before_the_line_ends() {
    // Each input is a prefix that no further byte can turn into a valid header.
    let cases: &[(&[u8], &str)] = &[
        (b"G", "not_proxy"),
        (b"\x16\x03\x01", "not_proxy"),
        (b"PROXY X", "bad_v1"),
        (b"PROXY TCP4 1.2.3.4:", "bad_v1"),
        (b"PROXY TCP4 :", "bad_v1"),
        (b"PROXY TCP6 1.2.3.4 g", "bad_v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999", "bad_v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", "bad_v1"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 ", "bad_v1"),
        (b"PROXY TCP4 1234567890123456", "bad_v1"),
    ];
    for &(input, reason) in cases {
        assert_eq!(error(input).reason(), reason, "{}", quote(input));
    }
    // While these are still valid prefixes.
    for input in [
        &b""[..],
        b"P",
        b"PROXY",
        b"PROXY UNK",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 0",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r",
        b"\r\n\r\n\0",
    ] {
        assert_eq!(parse(input), Ok(Parsed::Incomplete), "{}", quote(input));
    }
}

#[test]
fn display_quotes_few_bytes_escaped() {
    let e = error(b"\xff\x00GET /a-long-path-that-goes-on-and-on HTTP/1.1\r\n");
    assert_eq!(
        e.to_string(),
        "not a PROXY protocol header: expected \"PROXY \" or the v2 signature, got \
         \"\\xff\\x00GET /a-long-pa\"..."
    );
}
