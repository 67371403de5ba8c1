//! Property tests: round trips, prefixes, mutations and any chunking of the input.

use super::*;

fn tlvs() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..40)),
        0..4,
    )
    .prop_map(|tlvs| tlvs.iter().flat_map(|(k, v)| tlv(*k, v)).collect())
}

fn ipv6() -> impl Strategy<Value = Ipv6Addr> {
    prop_oneof![
        any::<[u8; 16]>().prop_map(Ipv6Addr::from),
        any::<[u8; 4]>().prop_map(|a| Ipv4Addr::from(a).to_ipv6_mapped()),
        Just(Ipv6Addr::UNSPECIFIED),
        (any::<u16>(), any::<u16>())
            .prop_map(|(a, b)| Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, a, b)),
    ]
}

/// A valid encoded header and what it must parse to.
fn valid_header() -> impl Strategy<Value = (Vec<u8>, ProxyHeader)> {
    let proxied = |version, src: SocketAddr, dst: SocketAddr| ProxyHeader {
        version,
        command: Command::Proxy,
        source: Some(src),
        destination: Some(dst),
    };
    let no_addresses = |version, command| ProxyHeader {
        version,
        command,
        source: None,
        destination: None,
    };
    let v1_tcp4 = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
    )
        .prop_map(move |(s, d, sp, dp)| {
            let (src, dst) = (SocketAddr::from((s, sp)), SocketAddr::from((d, dp)));
            let line = format!("PROXY TCP4 {} {} {sp} {dp}\r\n", src.ip(), dst.ip());
            (line.into_bytes(), proxied(Version::V1, src, dst))
        });
    let v1_tcp6 = (ipv6(), ipv6(), any::<u16>(), any::<u16>()).prop_map(move |(s, d, sp, dp)| {
        let (src, dst) = (SocketAddr::from((s, sp)), SocketAddr::from((d, dp)));
        let line = format!("PROXY TCP6 {s} {d} {sp} {dp}\r\n");
        (line.into_bytes(), proxied(Version::V1, src, dst))
    });
    let v1_unknown = prop::option::of(prop::collection::vec(
        any::<u8>().prop_filter("no CR", |b| *b != b'\r'),
        0..=V1_MAX_LEN - 16,
    ))
    .prop_map(move |tail| {
        let mut line = b"PROXY UNKNOWN".to_vec();
        if let Some(tail) = tail {
            line.push(b' ');
            line.extend(tail);
        }
        line.extend_from_slice(b"\r\n");
        (line, no_addresses(Version::V1, Command::Proxy))
    });
    let v2_inet = (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        any::<u16>(),
        any::<u16>(),
        any::<bool>(),
        tlvs(),
    )
        .prop_map(move |(s, d, sp, dp, datagram, tlvs)| {
            let body = [&s[..], &d, &sp.to_be_bytes(), &dp.to_be_bytes(), &tlvs].concat();
            let (family, expected) = if datagram {
                (0x12, no_addresses(Version::V2, Command::Proxy))
            } else {
                let (src, dst) = (SocketAddr::from((s, sp)), SocketAddr::from((d, dp)));
                (0x11, proxied(Version::V2, src, dst))
            };
            (v2(0x21, family, &body), expected)
        });
    let v2_inet6 = (
        ipv6(),
        ipv6(),
        any::<u16>(),
        any::<u16>(),
        any::<bool>(),
        tlvs(),
    )
        .prop_map(move |(s, d, sp, dp, datagram, tlvs)| {
            let body = [
                &s.octets()[..],
                &d.octets(),
                &sp.to_be_bytes(),
                &dp.to_be_bytes(),
                &tlvs,
            ]
            .concat();
            let (family, expected) = if datagram {
                (0x22, no_addresses(Version::V2, Command::Proxy))
            } else {
                let (src, dst) = (SocketAddr::from((s, sp)), SocketAddr::from((d, dp)));
                (0x21, proxied(Version::V2, src, dst))
            };
            (v2(0x21, family, &body), expected)
        });
    let v2_unix = (
        prop::collection::vec(any::<u8>(), 216),
        prop_oneof![Just(0x31u8), Just(0x32)],
        tlvs(),
    )
        .prop_map(move |(block, family, tlvs)| {
            let body = [block, tlvs].concat();
            (
                v2(0x21, family, &body),
                no_addresses(Version::V2, Command::Proxy),
            )
        });
    let v2_unspec = prop::collection::vec(any::<u8>(), 0..64).prop_map(move |body| {
        (
            v2(0x21, 0x00, &body),
            no_addresses(Version::V2, Command::Proxy),
        )
    });
    let v2_local =
        (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(move |(family, body)| {
            (
                v2(0x20, family, &body),
                no_addresses(Version::V2, Command::Local),
            )
        });
    prop_oneof![
        v1_tcp4, v1_tcp6, v1_unknown, v2_inet, v2_inet6, v2_unix, v2_unspec, v2_local
    ]
}

