//! Fuzz target: the `Host` value check of RFC 9112 §3.2 never panics, and what it accepts is
//! a well-formed `uri-host [ ":" port ]`.
//!
//! `cargo +nightly fuzz run host -- -max_total_time=60` from the repository root.
//!
//! Invariants of an accepted value: the host and the port are the whole value (with the `:`
//! between them); the host has no byte a host cannot hold (no `@`, `/`, space, control, or
//! non-ASCII byte), brackets only around an IP literal; the port is digits only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_server::internal::split_host;

fuzz_target!(|value: &[u8]| {
    let Some((host, port)) = split_host(value) else {
        return;
    };
    let rebuilt = match port {
        Some(port) => host.len() + 1 + port.len(),
        None => host.len(),
    };
    // The value is the host, optionally followed by ":" and the port (an empty port is dropped).
    assert!(rebuilt == value.len() || rebuilt + 1 == value.len());
    assert!(value.starts_with(host));
    assert!(
        host.iter()
            .all(|&b| b.is_ascii_graphic() && !matches!(b, b'@' | b'/' | b'?' | b'#' | b'"'))
    );
    if let Some((&b'[', _)) = host.split_first() {
        assert_eq!(host.last(), Some(&b']'));
    } else {
        assert!(!host.contains(&b'[') && !host.contains(&b']'));
    }
    if let Some(port) = port {
        assert!(!port.is_empty() && port.iter().all(u8::is_ascii_digit));
    }
});
