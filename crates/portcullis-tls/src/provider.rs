//! Choosing the crypto provider, and narrowing it to the secure defaults.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ProducesTickets;
use rustls::{CipherSuite, SupportedProtocolVersion};

use crate::error::{TlsError, TlsErrorKind};

/// The protocol versions served: TLS 1.3 and TLS 1.2, nothing older.
///
/// TLS 1.0 and 1.1 are deprecated (RFC 8996) and rustls does not implement them; SSL 3 and
/// below are broken. TLS 1.2 stays for clients that have no TLS 1.3 yet (older Java, embedded
/// devices, some load balancer health checks); with AEAD suites only it has no known weakness.
pub const PROTOCOL_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The cipher suites allowed, when the provider offers them: every AEAD suite of TLS 1.3, and
/// the ECDHE + AEAD (AES-GCM, ChaCha20-Poly1305) suites of TLS 1.2.
///
/// AEAD suites authenticate and encrypt in one construction; the CBC-mode suites they replace
/// are the source of padding-oracle and timing attacks (Lucky 13, POODLE-style attacks), and
/// suites without ECDHE lack forward secrecy. rustls' own providers offer nothing else today;
/// the list is applied explicitly anyway, so a provider given by the application cannot
/// quietly bring in a weaker suite.
pub const ALLOWED_CIPHER_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS13_AES_128_CCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The provider to use: the explicit one, else the one the enabled feature names.
///
/// Never consults or installs rustls' process-wide default provider.
pub(crate) fn choose(
    explicit: Option<Arc<CryptoProvider>>,
) -> Result<Arc<CryptoProvider>, TlsError> {
    if let Some(provider) = explicit {
        return Ok(provider);
    }
    from_features()
}

#[cfg(all(feature = "aws-lc-rs", feature = "ring"))]
fn from_features() -> Result<Arc<CryptoProvider>, TlsError> {
    Err(TlsError::new(
        TlsErrorKind::AmbiguousProvider,
        None,
        "both the `aws-lc-rs` and `ring` features of portcullis-tls are enabled: choose the crypto \
         provider with TlsConfig::provider, or enable only one of the features"
            .to_owned(),
    ))
}

#[cfg(all(feature = "aws-lc-rs", not(feature = "ring")))]
fn from_features() -> Result<Arc<CryptoProvider>, TlsError> {
    Ok(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

#[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
fn from_features() -> Result<Arc<CryptoProvider>, TlsError> {
    Ok(Arc::new(rustls::crypto::ring::default_provider()))
}

#[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
fn from_features() -> Result<Arc<CryptoProvider>, TlsError> {
    Err(TlsError::new(
        TlsErrorKind::NoProvider,
        None,
        "no crypto provider: enable the `aws-lc-rs` or `ring` feature of portcullis-tls, or give one \
         with TlsConfig::provider"
            .to_owned(),
    ))
}

/// A copy of `provider` keeping only the [`ALLOWED_CIPHER_SUITES`].
pub(crate) fn restrict(provider: &CryptoProvider) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut restricted = provider.clone();
    restricted
        .cipher_suites
        .retain(|suite| ALLOWED_CIPHER_SUITES.contains(&suite.suite()));
    if restricted.cipher_suites.is_empty() {
        return Err(TlsError::new(
            TlsErrorKind::InvalidConfig,
            None,
            "the crypto provider offers none of the allowed AEAD cipher suites".to_owned(),
        ));
    }
    Ok(Arc::new(restricted))
}

/// The session ticket encrypter: the provider crate's rotating `Ticketer` (a new random key
/// every 6 hours, the previous key still accepted, so a ticket lives at most 12 hours).
///
/// `None` when neither provider feature is enabled (the provider was given explicitly): TLS
/// 1.3 then resumes through the server-side session cache alone.
pub(crate) fn ticketer() -> Result<Option<Arc<dyn ProducesTickets>>, TlsError> {
    let ticketer: Option<Result<Arc<dyn ProducesTickets>, rustls::Error>>;
    #[cfg(feature = "aws-lc-rs")]
    {
        ticketer = Some(rustls::crypto::aws_lc_rs::Ticketer::new());
    }
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    {
        ticketer = Some(rustls::crypto::ring::Ticketer::new());
    }
    #[cfg(not(any(feature = "aws-lc-rs", feature = "ring")))]
    {
        ticketer = None;
    }
    ticketer.transpose().map_err(|error| {
        TlsError::new(
            TlsErrorKind::InvalidConfig,
            None,
            format!("cannot create the session ticket encrypter: {error}"),
        )
        .with_source(error)
    })
}
