//! v2 headers: byte by byte, TLVs, every malformation, the length cap.

use super::*;

#[test]
fn v2_inet_byte_by_byte() {
    let bytes = [
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, // version 2, PROXY
        0x11, // INET, STREAM
        0x00, 0x0c, // 12 bytes follow
        192, 168, 0, 1, // source address
        192, 168, 0, 11, // destination address
        0xdc, 0x04, // source port 56324
        0x01, 0xbb, // destination port 443
        b'G', b'E', b'T', // application data
    ];
    assert_eq!(
        complete(&bytes),
        (
            header(
                Version::V2,
                Command::Proxy,
                Some("192.168.0.1:56324"),
                Some("192.168.0.11:443")
            ),
            28
        )
    );
}

#[test]
fn v2_inet6_byte_by_byte() {
    let mut bytes = vec![
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
        0x21, // INET6, STREAM
        0x00, 0x24, // 36 bytes
    ];
    bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
    bytes.extend_from_slice(&[0x04, 0xd2, 0x01, 0xbb]); // 1234, 443
    assert_eq!(
        complete(&bytes),
        (
            header(
                Version::V2,
                Command::Proxy,
                Some("[2001:db8::1]:1234"),
                Some("[2001:db8::2]:443")
            ),
            52
        )
    );
}

#[test]
fn v2_local_ignores_family_and_block() {
    let local = header(Version::V2, Command::Local, None, None);
    assert_eq!(complete(&v2(0x20, 0x00, &[])), (local, 16));
    // "the receiver must ... discard the protocol block including the family"
    assert_eq!(complete(&v2(0x20, 0xff, &[1, 2, 3])), (local, 19));
    assert_eq!(complete(&v2(0x20, 0x11, &[9; 12])), (local, 28));
}

#[test]
fn v2_unix_unspec_and_datagram_carry_no_tcp_addresses() {
    let none = header(Version::V2, Command::Proxy, None, None);
    let mut unix = [0u8; 216];
    unix[..17].copy_from_slice(b"/var/run/src.sock");
    unix[108..125].copy_from_slice(b"/var/run/dst.sock");
    assert_eq!(complete(&v2(0x21, 0x31, &unix)), (none, 16 + 216));
    assert_eq!(complete(&v2(0x21, 0x32, &unix)), (none, 16 + 216));
    assert_eq!(complete(&v2(0x21, 0x00, &[])), (none, 16));
    assert_eq!(complete(&v2(0x21, 0x00, &[7; 5])), (none, 21));
    assert_eq!(complete(&v2(0x21, 0x12, &[1; 12])), (none, 28));
    assert_eq!(complete(&v2(0x21, 0x22, &[1; 36])), (none, 52));
}

#[test]
fn v2_tlvs_are_skipped() {
    let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x00, 0x50];
    body.extend(tlv(0x01, b"h2")); // ALPN
    body.extend(tlv(0x02, b"example.com")); // AUTHORITY
    body.extend(tlv(0x04, b"")); // NOOP
    body.extend(tlv(0x20, &[0x01, 0, 0, 0, 0])); // SSL, with an empty sub-TLV area
    let mut buf = v2(0x21, 0x11, &body);
    let len = buf.len();
    buf.extend_from_slice(b"\x16\x03\x01");
    assert_eq!(
        complete(&buf),
        (
            header(
                Version::V2,
                Command::Proxy,
                Some("10.0.0.1:12345"),
                Some("10.0.0.2:80")
            ),
            len
        )
    );
    // The same with a UNIX block.
    let mut body = vec![0; 216];
    body.extend(tlv(0x05, b"unique-id"));
    let buf = v2(0x21, 0x31, &body);
    assert_eq!(complete(&buf).1, buf.len());
}

