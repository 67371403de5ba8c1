//! Certificate/key pairs: reading PEM from files or memory, and validating before use.

use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use x509_parser::extensions::GeneralName;

use crate::error::{TlsError, TlsErrorKind};

/// How far a certificate's `notBefore` may lie in the future and still be accepted: 5 minutes.
///
/// Issuers such as cert-manager's CA issuer set `notBefore` to the moment of issue, and the
/// new files reach the server within a second. A server whose clock runs a little behind the
/// issuer's would otherwise refuse a fresh certificate, and the watcher would not try the same
/// files again. Five minutes covers ordinary clock drift; a certificate dated further ahead is
/// refused as [`NotYetValid`](TlsErrorKind::NotYetValid).
pub const NOT_BEFORE_LEEWAY_SECS: i64 = 5 * 60;

/// A certificate chain and its private key, read and checked, ready to serve.
///
/// Made from PEM files ([`CertKeyPair::from_pem_files`]) or PEM in memory
/// ([`CertKeyPair::from_pem`]). The certificate file holds the end-entity certificate first,
/// then its intermediates (the usual `fullchain.pem`); the key file holds one PKCS#8
/// (`BEGIN PRIVATE KEY`), PKCS#1 (`BEGIN RSA PRIVATE KEY`) or SEC1 (`BEGIN EC PRIVATE KEY`)
/// key. Both may be the same file. Encrypted keys are not supported.
///
/// Loading checks that the certificate parses and is within its validity period (see
/// [`NOT_BEFORE_LEEWAY_SECS`]); [`TlsConfig::build`](crate::TlsConfig::build) then checks that
/// the key matches the certificate with the chosen crypto provider. Only the end-entity
/// certificate's dates are checked: some chains deliberately carry an expired cross-signed
/// intermediate for old clients, and the client judges the chain.
///
/// A pair made from files is read again on every reload; a pair made from memory never
/// changes. Cloning is cheap.
#[derive(Clone)]
pub struct CertKeyPair {
    pub(crate) source: Source,
    pub(crate) parsed: Arc<Parsed>,
}

#[derive(Clone, Debug)]
pub(crate) enum Source {
    Files { cert: PathBuf, key: PathBuf },
    Memory,
}

/// The checked contents of a pair.
pub(crate) struct Parsed {
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) key: PrivateKeyDer<'static>,
    /// `notAfter` of the end-entity certificate, in seconds since the Unix epoch.
    pub(crate) not_after: i64,
    /// dNSName entries of the end-entity certificate's subjectAltName, lowercased.
    pub(crate) dns_names: Vec<String>,
    /// A hash of the PEM input, to tell whether files changed since they were loaded.
    pub(crate) fingerprint: u64,
}

/// Names the inputs in error messages.
#[derive(Clone, Copy)]
pub(crate) struct Origin<'a> {
    cert: Option<&'a Path>,
    key: Option<&'a Path>,
}

impl Origin<'_> {
    pub(crate) const MEMORY: Origin<'static> = Origin {
        cert: None,
        key: None,
    };

    fn cert_name(&self) -> String {
        match self.cert {
            Some(path) => path.display().to_string(),
            None => "certificate PEM (in memory)".to_owned(),
        }
    }

    fn key_name(&self) -> String {
        match self.key {
            Some(path) => path.display().to_string(),
            None => "private key PEM (in memory)".to_owned(),
        }
    }
}

impl CertKeyPair {
    /// Reads a certificate chain and a private key from PEM files and checks them.
    ///
    /// Symlinks are followed, so the paths can point into a Kubernetes secret volume
    /// (`/etc/tls/tls.crt -> ..data/tls.crt`).
    ///
    /// # Errors
    ///
    /// A [`TlsError`] naming the file: [`NotFound`](TlsErrorKind::NotFound),
    /// [`Unreadable`](TlsErrorKind::Unreadable), [`NoCertificate`](TlsErrorKind::NoCertificate),
    /// [`NoPrivateKey`](TlsErrorKind::NoPrivateKey), [`InvalidPem`](TlsErrorKind::InvalidPem),
    /// [`InvalidCertificate`](TlsErrorKind::InvalidCertificate),
    /// [`Expired`](TlsErrorKind::Expired) or [`NotYetValid`](TlsErrorKind::NotYetValid).
    pub fn from_pem_files(cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<Self, TlsError> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let cert_pem = read_file(cert)?;
        let key_pem = read_file(key)?;
        let parsed = parse(
            &cert_pem,
            &key_pem,
            Origin {
                cert: Some(cert),
                key: Some(key),
            },
            unix_now(),
        )?;
        Ok(Self {
            source: Source::Files {
                cert: cert.to_path_buf(),
                key: key.to_path_buf(),
            },
            parsed: Arc::new(parsed),
        })
    }

