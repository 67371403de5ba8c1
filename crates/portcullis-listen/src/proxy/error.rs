//! The error types: [`ParseError`] for bytes that are not a header, [`ProxyError`] for
//! [`read_header`](super::ProxyProtocol::read_header), and the helpers that build their
//! messages.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::time::Duration;

/// Longest prefix of offending input quoted in error messages.
const QUOTE_MAX: usize = 16;

/// Why bytes are not a valid PROXY header, as a closed (but extensible) set. See
/// [`ParseError::kind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// The input starts with neither the v1 nor the v2 signature.
    NotProxy,
    /// A malformed v1 line.
    BadV1,
    /// A malformed v2 header.
    BadV2,
    /// A v1 line without CRLF within [`V1_MAX_LEN`](super::V1_MAX_LEN) bytes, or a v2 header
    /// longer than the cap.
    TooLong,
    /// A v2 version, command or family/transport value the specification does not define.
    Unsupported,
}

impl ParseErrorKind {
    /// The metric label value for this kind; one of
    /// [`PROXY_ERROR_REASONS`](crate::metrics::PROXY_ERROR_REASONS).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotProxy => "not_proxy",
            Self::BadV1 => "bad_v1",
            Self::BadV2 => "bad_v2",
            Self::TooLong => "too_long",
            Self::Unsupported => "unsupported",
        }
    }
}

/// Bytes that are not, and cannot become, a valid PROXY header.
///
/// `Display` says what was wrong and quotes at most a few of the offending bytes, escaped, for
/// example `malformed PROXY v1 header: invalid source port "65536"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    kind: ParseErrorKind,
    detail: String,
}

impl ParseError {
    pub(super) fn new(kind: ParseErrorKind, detail: String) -> Self {
        Self { kind, detail }
    }

    /// What kind of error this is.
    #[must_use]
    pub fn kind(&self) -> ParseErrorKind {
        self.kind
    }

    /// The metric label value for this error; one of
    /// [`PROXY_ERROR_REASONS`](crate::metrics::PROXY_ERROR_REASONS).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        self.kind.as_str()
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ParseErrorKind::NotProxy => "not a PROXY protocol header",
            ParseErrorKind::BadV1 => "malformed PROXY v1 header",
            ParseErrorKind::BadV2 => "malformed PROXY v2 header",
            ParseErrorKind::TooLong => "PROXY header too long",
            ParseErrorKind::Unsupported => "unsupported PROXY v2 header",
        };
        write!(f, "{what}: {}", self.detail)
    }
}

impl StdError for ParseError {}

/// Quotes the first few bytes of `bytes`, escaped, for an error message.
pub(super) fn quote(bytes: &[u8]) -> String {
    let shown = bytes.get(..QUOTE_MAX).unwrap_or(bytes);
    let more = if bytes.len() > QUOTE_MAX { "..." } else { "" };
    format!("\"{}\"{more}", shown.escape_ascii())
}

pub(super) fn not_proxy(buf: &[u8]) -> ParseError {
    ParseError::new(
        ParseErrorKind::NotProxy,
        format!(
            "expected \"PROXY \" or the v2 signature, got {}",
            quote(buf)
        ),
    )
}

pub(super) fn bad_v1(detail: String) -> ParseError {
    ParseError::new(ParseErrorKind::BadV1, detail)
}

pub(super) fn bad_v2(detail: String) -> ParseError {
    ParseError::new(ParseErrorKind::BadV2, detail)
}

pub(super) fn unsupported(detail: String) -> ParseError {
    ParseError::new(ParseErrorKind::Unsupported, detail)
}

/// Why [`ProxyProtocol::read_header`](super::ProxyProtocol::read_header) failed.
///
/// `Display` says what happened, for example
/// `no complete PROXY header within 5s (12 bytes received)`. The peer's address is not known
/// here; log it alongside.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// No complete header within [`ProxyProtocol::timeout`](super::ProxyProtocol::timeout).
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
        /// Bytes received before it elapsed.
        received: usize,
    },
    /// Reading from the connection failed.
    Io(io::Error),
    /// The peer closed the connection before sending a complete header.
    Eof {
        /// Bytes received before the end of the stream.
        received: usize,
    },
    /// The bytes are not a valid PROXY header.
    Malformed(ParseError),
}

impl ProxyError {
    /// The metric label value for this error; one of
    /// [`PROXY_ERROR_REASONS`](crate::metrics::PROXY_ERROR_REASONS).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Io(_) => "io",
            Self::Eof { .. } => "eof",
            Self::Malformed(e) => e.reason(),
        }
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { after, received } => write!(
                f,
                "no complete PROXY header within {after:?} ({received} bytes received)"
            ),
            Self::Io(e) => write!(f, "cannot read PROXY header: {e}"),
            Self::Eof { received } => write!(
                f,
                "connection closed after {received} bytes, before a complete PROXY header"
            ),
            Self::Malformed(e) => e.fmt(f),
        }
    }
}

impl StdError for ProxyError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Malformed(e) => Some(e),
            Self::Timeout { .. } | Self::Eof { .. } => None,
        }
    }
}

impl From<ParseError> for ProxyError {
    fn from(e: ParseError) -> Self {
        Self::Malformed(e)
    }
}