#[test]
fn v2_malformed() {
    let inet = [1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187];
    let mut bad_signature = v2(0x21, 0x11, &inet);
    bad_signature[6] = 0x0b;
    let mut overrun = inet.to_vec();
    overrun.extend_from_slice(&[0x01, 0x00, 0x05, b'h', b'2']);
    let mut short_tail = inet.to_vec();
    short_tail.extend(tlv(0x04, b""));
    short_tail.extend_from_slice(&[0x01, 0x00]);
    let cases: &[(Vec<u8>, ParseErrorKind, &str)] = &[
        (
            bad_signature,
            ParseErrorKind::NotProxy,
            "\"\\r\\n\\r\\n\\x00\\r\\x0b",
        ),
        (
            v2(0x31, 0x11, &inet),
            ParseErrorKind::Unsupported,
            "version 3",
        ),
        (
            v2(0x11, 0x11, &inet),
            ParseErrorKind::Unsupported,
            "version 1",
        ),
        (
            v2(0x22, 0x11, &inet),
            ParseErrorKind::Unsupported,
            "command 2",
        ),
        (
            v2(0x21, 0x41, &inet),
            ParseErrorKind::Unsupported,
            "byte 0x41",
        ),
        (
            v2(0x21, 0x13, &inet),
            ParseErrorKind::Unsupported,
            "byte 0x13",
        ),
        (
            v2(0x21, 0x10, &inet),
            ParseErrorKind::Unsupported,
            "byte 0x10",
        ),
        (
            v2(0x21, 0x01, &inet),
            ParseErrorKind::Unsupported,
            "byte 0x01",
        ),
        (
            v2(0x21, 0x11, &inet[..8]),
            ParseErrorKind::BadV2,
            "length 8 is shorter than the 12-byte INET address block",
        ),
        (
            v2(0x21, 0x21, &[0; 12]),
            ParseErrorKind::BadV2,
            "36-byte INET6 address block",
        ),
        (
            v2(0x21, 0x31, &[0; 108]),
            ParseErrorKind::BadV2,
            "216-byte UNIX address block",
        ),
        (
            v2(0x21, 0x11, &overrun),
            ParseErrorKind::BadV2,
            "TLV of type 0x01 at byte 28 announces 5 value bytes but only 2 remain",
        ),
        (
            v2(0x21, 0x11, &short_tail),
            ParseErrorKind::BadV2,
            "2 bytes at byte 31 are too short for a TLV",
        ),
    ];
    for (input, kind, needle) in cases {
        let e = error(input);
        assert_eq!(e.kind(), *kind, "{e}");
        let shown = e.to_string();
        assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
    }
}

#[test]
fn v2_errors_are_reported_at_the_offending_byte() {
    let sig = V2_SIGNATURE;
    // A wrong signature byte, a version, a command, a family, then lengths.
    assert_eq!(error(&[0x0d, 0x0a, 0x0d, 0x0b]).reason(), "not_proxy");
    assert_eq!(error(&[sig, &[0x31]].concat()).reason(), "unsupported");
    assert_eq!(error(&[sig, &[0x2f]].concat()).reason(), "unsupported");
    assert_eq!(
        error(&[sig, &[0x21, 0x44]].concat()).reason(),
        "unsupported"
    );
    assert_eq!(
        parse(&[sig, &[0x21, 0x11, 0x00]].concat()),
        Ok(Parsed::Incomplete)
    );
    assert_eq!(
        error(&[sig, &[0x21, 0x11, 0x00, 0x08]].concat()).reason(),
        "bad_v2"
    );
    // TLV lengths are checked as soon as a TLV's own length field arrives.
    let mut partial = v2(0x21, 0x11, &[0; 40]);
    partial.truncate(16 + 12);
    assert_eq!(parse(&partial), Ok(Parsed::Incomplete));
    partial.extend_from_slice(&[0x01, 0x00, 0xff]);
    assert_eq!(error(&partial).reason(), "bad_v2");
}

#[test]
fn v2_length_cap() {
    let body = vec![0; 200];
    let buf = v2(0x21, 0x00, &body);
    assert!(matches!(
        parse_limited(&buf, 216),
        Ok(Progress::Complete { len: 216, .. })
    ));
    // Rejected as soon as the length field has arrived.
    let e = parse_limited(&buf[..16], 215)
        .err()
        .expect("a header over the cap is rejected");
    assert_eq!(e.kind(), ParseErrorKind::TooLong);
    assert_eq!(
        e.to_string(),
        "PROXY header too long: v2 header of 216 bytes exceeds the limit of 215"
    );
    // The largest header the format can express fits the default cap.
    let largest = v2(0x21, 0x00, &vec![0; 65535]);
    assert_eq!(complete(&largest).1, MAX_HEADER_LEN);
}
