//! What a header says ([`ProxyHeader`]) and [`parse`], which tells the two versions apart by
//! their first byte and hands the rest to the `v1` or `v2` parser.

use std::net::SocketAddr;

use super::error::not_proxy;
use super::v1::parse_v1;
use super::v2::parse_v2;
use super::{MAX_HEADER_LEN, ParseError};

/// The version of a PROXY protocol header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// The human-readable v1 format (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary v2 format.
    V2,
}

/// What the sender of a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// The balancer opened the connection on its own behalf, for example as a health check
    /// (v2 `LOCAL`); there is no client, and the connection's own addresses apply.
    Local,
    /// The connection is relayed on behalf of a client (v2 `PROXY`, and every v1 header).
    Proxy,
}

/// A parsed PROXY protocol header.
///
/// `source` and `destination` are `None` when the header carries no usable TCP addresses: a v1
/// `UNKNOWN` line, a v2 `LOCAL` header, and v2 `PROXY` headers for the `UNSPEC` or `UNIX`
/// families or for a datagram (UDP) transport. Per the specification the connection's own
/// addresses then apply, so callers typically use `header.source.unwrap_or(peer)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct ProxyHeader {
    /// The header's format.
    pub version: Version,
    /// `LOCAL` or `PROXY`; always [`Command::Proxy`] for v1.
    pub command: Command,
    /// The original client's address, when the header carries one.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (typically the balancer's listener), when the
    /// header carries one.
    pub destination: Option<SocketAddr>,
}

/// The outcome of [`parse`] on the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// The bytes are a valid prefix of a header: read more and parse again.
    Incomplete,
    /// A complete header occupying the first `len` bytes; what follows belongs to the
    /// application.
    Complete {
        /// The header.
        header: ProxyHeader,
        /// Its length in bytes, at most the length of the input.
        len: usize,
    },
}

/// Parses a PROXY protocol header (v1 or v2) at the start of `buf`.
///
/// Incremental and pure: call it again with more bytes after [`Parsed::Incomplete`]. A result
/// for a prefix is never contradicted by a longer input: once an error is returned, no further
/// bytes can make the header valid (and the error's kind stays the same), and a complete header
/// stays complete with the same length. Errors are reported as early as possible, for
/// example on the first byte that cannot start either signature, on the first invalid
/// character or port of a v1 line, or as soon as a v2 length field exceeds [`MAX_HEADER_LEN`].
///
/// # Errors
///
/// A [`ParseError`] when `buf` does not start with a valid header and no further bytes could
/// make it one.
pub fn parse(buf: &[u8]) -> Result<Parsed, ParseError> {
    parse_limited(buf, MAX_HEADER_LEN).map(|progress| match progress {
        Progress::Incomplete { .. } => Parsed::Incomplete,
        Progress::Complete { header, len } => Parsed::Complete { header, len },
    })
}

/// [`parse`] with a hint for the reader: how many bytes to wait for before parsing again.
pub(super) enum Progress {
    Incomplete { at_least: usize },
    Complete { header: ProxyHeader, len: usize },
}

/// [`parse`] with a cap on the v2 header length; `MAX_HEADER_LEN` for [`parse`] itself.
pub(super) fn parse_limited(buf: &[u8], max_v2_len: usize) -> Result<Progress, ParseError> {
    match buf.first() {
        None => Ok(Progress::Incomplete { at_least: 1 }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf, max_v2_len),
        Some(_) => Err(not_proxy(buf)),
    }
}

/// Compares `buf` with `signature` as far as both go; `Ok(true)` once all of it is there.
pub(super) fn match_signature(buf: &[u8], signature: &[u8]) -> Result<bool, ParseError> {
    let n = buf.len().min(signature.len());
    if buf.get(..n) != signature.get(..n) {
        return Err(not_proxy(buf));
    }
    Ok(n == signature.len())
}