/// Arbitrary bytes, often starting with a signature so the parser gets past the first byte.
fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            Just(Vec::new()),
            Just(V1_PREFIX.to_vec()),
            Just(b"PROXY TCP4 ".to_vec()),
            Just(b"PROXY TCP6 ".to_vec()),
            Just(b"PROXY UNKNOWN".to_vec()),
            Just([V2_SIGNATURE, &[0x21]].concat()),
            Just([V2_SIGNATURE, &[0x21, 0x11, 0x00]].concat()),
            Just(V2_SIGNATURE.to_vec()),
        ],
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(head, tail)| [head, tail].concat())
}

/// Checks that the result for every prefix of `buf` is consistent with the result for
/// `buf`: an error stays an error of the same kind, and a complete header stays the same.
fn check_prefix_consistency(buf: &[u8]) -> Result<(), TestCaseError> {
    let full = parse(buf);
    for k in 0..buf.len() {
        match parse(&buf[..k]) {
            Ok(Parsed::Incomplete) => {}
            Ok(done @ Parsed::Complete { .. }) => {
                prop_assert_eq!(&full, &Ok(done), "prefix of {} bytes", k);
            }
            Err(e) => {
                let full_kind = full.as_ref().err().map(ParseError::kind);
                prop_assert_eq!(full_kind, Some(e.kind()), "prefix of {} bytes: {}", k, e);
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn never_panics_on_arbitrary_bytes(buf in arbitrary_input()) {
        match parse(&buf) {
            Ok(Parsed::Incomplete) => {}
            Ok(Parsed::Complete { len, .. }) => prop_assert!(len > 0 && len <= buf.len()),
            Err(e) => {
                prop_assert!(PROXY_ERROR_REASONS.contains(&e.reason()));
                prop_assert!(!e.to_string().is_empty());
            }
        }
        check_prefix_consistency(&buf)?;
    }

    #[test]
    fn round_trip(
        (encoded, expected) in valid_header(),
        trailing in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let buf = [&encoded[..], &trailing].concat();
        prop_assert_eq!(
            parse(&buf),
            Ok(Parsed::Complete { header: expected, len: encoded.len() })
        );
    }

    #[test]
    fn strict_prefixes_are_incomplete((encoded, _) in valid_header()) {
        for k in 0..encoded.len() {
            prop_assert_eq!(parse(&encoded[..k]), Ok(Parsed::Incomplete), "prefix {}", k);
        }
    }

    #[test]
    fn mutated_headers_are_judged_consistently(
        (encoded, _) in valid_header(),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
        mutations in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut buf = [&encoded[..], &trailing].concat();
        for (at, byte) in mutations {
            let at = at.index(buf.len());
            buf[at] = byte;
        }
        buf.truncate(cut.index(buf.len() + 1));
        check_prefix_consistency(&buf)?;
    }

    #[test]
    fn read_header_handles_any_chunking(
        (encoded, expected) in valid_header(),
        trailing in prop::collection::vec(any::<u8>(), 0..64),
        sizes in prop::collection::vec(1usize..20, 1..8),
    ) {
        let data = [&encoded[..], &trailing].concat();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let (header, rest) = runtime.block_on(async {
            let reader = Scripted::new(data, sizes);
            let (header, mut stream) = ProxyProtocol::new([])
                .read_header(reader)
                .await
                .expect("a valid header");
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).await.expect("read the rest");
            (header, rest)
        });
        prop_assert_eq!(header, expected);
        prop_assert_eq!(rest, trailing);
    }
}