    /// Reads a certificate chain and a private key from PEM text in memory and checks them.
    ///
    /// # Errors
    ///
    /// As [`CertKeyPair::from_pem_files`], without the file errors; the message says
    /// "certificate PEM (in memory)" or "private key PEM (in memory)" in place of a path.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let parsed = parse(cert_pem, key_pem, Origin::MEMORY, unix_now())?;
        Ok(Self {
            source: Source::Memory,
            parsed: Arc::new(parsed),
        })
    }

    /// The certificate chain, end-entity certificate first.
    #[must_use]
    pub fn certificates(&self) -> &[CertificateDer<'static>] {
        &self.parsed.chain
    }

    /// When the end-entity certificate expires.
    #[must_use]
    pub fn not_after(&self) -> SystemTime {
        system_time(self.parsed.not_after)
    }

    /// The certificate and key files, for a pair read from files.
    #[must_use]
    pub fn files(&self) -> Option<(&Path, &Path)> {
        match &self.source {
            Source::Files { cert, key } => Some((cert, key)),
            Source::Memory => None,
        }
    }
}

impl fmt::Debug for CertKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        let mut s = f.debug_struct("CertKeyPair");
        match &self.source {
            Source::Files { cert, key } => s.field("cert", cert).field("key", key),
            Source::Memory => s.field("source", &"memory"),
        };
        s.field("chain_len", &self.parsed.chain.len())
            .field("not_after", &format_unix(self.parsed.not_after))
            .finish()
    }
}

impl Parsed {
    /// Loads the key with `provider` and checks that it matches the certificate.
    pub(crate) fn certify(
        &self,
        provider: &CryptoProvider,
        origin: Origin<'_>,
    ) -> Result<Arc<CertifiedKey>, TlsError> {
        let signing_key = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|error| {
                TlsError::new(
                    TlsErrorKind::UnsupportedKey,
                    origin.key,
                    format!(
                        "{}: the private key cannot be used: {error}",
                        origin.key_name()
                    ),
                )
                .with_source(error)
            })?;
        let certified = CertifiedKey::new(self.chain.clone(), signing_key);
        match certified.keys_match() {
            Ok(()) => {}
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                // Only a custom provider whose keys cannot report their public key gets here;
                // both built-in providers can.
                tracing::warn!(
                    key = %origin.key_name(),
                    "the crypto provider cannot tell whether the private key matches the certificate; not checked"
                );
            }
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
                return Err(TlsError::new(
                    TlsErrorKind::KeyMismatch,
                    origin.key,
                    format!(
                        "{}: the private key does not match the certificate in {}",
                        origin.key_name(),
                        origin.cert_name()
                    ),
                ));
            }
            Err(error) => {
                return Err(TlsError::new(
                    TlsErrorKind::InvalidCertificate,
                    origin.cert,
                    format!(
                        "{}: the certificate cannot be checked against the private key: {error}",
                        origin.cert_name()
                    ),
                )
                .with_source(error));
            }
        }
        Ok(Arc::new(certified))
    }
}

impl Source {
    pub(crate) fn origin(&self) -> Origin<'_> {
        match self {
            Source::Files { cert, key } => Origin {
                cert: Some(cert),
                key: Some(key),
            },
            Source::Memory => Origin::MEMORY,
        }
    }
}

/// Reads a whole file, sorting failures into "not found" and "unreadable".
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| file_error(path, error))
}

pub(crate) fn file_error(path: &Path, error: io::Error) -> TlsError {
    if error.kind() == io::ErrorKind::NotFound {
        TlsError::new(
            TlsErrorKind::NotFound,
            Some(path),
            format!("{}: file not found", path.display()),
        )
        .with_source(error)
    } else {
        TlsError::new(
            TlsErrorKind::Unreadable,
            Some(path),
            format!("{}: cannot read the file: {error}", path.display()),
        )
        .with_source(error)
    }
}

pub(crate) fn fingerprint(cert_pem: &[u8], key_pem: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    cert_pem.hash(&mut hasher);
    key_pem.hash(&mut hasher);
    hasher.finish()
}

/// Reads the PEM certificates of `pem`, failing on malformed PEM and on no certificate at all.
pub(crate) fn parse_certificates(
    pem: &[u8],
    path: Option<&Path>,
    name: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|error| invalid_pem(path, name, error))?;
    if chain.is_empty() {
        return Err(TlsError::new(
            TlsErrorKind::NoCertificate,
            path,
            format!("{name}: no certificate found (expected a PEM `BEGIN CERTIFICATE` section)"),
        ));
    }
    for (index, der) in chain.iter().enumerate() {
        if let Err(error) = x509_parser::parse_x509_certificate(der) {
            return Err(TlsError::new(
                TlsErrorKind::InvalidCertificate,
                path,
                format!(
                    "{name}: certificate {} of the file is not valid X.509: {error}",
                    index + 1
                ),
            ));
        }
    }
    Ok(chain)
}

