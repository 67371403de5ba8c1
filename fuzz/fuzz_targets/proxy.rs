//! Fuzz target for the PROXY protocol parser.
//!
//! `cargo +nightly fuzz run proxy -- -max_total_time=60` from the repository root.

#![no_main]

use portcullis_listen::metrics::PROXY_ERROR_REASONS;
use portcullis_listen::proxy::{MAX_HEADER_LEN, Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(Parsed::Complete { header, len }) => {
            assert!(len > 0 && len <= data.len(), "len {len} of {} bytes", data.len());
            // The header alone parses the same: nothing after it was looked at.
            assert_eq!(parse(&data[..len]), Ok(Parsed::Complete { header, len }));
            // One byte less is a valid, incomplete prefix.
            assert_eq!(parse(&data[..len - 1]), Ok(Parsed::Incomplete));
            // Addresses come in pairs of one family.
            match (header.source, header.destination) {
                (Some(s), Some(d)) => assert_eq!(s.is_ipv4(), d.is_ipv4(), "{header:?}"),
                (None, None) => {}
                _ => panic!("unpaired addresses in {header:?}"),
            }
        }
        Ok(Parsed::Incomplete) => {
            assert!(data.len() < MAX_HEADER_LEN);
            // Every prefix of a valid prefix is a valid prefix.
            assert_eq!(parse(&data[..data.len() / 2]), Ok(Parsed::Incomplete));
        }
        Err(e) => {
            assert!(PROXY_ERROR_REASONS.contains(&e.reason()), "{e}");
            assert!(!e.to_string().is_empty());
            // More bytes never make an error go away or change its kind.
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n");
            assert_eq!(parse(&longer).map_err(|e| e.kind()), Err(e.kind()));
        }
    }
});
