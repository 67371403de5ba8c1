//! [`TlsError`] for configuration and loading, [`HandshakeError`] for a failed handshake.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What went wrong while loading certificates or building the configuration.
///
/// Test it with [`TlsError::kind`]; show it with `Display`, which names the file (or the
/// in-memory input, or the server name) and the reason in one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TlsErrorKind {
    /// The file does not exist (a dangling symlink included).
    NotFound,
    /// The file exists but cannot be read (permissions, a directory, an I/O error).
    Unreadable,
    /// The input holds no PEM `CERTIFICATE` section.
    NoCertificate,
    /// The input holds no PEM private key section (PKCS#8, PKCS#1 or SEC1).
    NoPrivateKey,
    /// The PEM text is malformed (a section without its end line, bad base64).
    InvalidPem,
    /// A certificate is not a parsable X.509 certificate.
    InvalidCertificate,
    /// The private key is not the one the certificate was issued for.
    KeyMismatch,
    /// The crypto provider cannot use the private key (unsupported algorithm or malformed).
    UnsupportedKey,
    /// The certificate's validity period has ended.
    Expired,
    /// The certificate's validity period has not started yet.
    NotYetValid,
    /// A name given to [`TlsConfig::sni`](crate::TlsConfig::sni) is neither a DNS name nor a
    /// `*.` wildcard of one.
    InvalidServerName,
    /// The same server name was given twice.
    DuplicateServerName,
    /// No crypto provider: neither provider feature is enabled and none was given.
    NoProvider,
    /// Both provider features are enabled and none was given, so the choice is ambiguous.
    AmbiguousProvider,
    /// Any other invalid setting (an empty ALPN protocol, a zero watch interval, a provider
    /// without AEAD cipher suites, ...).
    InvalidConfig,
}

/// An error from loading certificates and keys or from building a [`TlsAcceptor`](crate::TlsAcceptor).
///
/// One line naming what caused it and why, for example
/// `/etc/tls/tls.key: the private key does not match the certificate in /etc/tls/tls.crt`.
#[derive(Debug)]
pub struct TlsError {
    kind: TlsErrorKind,
    path: Option<PathBuf>,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl TlsError {
    pub(crate) fn new(kind: TlsErrorKind, path: Option<&Path>, message: String) -> Self {
        Self {
            kind,
            path: path.map(Path::to_path_buf),
            message,
            source: None,
        }
    }

    pub(crate) fn with_source(
        mut self,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What kind of failure this is.
    #[must_use]
    pub fn kind(&self) -> TlsErrorKind {
        self.kind
    }

    /// The file that caused the error, when it came from a file.
    #[must_use]
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for TlsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

/// Why a handshake failed. [`HandshakeFailure::as_str`] is the value of the `reason` label of
/// [`HANDSHAKE_FAILURES_TOTAL`](crate::metrics::HANDSHAKE_FAILURES_TOTAL).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// The handshake did not finish before the deadline: a silent client, or a ClientHello
    /// that never completes.
    Timeout,
    /// Anything else: malformed messages, an alert from the client (for example, it did not
    /// trust the server's certificate), or a client that closed or reset the connection
    /// before the handshake finished, TCP health checks that connect and close included.
    Protocol,
    /// The client and the server share no protocol version, cipher suite, key exchange group
    /// or signature scheme (an old client, or a scanner probing for weak suites).
    NoSharedCipherOrVersion,
    /// The client asked for a server name that is not configured and unknown names are
    /// refused ([`TlsConfig::refuse_unknown_names`](crate::TlsConfig::refuse_unknown_names)).
    UnknownServerName,
    /// Client authentication is on and the client sent no certificate where one is required,
    /// or one that does not verify against the CA bundle.
    BadClientCertificate,
}

impl HandshakeFailure {
    /// Every value, in the order of [`HANDSHAKE_FAILURE_REASONS`](crate::metrics::HANDSHAKE_FAILURE_REASONS).
    pub const ALL: [HandshakeFailure; 5] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::Protocol,
        HandshakeFailure::NoSharedCipherOrVersion,
        HandshakeFailure::UnknownServerName,
        HandshakeFailure::BadClientCertificate,
    ];

    /// The metric label value: `timeout`, `protocol`, `no_shared_cipher_or_version`,
    /// `unknown_server_name` or `bad_client_certificate`.
    #[must_use]
    pub fn as_str(&self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::NoSharedCipherOrVersion => "no_shared_cipher_or_version",
            HandshakeFailure::UnknownServerName => "unknown_server_name",
            HandshakeFailure::BadClientCertificate => "bad_client_certificate",
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            HandshakeFailure::Timeout => 0,
            HandshakeFailure::Protocol => 1,
            HandshakeFailure::NoSharedCipherOrVersion => 2,
            HandshakeFailure::UnknownServerName => 3,
            HandshakeFailure::BadClientCertificate => 4,
        }
    }

    /// Sorts an error from rustls (wrapped in `io::Error` by tokio-rustls) into a reason.
    pub(crate) fn classify(error: &io::Error) -> Self {
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            // EOF, reset, or another transport error before the handshake finished.
            return HandshakeFailure::Protocol;
        };
        match tls {
            rustls::Error::PeerIncompatible(_) => HandshakeFailure::NoSharedCipherOrVersion,
            rustls::Error::AlertReceived(
                rustls::AlertDescription::ProtocolVersion
                | rustls::AlertDescription::InsufficientSecurity
                | rustls::AlertDescription::HandshakeFailure,
            ) => HandshakeFailure::NoSharedCipherOrVersion,
            // On the server side, certificates are only ever received from the client.
            rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertificate(_)
            | rustls::Error::InvalidCertRevocationList(_) => HandshakeFailure::BadClientCertificate,
            _ => HandshakeFailure::Protocol,
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed TLS handshake, with its [`HandshakeFailure`] reason. Already counted in
/// [`HANDSHAKE_FAILURES_TOTAL`](crate::metrics::HANDSHAKE_FAILURES_TOTAL) when returned by
/// [`TlsAcceptor::accept`](crate::TlsAcceptor::accept); the caller only closes the connection.
#[derive(Debug)]
pub struct HandshakeError {
    reason: HandshakeFailure,
    detail: Detail,
}

#[derive(Debug)]
enum Detail {
    Timeout(Duration),
    Io(io::Error),
}

impl HandshakeError {
    pub(crate) fn timeout(after: Duration) -> Self {
        Self {
            reason: HandshakeFailure::Timeout,
            detail: Detail::Timeout(after),
        }
    }

    pub(crate) fn io(reason: HandshakeFailure, error: io::Error) -> Self {
        Self {
            reason,
            detail: Detail::Io(error),
        }
    }

    /// Why the handshake failed.
    #[must_use]
    pub fn reason(&self) -> HandshakeFailure {
        self.reason
    }

    /// The rustls error behind the failure, if there is one (none for a timeout or a transport
    /// error such as a reset).
    #[must_use]
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        match &self.detail {
            Detail::Io(error) => error
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            Detail::Timeout(_) => None,
        }
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Detail::Timeout(after) => {
                write!(f, "TLS handshake did not finish within {after:?}")
            }
            Detail::Io(error) => write!(f, "TLS handshake failed ({}): {error}", self.reason),
        }
    }
}

impl StdError for HandshakeError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.detail {
            Detail::Io(error) => Some(error),
            Detail::Timeout(_) => None,
        }
    }
}