fn invalid_pem(path: Option<&Path>, name: &str, error: pem::Error) -> TlsError {
    TlsError::new(
        TlsErrorKind::InvalidPem,
        path,
        format!("{name}: malformed PEM: {error}"),
    )
    .with_source(error)
}

/// Parses and checks a pair, `now` being seconds since the Unix epoch.
pub(crate) fn parse(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: Origin<'_>,
    now: i64,
) -> Result<Parsed, TlsError> {
    let cert_name = origin.cert_name();
    let key_name = origin.key_name();
    let chain = parse_certificates(cert_pem, origin.cert, &cert_name)?;
    let key = match PrivateKeyDer::from_pem_slice(key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            return Err(TlsError::new(
                TlsErrorKind::NoPrivateKey,
                origin.key,
                format!(
                    "{key_name}: no private key found (expected a PEM `BEGIN PRIVATE KEY`, \
                     `BEGIN RSA PRIVATE KEY` or `BEGIN EC PRIVATE KEY` section; encrypted keys \
                     are not supported)"
                ),
            ));
        }
        Err(error) => return Err(invalid_pem(origin.key, &key_name, error)),
    };

    let (not_before, not_after, dns_names) = match chain.first() {
        Some(leaf) => leaf_facts(leaf, origin.cert, &cert_name)?,
        None => {
            return Err(TlsError::new(
                TlsErrorKind::NoCertificate,
                origin.cert,
                format!("{cert_name}: no certificate found"),
            ));
        }
    };
    if now > not_after {
        return Err(TlsError::new(
            TlsErrorKind::Expired,
            origin.cert,
            format!(
                "{cert_name}: the certificate expired at {}",
                format_unix(not_after)
            ),
        ));
    }
    if now.saturating_add(NOT_BEFORE_LEEWAY_SECS) < not_before {
        return Err(TlsError::new(
            TlsErrorKind::NotYetValid,
            origin.cert,
            format!(
                "{cert_name}: the certificate is not valid before {}",
                format_unix(not_before)
            ),
        ));
    }
    Ok(Parsed {
        chain,
        key,
        not_after,
        dns_names,
        fingerprint: fingerprint(cert_pem, key_pem),
    })
}

/// Validity and DNS names of the end-entity certificate.
fn leaf_facts(
    der: &CertificateDer<'_>,
    path: Option<&Path>,
    name: &str,
) -> Result<(i64, i64, Vec<String>), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|error| {
        TlsError::new(
            TlsErrorKind::InvalidCertificate,
            path,
            format!("{name}: the certificate is not valid X.509: {error}"),
        )
    })?;
    let validity = cert.validity();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for general in &san.value.general_names {
            if let GeneralName::DNSName(dns) = general {
                dns_names.push(dns.trim_end_matches('.').to_ascii_lowercase());
            }
        }
    }
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        dns_names,
    ))
}

pub(crate) fn unix_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn system_time(unix: i64) -> SystemTime {
    let magnitude = std::time::Duration::from_secs(unix.unsigned_abs());
    if unix >= 0 {
        UNIX_EPOCH.checked_add(magnitude).unwrap_or(UNIX_EPOCH)
    } else {
        UNIX_EPOCH.checked_sub(magnitude).unwrap_or(UNIX_EPOCH)
    }
}

/// Formats seconds since the Unix epoch as RFC 3339 UTC (`2026-05-01T12:00:00Z`).
pub(crate) fn format_unix(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_unix_times() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_unix(1_777_636_800), "2026-05-01T12:00:00Z");
        assert_eq!(format_unix(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn garbage_is_no_certificate_not_a_panic() {
        let error = match parse(b"garbage", b"garbage", Origin::MEMORY, 0) {
            Err(error) => error,
            Ok(_) => panic!("garbage parsed"),
        };
        assert_eq!(error.kind(), TlsErrorKind::NoCertificate);
        assert!(error.to_string().contains("in memory"), "{error}");
    }

    #[test]
    fn truncated_pem_is_invalid_pem() {
        let error = match parse(
            b"-----BEGIN CERTIFICATE-----\nMIIB\n",
            b"",
            Origin::MEMORY,
            0,
        ) {
            Err(error) => error,
            Ok(_) => panic!("truncated PEM parsed"),
        };
        assert_eq!(error.kind(), TlsErrorKind::InvalidPem);
    }

    #[test]
    fn base64_garbage_in_a_certificate_section_is_invalid_certificate() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let error = match parse(pem, b"", Origin::MEMORY, 0) {
            Err(error) => error,
            Ok(_) => panic!("garbage certificate parsed"),
        };
        assert_eq!(error.kind(), TlsErrorKind::InvalidCertificate);
    }
}
