//! Property tests of PEM loading: arbitrary bytes, mangled real PEM and swapped inputs never
//! panic, and every failure is one of the documented error kinds with a message naming the
//! source.

use portcullis_tls::{CertKeyPair, TlsErrorKind};
use proptest::prelude::*;
use rcgen::{CertificateParams, KeyPair};

fn real_pair() -> (String, String) {
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("certificate");
    (cert.pem(), key.serialize_pem())
}

fn check(cert: &[u8], key: &[u8]) -> Result<(), TestCaseError> {
    if let Err(error) = CertKeyPair::from_pem(cert, key) {
        prop_assert!(
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
        let message = error.to_string();
        prop_assert!(message.contains("in memory"), "{message}");
        prop_assert!(!message.contains('\n'), "one line: {message}");
    }
    Ok(())
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(cert in proptest::collection::vec(any::<u8>(), 0..2048),
                                   key in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&cert, &key)?;
    }

    #[test]
    fn mangled_pem_never_panics(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                                cut in any::<usize>(), swap in any::<bool>()) {
        let (cert, key) = real_pair();
        let (mut cert, mut key) = (cert.into_bytes(), key.into_bytes());
        for (at, byte) in flips {
            let target = if at % 2 == 0 { &mut cert } else { &mut key };
            let len = target.len();
            target[at % len] = byte;
        }
        let cut_at = cut % cert.len();
        cert.truncate(cut_at.max(1));
        if swap {
            check(&key, &cert)?;
        } else {
            check(&cert, &key)?;
        }
    }
}

#[test]
fn the_real_pair_loads() {
    let (cert, key) = real_pair();
    assert!(CertKeyPair::from_pem(cert.as_bytes(), key.as_bytes()).is_ok());
}
