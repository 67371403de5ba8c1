//! Fuzz target for PEM certificate and key loading (portcullis-tls): any bytes give a pair or one
//! of the documented errors, never a panic.
//!
//! `cargo +nightly fuzz run pem -- -max_total_time=60` from the repository root.
//!
//! Input layout: the bytes before the first `0xff` are the certificate file, the rest the key
//! file (`0xff` never occurs in PEM text).

#![no_main]

use portcullis_tls::{CertKeyPair, TlsErrorKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cert, key) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[..0]),
    };
    match CertKeyPair::from_pem(cert, key) {
        Ok(pair) => assert!(!pair.certificates().is_empty()),
        Err(error) => {
            assert!(
                matches!(
                    error.kind(),
                    TlsErrorKind::NoCertificate
                        | TlsErrorKind::NoPrivateKey
                        | TlsErrorKind::InvalidPem
                        | TlsErrorKind::InvalidCertificate
                        | TlsErrorKind::KeyMismatch
                        | TlsErrorKind::UnsupportedKey
                        | TlsErrorKind::Expired
                        | TlsErrorKind::NotYetValid
                ),
                "{error:?}"
            );
            assert!(!error.to_string().contains('\n'));
        }
    }
});
