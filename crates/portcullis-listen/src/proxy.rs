//! PROXY protocol v1 and v2: the client address a load balancer forwards in front of the
//! connection's own bytes.
//!
//! # When to use it
//!
//! A TCP load balancer (HAProxy, AWS NLB, GCP and Azure load balancers, Envoy, nginx `stream`)
//! opens its own connection to the server, so the server sees the balancer's address as the
//! peer. With the [PROXY protocol] enabled on the balancer, the first bytes of every
//! connection are a small header naming the original client and destination; the
//! application's own bytes (TLS, HTTP, ...) follow. Use it when such a balancer sits in front of
//! the server and the server needs real client addresses (logs, rate limits, access rules),
//! and the balancer does not terminate HTTP itself (otherwise use `Forwarded` headers).
//!
//! # Only from trusted sources
//!
//! The header is plain data that the connecting peer writes: a client that can reach the server
//! directly could send `PROXY TCP4 <any address> ...` and claim to be anyone, defeating every
//! rule that relies on the client address. A header is therefore only read from peers inside
//! the address ranges given to [`ProxyProtocol::new`] (normally the balancers' subnets).
//! [`ProxyProtocol::is_trusted`] answers that question for an accepted peer; a peer outside
//! the trusted ranges is served as a plain connection, with its own address, and the caller
//! simply does not call [`ProxyProtocol::read_header`] for it. Conversely, a connection from a
//! trusted peer *must* start with a header: [`read_header`](ProxyProtocol::read_header) never
//! falls back to treating the bytes as application data, since a balancer that stopped sending
//! headers is a misconfiguration that would otherwise silently attribute every request to the
//! balancer.
//!
//! # Where to read it
//!
//! Read the header in the connection's own task, never in the accept loop: reading waits on
//! the peer, and one slow or silent peer would otherwise stop the listener from accepting
//! anybody else. The wait is bounded by [`ProxyProtocol::timeout`], 5 seconds by default
//! ([`DEFAULT_TIMEOUT`]): a balancer sends the header at once, usually in the same packet as
//! the connection's first bytes, so 5 seconds leaves room for a few TCP retransmissions
//! (the initial retransmission timeout is 1 second) while a peer that sends nothing releases
//! its connection slot quickly instead of holding it like a slowloris client would.
//!
//! Bytes that arrive in the same read as the end of the header belong to the application; they
//! are handed back inside [`Prefixed`], which yields them before reading on from the socket.
//! Use [`Prefixed::new`] for untrusted peers so both paths produce the same stream type.
//!
//! # Example
//!
//! ```no_run
//! use ipnet::IpNet;
//! use portcullis_listen::proxy::{Prefixed, ProxyProtocol};
//! use tokio::io::AsyncWriteExt;
//! use tokio::net::TcpListener;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     // The load balancers live in 10.0.0.0/8; nobody else may send a header.
//!     let proxy = ProxyProtocol::new(["10.0.0.0/8".parse::<IpNet>()?]);
//!     let listener = TcpListener::bind("0.0.0.0:8080").await?;
//!     loop {
//!         let (stream, peer) = listener.accept().await?;
//!         let proxy = proxy.clone();
//!         // The header is read in the connection task, never in the accept loop.
//!         tokio::spawn(async move {
//!             let (client, mut stream) = if proxy.is_trusted(peer.ip()) {
//!                 match proxy.read_header(stream).await {
//!                     // `None` (LOCAL health checks, UNKNOWN): use the real peer.
//!                     Ok((header, stream)) => (header.source.unwrap_or(peer), stream),
//!                     // Counted in portcullis_listen_proxy_header_errors_total{reason=...}.
//!                     Err(_) => return,
//!                 }
//!             } else {
//!                 (peer, Prefixed::new(stream))
//!             };
//!             let _ = stream.write_all(format!("hello {client}\n").as_bytes()).await;
//!         });
//!     }
//! }
//! ```
//!
//! # What is parsed
//!
//! [`parse`] is a pure, incremental parser of both versions. It tells a valid but incomplete
//! prefix ([`Parsed::Incomplete`]) from an invalid one, and rejects a header as soon as the bytes
//! received so far cannot start a valid one (on the first byte of a plain HTTP request or TLS
//! handshake, for example). v1 lines are limited to [`V1_MAX_LEN`] bytes as the specification
//! requires; v2 headers to [`MAX_HEADER_LEN`] bytes (or less, see
//! [`ProxyProtocol::max_header_len`]). v2 TLVs are checked for consistent lengths and otherwise
//! skipped; their contents (including `PP2_TYPE_CRC32C`) are not interpreted.
//!
//! [PROXY protocol]: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ipnet::{IpNet, Ipv4Net};
use metrics::Unit;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The longest v1 header, CRLF included, in bytes (the specification's own worst case,
/// `PROXY UNKNOWN` followed by two full IPv6 addresses and two 5-digit ports).
pub const V1_MAX_LEN: usize = 107;

/// The longest v2 header accepted, in bytes: the 16-byte fixed part plus the largest length
/// its 16-bit length field can announce (65535).
///
/// This is what the format can express, so by default no well-formed v2 header is refused for
/// its size; [`ProxyProtocol::max_header_len`] lowers the cap for
/// [`read_header`](ProxyProtocol::read_header), and a header announcing more is rejected with
/// reason `too_long` as soon as its length field has arrived, before its body is buffered.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + 65535;

/// How long [`ProxyProtocol::read_header`] waits for a complete header by default: 5 seconds.
///
/// A load balancer writes the header as soon as it connects, so a healthy one needs
/// milliseconds; 5 seconds still covers a few TCP retransmissions of a lost first packet, while
/// a peer that sends nothing gives its connection slot back quickly.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Counter: connections from trusted peers dropped because no valid PROXY header could be
/// read, labelled by [`LABEL_REASON`].
pub const PROXY_HEADER_ERRORS_TOTAL: &str = "portcullis_listen_proxy_header_errors_total";

/// Label on [`PROXY_HEADER_ERRORS_TOTAL`] naming why the header was rejected.
pub const LABEL_REASON: &str = "reason";

/// Every value the [`LABEL_REASON`] label can take, which is also every value of
/// [`ProxyError::reason`] and [`ParseError::reason`].
///
/// | value | meaning |
/// |---|---|
/// | `timeout` | no complete header within [`ProxyProtocol::timeout`] |
/// | `io` | reading from the connection failed |
/// | `eof` | the peer closed the connection before a complete header |
/// | `not_proxy` | the bytes start with neither the v1 nor the v2 signature (for example plain HTTP or TLS) |
/// | `bad_v1` | a malformed v1 line |
/// | `bad_v2` | a malformed v2 header (inconsistent lengths) |
/// | `too_long` | a v1 line without CRLF within [`V1_MAX_LEN`] bytes, or a v2 header longer than the cap |
/// | `unsupported` | a v2 version, command or address family/transport the specification does not define |
pub const PROXY_ERROR_REASONS: &[&str] = &[
    "timeout",
    "io",
    "eof",
    "not_proxy",
    "bad_v1",
    "bad_v2",
    "too_long",
    "unsupported",
];

/// Registers the unit and help text of [`PROXY_HEADER_ERRORS_TOTAL`] with the current
/// recorder.
///
/// Call it once from the executable after installing a recorder; calling it more than once is
/// harmless.
pub fn describe() {
    metrics::describe_counter!(
        PROXY_HEADER_ERRORS_TOTAL,
        Unit::Count,
        "Connections from trusted proxies dropped because their PROXY protocol header was \
         missing, malformed, too slow or cut short, by reason."
    );
}

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
/// Smallest read issued while waiting for a header: enough for any v1 line or a typical v2
/// header in one system call, small enough that the application bytes read along with it are
/// cheap to hold.
const READ_CHUNK: usize = 1024;
/// Longest prefix of offending input quoted in error messages.
const QUOTE_MAX: usize = 16;

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
    /// A v1 line without CRLF within [`V1_MAX_LEN`] bytes, or a v2 header longer than the cap.
    TooLong,
    /// A v2 version, command or family/transport value the specification does not define.
    Unsupported,
}

impl ParseErrorKind {
    /// The metric label value for this kind; one of [`PROXY_ERROR_REASONS`].
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
    fn new(kind: ParseErrorKind, detail: String) -> Self {
        Self { kind, detail }
    }

    /// What kind of error this is.
    pub fn kind(&self) -> ParseErrorKind {
        self.kind
    }

    /// The metric label value for this error; one of [`PROXY_ERROR_REASONS`].
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
fn quote(bytes: &[u8]) -> String {
    let shown = bytes.get(..QUOTE_MAX).unwrap_or(bytes);
    let more = if bytes.len() > QUOTE_MAX { "..." } else { "" };
    format!("\"{}\"{more}", shown.escape_ascii())
}

fn bad_v1(detail: String) -> ParseError {
    ParseError::new(ParseErrorKind::BadV1, detail)
}

fn bad_v2(detail: String) -> ParseError {
    ParseError::new(ParseErrorKind::BadV2, detail)
}

fn unsupported(detail: String) -> ParseError {
    ParseError::new(ParseErrorKind::Unsupported, detail)
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
enum Progress {
    Incomplete { at_least: usize },
    Complete { header: ProxyHeader, len: usize },
}

fn parse_limited(buf: &[u8], max_v2_len: usize) -> Result<Progress, ParseError> {
    match buf.first() {
        None => Ok(Progress::Incomplete { at_least: 1 }),
        Some(b'P') => parse_v1(buf),
        Some(b'\r') => parse_v2(buf, max_v2_len),
        Some(_) => Err(not_proxy(buf)),
    }
}

fn not_proxy(buf: &[u8]) -> ParseError {
    ParseError::new(
        ParseErrorKind::NotProxy,
        format!(
            "expected \"PROXY \" or the v2 signature, got {}",
            quote(buf)
        ),
    )
}

/// Compares `buf` with `signature` as far as both go; `Ok(true)` once all of it is there.
fn match_signature(buf: &[u8], signature: &[u8]) -> Result<bool, ParseError> {
    let n = buf.len().min(signature.len());
    if buf.get(..n) != signature.get(..n) {
        return Err(not_proxy(buf));
    }
    Ok(n == signature.len())
}

// ---------------------------------------------------------------------------------------------
// v1
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum V1Family {
    Tcp4,
    Tcp6,
}

impl V1Family {
    fn name(self) -> &'static str {
        match self {
            Self::Tcp4 => "TCP4",
            Self::Tcp6 => "TCP6",
        }
    }
}

fn parse_v1(buf: &[u8]) -> Result<Progress, ParseError> {
    if !match_signature(buf, V1_PREFIX)? {
        return Ok(Progress::Incomplete {
            at_least: V1_PREFIX.len(),
        });
    }
    // The CR of the final CRLF can be at index V1_MAX_LEN - 2 at the latest; looking no
    // further keeps every check below confined to bytes a valid line may contain.
    let window = buf
        .get(V1_PREFIX.len()..buf.len().min(V1_MAX_LEN - 1))
        .unwrap_or_default();
    let cr = window.iter().position(|&b| b == b'\r');
    let line = match cr {
        Some(i) => window.get(..i).unwrap_or_default(),
        None => window,
    };
    let header = v1_fields(line, cr.is_some())?;
    let Some(cr) = cr.map(|i| V1_PREFIX.len() + i) else {
        if buf.len() >= V1_MAX_LEN - 1 {
            return Err(ParseError::new(
                ParseErrorKind::TooLong,
                format!("no CRLF within the first {V1_MAX_LEN} bytes of a v1 line"),
            ));
        }
        return Ok(Progress::Incomplete {
            at_least: buf.len() + 1,
        });
    };
    match (buf.get(cr + 1), header) {
        (None, _) => Ok(Progress::Incomplete { at_least: cr + 2 }),
        (Some(b'\n'), Some(header)) => Ok(Progress::Complete {
            header,
            len: cr + 2,
        }),
        (Some(b'\n'), None) => Err(bad_v1("line is incomplete".to_owned())),
        (Some(&other), _) => Err(bad_v1(format!(
            "CR not followed by LF but by {}",
            quote(&[other])
        ))),
    }
}

/// Checks the text between `PROXY ` and the CR (or the end of the input, if `terminated` is
/// false) and returns the header once the line is terminated.
fn v1_fields(line: &[u8], terminated: bool) -> Result<Option<ProxyHeader>, ParseError> {
    const PROTOCOLS: [&[u8]; 3] = [b"TCP4", b"TCP6", b"UNKNOWN"];
    let (protocol, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (line.get(..i).unwrap_or_default(), line.get(i + 1..)),
        None => (line, None),
    };
    if rest.is_none() && !terminated {
        // The protocol name is still arriving.
        if PROTOCOLS.iter().any(|p| p.starts_with(protocol)) {
            return Ok(None);
        }
        return Err(bad_v1(format!(
            "expected TCP4, TCP6 or UNKNOWN, got {}",
            quote(protocol)
        )));
    }
    let family = match protocol {
        b"TCP4" => V1Family::Tcp4,
        b"TCP6" => V1Family::Tcp6,
        // "the receiver must ignore anything presented before the CRLF is found"
        b"UNKNOWN" => {
            return Ok(terminated.then_some(ProxyHeader {
                version: Version::V1,
                command: Command::Proxy,
                source: None,
                destination: None,
            }));
        }
        _ => {
            return Err(bad_v1(format!(
                "expected TCP4, TCP6 or UNKNOWN, got {}",
                quote(protocol)
            )));
        }
    };
    let Some(rest) = rest else {
        return Err(bad_v1(format!(
            "{} line ends after the protocol, without addresses and ports",
            family.name()
        )));
    };

    let mut ips = [None; 2];
    let mut ports = [None; 2];
    let mut fields = rest.split(|&b| b == b' ').peekable();
    let mut index = 0;
    while let Some(field) = fields.next() {
        let complete = terminated || fields.peek().is_some();
        match index {
            0 => ips[0] = v1_addr(field, family, "source", complete)?,
            1 => ips[1] = v1_addr(field, family, "destination", complete)?,
            2 => ports[0] = v1_port(field, "source", complete)?,
            3 => ports[1] = v1_port(field, "destination", complete)?,
            _ => {
                return Err(bad_v1(format!(
                    "unexpected {} after the destination port",
                    quote(field)
                )));
            }
        }
        index += 1;
    }
    match (ips, ports) {
        ([Some(src), Some(dst)], [Some(sport), Some(dport)]) if terminated => {
            Ok(Some(ProxyHeader {
                version: Version::V1,
                command: Command::Proxy,
                source: Some(SocketAddr::new(src, sport)),
                destination: Some(SocketAddr::new(dst, dport)),
            }))
        }
        _ if terminated => Err(bad_v1(format!(
            "{} line ends after {index} of its 4 fields (source and destination address and port)",
            family.name()
        ))),
        _ => Ok(None),
    }
}

/// Checks one address field; `Ok(None)` for a valid prefix of a field still arriving.
fn v1_addr(
    field: &[u8],
    family: V1Family,
    which: &str,
    complete: bool,
) -> Result<Option<IpAddr>, ParseError> {
    let name = family.name();
    // "::ffff:255.255.255.255" style addresses are 45 characters long.
    let (max_len, allowed): (usize, fn(&u8) -> bool) = match family {
        V1Family::Tcp4 => (15, |&b| b.is_ascii_digit() || b == b'.'),
        V1Family::Tcp6 => (45, |&b| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
    };
    let parsed = std::str::from_utf8(field)
        .ok()
        .and_then(|text| match family {
            V1Family::Tcp4 => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            V1Family::Tcp6 => text.parse::<Ipv6Addr>().ok().map(IpAddr::V6),
        });
    match parsed {
        Some(ip) if complete => return Ok(Some(ip)),
        None if !complete && field.len() <= max_len && field.iter().all(allowed) => {
            return Ok(None);
        }
        // A prefix that happens to parse already ("1.2.3.4" of "1.2.3.45").
        Some(_) => return Ok(None),
        None => {}
    }
    let other_family = match family {
        V1Family::Tcp4 => field.contains(&b':'),
        V1Family::Tcp6 => {
            complete
                && std::str::from_utf8(field).is_ok_and(|text| text.parse::<Ipv4Addr>().is_ok())
        }
    };
    if other_family {
        let other = match family {
            V1Family::Tcp4 => "IPv6",
            V1Family::Tcp6 => "IPv4",
        };
        return Err(bad_v1(format!(
            "{name} line with an {other} {which} address {}",
            quote(field)
        )));
    }
    Err(bad_v1(format!(
        "invalid {name} {which} address {}",
        quote(field)
    )))
}

/// Checks one port field: decimal, 0 to 65535, no sign and no leading zero. `Ok(None)` for a
/// valid prefix of a field still arriving.
fn v1_port(field: &[u8], which: &str, complete: bool) -> Result<Option<u16>, ParseError> {
    let invalid = || bad_v1(format!("invalid {which} port {}", quote(field)));
    if field.len() > 5
        || !field.iter().all(u8::is_ascii_digit)
        || (field.len() > 1 && field.first() == Some(&b'0'))
    {
        return Err(invalid());
    }
    let value = field
        .iter()
        .fold(0u32, |acc, &d| acc * 10 + u32::from(d - b'0'));
    let port = u16::try_from(value).map_err(|_| invalid())?;
    match (complete, field.is_empty()) {
        (false, _) => Ok(None),
        (true, true) => Err(invalid()),
        (true, false) => Ok(Some(port)),
    }
}

// ---------------------------------------------------------------------------------------------
// v2
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum V2Family {
    Unspec,
    Inet,
    Inet6,
    Unix,
}

impl V2Family {
    /// Size of the address block this family starts the variable part with.
    fn block_len(self) -> usize {
        match self {
            Self::Unspec => 0,
            Self::Inet => 12,
            Self::Inet6 => 36,
            Self::Unix => 216,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Unspec => "UNSPEC",
            Self::Inet => "INET",
            Self::Inet6 => "INET6",
            Self::Unix => "UNIX",
        }
    }
}

/// The family and whether the transport is STREAM, for the values the specification defines
/// for byte 13 ("other values ... must be rejected as invalid by receivers").
fn v2_family(byte: u8) -> Option<(V2Family, bool)> {
    Some(match byte {
        0x00 => (V2Family::Unspec, false),
        0x11 => (V2Family::Inet, true),
        0x12 => (V2Family::Inet, false),
        0x21 => (V2Family::Inet6, true),
        0x22 => (V2Family::Inet6, false),
        0x31 => (V2Family::Unix, true),
        0x32 => (V2Family::Unix, false),
        _ => return None,
    })
}

fn parse_v2(buf: &[u8], max_len: usize) -> Result<Progress, ParseError> {
    let need_fixed = Ok(Progress::Incomplete {
        at_least: V2_FIXED_LEN,
    });
    if !match_signature(buf, V2_SIGNATURE)? {
        return need_fixed;
    }
    let Some(&ver_cmd) = buf.get(12) else {
        return need_fixed;
    };
    let version = ver_cmd >> 4;
    if version != 2 {
        return Err(unsupported(format!(
            "version {version} in byte 12 ({ver_cmd:#04x}); only version 2 is defined"
        )));
    }
    let command = match ver_cmd & 0x0f {
        0 => Command::Local,
        1 => Command::Proxy,
        other => {
            return Err(unsupported(format!(
                "command {other} in byte 12 ({ver_cmd:#04x}); only LOCAL (0) and PROXY (1) are \
                 defined"
            )));
        }
    };
    let Some(&family_byte) = buf.get(13) else {
        return need_fixed;
    };
    // For LOCAL the receiver "must discard the protocol block including the family".
    let family = match command {
        Command::Local => None,
        Command::Proxy => Some(v2_family(family_byte).ok_or_else(|| {
            unsupported(format!(
                "address family and transport byte {family_byte:#04x} is not defined"
            ))
        })?),
    };
    let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) else {
        return need_fixed;
    };
    let body_len = usize::from(u16::from_be_bytes([hi, lo]));
    let total = V2_FIXED_LEN + body_len;
    if total > max_len {
        return Err(ParseError::new(
            ParseErrorKind::TooLong,
            format!("v2 header of {total} bytes exceeds the limit of {max_len}"),
        ));
    }
    let body = buf
        .get(V2_FIXED_LEN..buf.len().min(total))
        .unwrap_or_default();
    let mut addresses = None;
    if let Some((family, stream)) = family
        && family != V2Family::Unspec
    {
        let block_len = family.block_len();
        if body_len < block_len {
            return Err(bad_v2(format!(
                "length {body_len} is shorter than the {block_len}-byte {} address block",
                family.name()
            )));
        }
        // TLVs follow the address block; UNSPEC and LOCAL blocks are skipped whole.
        check_tlvs(
            body.get(block_len..).unwrap_or_default(),
            body_len - block_len,
            V2_FIXED_LEN + block_len,
        )?;
        if stream {
            addresses = Some(family);
        }
    }
    if buf.len() < total {
        return Ok(Progress::Incomplete { at_least: total });
    }
    let (source, destination) = match addresses {
        Some(V2Family::Inet) => v2_addrs::<4>(body),
        Some(V2Family::Inet6) => v2_addrs::<16>(body),
        // UNIX and datagram addresses do not describe a TCP peer: keep the connection's own.
        _ => Some((None, None)),
    }
    .ok_or_else(|| bad_v2("address block cut short".to_owned()))?;
    Ok(Progress::Complete {
        header: ProxyHeader {
            version: Version::V2,
            command,
            source,
            destination,
        },
        len: total,
    })
}

/// Decodes source address, destination address, source port, destination port.
fn v2_addrs<const N: usize>(block: &[u8]) -> Option<(Option<SocketAddr>, Option<SocketAddr>)>
where
    IpAddr: From<[u8; N]>,
{
    let array = |at: usize| -> Option<[u8; N]> { block.get(at..at + N)?.try_into().ok() };
    let port = |at: usize| -> Option<u16> {
        Some(u16::from_be_bytes(block.get(at..at + 2)?.try_into().ok()?))
    };
    let source = SocketAddr::new(IpAddr::from(array(0)?), port(2 * N)?);
    let destination = SocketAddr::new(IpAddr::from(array(N)?), port(2 * N + 2)?);
    Some((Some(source), Some(destination)))
}

/// Checks that the TLVs received so far (`available`) fit the `declared` TLV area exactly.
/// `offset` is where the area starts in the header, for messages.
fn check_tlvs(available: &[u8], declared: usize, offset: usize) -> Result<(), ParseError> {
    let mut at = 0;
    while let Some(&[kind, hi, lo]) = available.get(at..at + 3) {
        let value_len = usize::from(u16::from_be_bytes([hi, lo]));
        let end = at + 3 + value_len;
        if end > declared {
            return Err(bad_v2(format!(
                "TLV of type {kind:#04x} at byte {} announces {value_len} value bytes but only {} \
                 remain in the header",
                offset + at,
                declared.saturating_sub(at + 3)
            )));
        }
        at = end;
    }
    // Whether or not its bytes have arrived, the next TLV starts at `at`; 1 or 2 bytes
    // cannot hold its 3-byte type and length.
    let left = declared.saturating_sub(at);
    if (1..3).contains(&left) {
        return Err(bad_v2(format!(
            "{left} bytes at byte {} are too short for a TLV",
            offset + at
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading from a connection
// ---------------------------------------------------------------------------------------------

/// Listener-side PROXY protocol settings: which peers may send a header, and how long to
/// wait for it.
///
/// Cheap to clone (the trusted ranges are shared), so each connection task can take its own
/// copy. See the [module docs](self) for where and when to use it.
#[derive(Clone, Debug)]
pub struct ProxyProtocol {
    trusted: Arc<[IpNet]>,
    timeout: Duration,
    max_header_len: usize,
}

impl ProxyProtocol {
    /// Settings that accept headers from peers in the `trusted` ranges (normally the load
    /// balancers' subnets), with the default [`DEFAULT_TIMEOUT`] and [`MAX_HEADER_LEN`].
    ///
    /// An empty list trusts nobody. Host bits are ignored (`10.1.2.3/8` means `10.0.0.0/8`),
    /// and IPv4-mapped IPv6 ranges (`::ffff:10.0.0.0/104`) are treated as the IPv4 ranges they
    /// map.
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: trusted.into_iter().map(canonical_net).collect(),
            timeout: DEFAULT_TIMEOUT,
            max_header_len: MAX_HEADER_LEN,
        }
    }

    /// How long [`read_header`](Self::read_header) waits for the complete header, counted from
    /// the call. Default: [`DEFAULT_TIMEOUT`] (5 seconds), which covers a balancer on a lossy
    /// network while releasing a silent peer's connection slot quickly.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest v2 header [`read_header`](Self::read_header) accepts, in bytes, fixed part
    /// and TLVs included; longer headers are rejected (`too_long`) as soon as their length
    /// field arrives. Default and upper bound: [`MAX_HEADER_LEN`].
    ///
    /// Lower it to bound the memory a trusted peer can make a connection hold; keep room for
    /// the TLVs your balancer sends (a v2 header with an IPv6 address and no TLVs is 52 bytes;
    /// AWS and GCP add a few dozen bytes of TLVs, HAProxy with TLS details a few hundred).
    /// v1 lines are always limited to [`V1_MAX_LEN`] bytes.
    pub fn max_header_len(mut self, max: usize) -> Self {
        self.max_header_len = max.min(MAX_HEADER_LEN);
        self
    }

    /// The trusted ranges, normalized as described at [`new`](Self::new).
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Whether a peer at `ip` may send a PROXY header. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`, as accepted by a dual-stack socket) are treated as the IPv4
    /// address they map.
    ///
    /// Peers of Unix socket listeners have no IP address; whether to read a header from them
    /// is the caller's decision.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Reads the PROXY header at the start of `stream`, which must come from a
    /// [trusted](Self::is_trusted) peer, and returns it with the stream positioned after it.
    ///
    /// Reads in chunks (never a byte per system call) until [`parse`] completes, all within
    /// [`timeout`](Self::timeout). Application bytes received in the same read as the end of
    /// the header are yielded first by the returned [`Prefixed`]; nothing beyond one read past
    /// the header is buffered. Every failure increments [`PROXY_HEADER_ERRORS_TOTAL`] with its
    /// [`reason`](ProxyError::reason) and is logged at `DEBUG`; the caller should then close
    /// the connection (dropping it does).
    ///
    /// # Errors
    ///
    /// [`ProxyError::Timeout`] when the header is not complete within the timeout,
    /// [`ProxyError::Eof`] when the peer closes the connection first, [`ProxyError::Io`] when
    /// reading fails and [`ProxyError::Malformed`] when the bytes are not a valid header.
    ///
    /// # Cancellation safety
    ///
    /// Not cancellation safe: bytes read before the future is dropped are lost, and the
    /// connection should be closed.
    pub async fn read_header<S>(
        &self,
        mut stream: S,
    ) -> Result<(ProxyHeader, Prefixed<S>), ProxyError>
    where
        S: AsyncRead + Unpin,
    {
        let mut buf = BytesMut::new();
        let read = read_until_header(&mut stream, &mut buf, self.max_header_len);
        let outcome = match tokio::time::timeout(self.timeout, read).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(ProxyError::Timeout {
                after: self.timeout,
                received: buf.len(),
            }),
        };
        match outcome {
            Ok((header, len)) => {
                // Copy the (small) leftover so the header's bytes are freed now.
                let prefix = Bytes::copy_from_slice(buf.get(len..).unwrap_or_default());
                Ok((
                    header,
                    Prefixed {
                        prefix,
                        inner: stream,
                    },
                ))
            }
            Err(error) => {
                let reason = error.reason();
                metrics::counter!(PROXY_HEADER_ERRORS_TOTAL, LABEL_REASON => reason).increment(1);
                tracing::debug!(reason, %error, "dropping connection without a valid PROXY header");
                Err(error)
            }
        }
    }
}

fn canonical_net(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4);
    }
    net
}

/// Reads into `buf` until it holds a complete header; returns the header and its length.
async fn read_until_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<(ProxyHeader, usize), ProxyError> {
    loop {
        let at_least = match parse_limited(buf, max_len).map_err(ProxyError::Malformed)? {
            Progress::Complete { header, len } => return Ok((header, len)),
            Progress::Incomplete { at_least } => at_least,
        };
        // Only parse again once the parser can make progress: a long v2 header arriving in
        // many small reads is not re-scanned each time.
        while buf.len() < at_least {
            let want = (at_least - buf.len()).max(READ_CHUNK);
            buf.reserve(want);
            let n = stream
                .read_buf(&mut (&mut *buf).limit(want))
                .await
                .map_err(ProxyError::Io)?;
            if n == 0 {
                return Err(ProxyError::Eof {
                    received: buf.len(),
                });
            }
        }
    }
}

/// Why [`ProxyProtocol::read_header`] failed.
///
/// `Display` says what happened, for example
/// `no complete PROXY header within 5s (12 bytes received)`. The peer's address is not known
/// here; log it alongside.
#[derive(Debug)]
#[non_exhaustive]
pub enum ProxyError {
    /// No complete header within [`ProxyProtocol::timeout`].
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
    /// The metric label value for this error; one of [`PROXY_ERROR_REASONS`].
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

/// A stream with bytes already read from it put back in front: reads yield those bytes first,
/// then continue from the inner stream. Writes, flushes and shutdowns go straight to the inner
/// stream.
///
/// [`ProxyProtocol::read_header`] returns one holding the application bytes that arrived with
/// the header; [`Prefixed::new`] wraps a stream with nothing in front, so connections with and
/// without a header can share one type.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Wraps `inner` with nothing in front.
    pub fn new(inner: S) -> Self {
        Self {
            prefix: Bytes::new(),
            inner,
        }
    }

    /// The bytes still to be yielded before reading from the inner stream.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner stream. Reading from it directly skips the [`prefix`](Self::prefix).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The unread prefix and the inner stream.
    pub fn into_parts(self) -> (Bytes, S) {
        (self.prefix, self.inner)
    }

    /// The inner stream, discarding any unread [`prefix`](Self::prefix); use
    /// [`into_parts`](Self::into_parts) to keep it.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Prefixed<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The prefix is application data: show its size, not its content.
        f.debug_struct("Prefixed")
            .field("prefix_len", &self.prefix.len())
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.prefix.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(this.prefix.get(..n).unwrap_or_default());
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // Release the buffer.
            this.prefix = Bytes::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::HashMap;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    // -----------------------------------------------------------------------------------------
    // Helpers
    // -----------------------------------------------------------------------------------------

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    fn header(
        version: Version,
        command: Command,
        source: Option<&str>,
        destination: Option<&str>,
    ) -> ProxyHeader {
        ProxyHeader {
            version,
            command,
            source: source.map(addr),
            destination: destination.map(addr),
        }
    }

    #[track_caller]
    fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
        match parse(buf) {
            Ok(Parsed::Complete { header, len }) => (header, len),
            other => panic!(
                "expected a complete header in {}, got {other:?}",
                quote(buf)
            ),
        }
    }

    #[track_caller]
    fn error(buf: &[u8]) -> ParseError {
        match parse(buf) {
            Err(e) => e,
            other => panic!("expected an error for {}, got {other:?}", quote(buf)),
        }
    }

    /// A v2 header with the given version/command byte, family/transport byte and body.
    fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let len = u16::try_from(body.len()).expect("test body fits the length field");
        let mut out = V2_SIGNATURE.to_vec();
        out.extend_from_slice(&[ver_cmd, family]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
        let len = u16::try_from(value.len()).expect("test TLV fits");
        let mut out = vec![kind];
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(value);
        out
    }

    // -----------------------------------------------------------------------------------------
    // v1, fixed cases
    // -----------------------------------------------------------------------------------------

    #[test]
    fn v1_tcp4_spec_example() {
        let line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
        let mut buf = line.to_vec();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(
            complete(&buf),
            (
                header(
                    Version::V1,
                    Command::Proxy,
                    Some("192.168.0.1:56324"),
                    Some("192.168.0.11:443")
                ),
                line.len()
            )
        );
    }

    #[test]
    fn v1_tcp6() {
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 443\r\n";
        assert_eq!(
            complete(line),
            (
                header(
                    Version::V1,
                    Command::Proxy,
                    Some("[2001:db8::1]:56324"),
                    Some("[2001:db8::2]:443")
                ),
                line.len()
            )
        );
        let widest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                       ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        let (h, len) = complete(widest);
        assert_eq!(len, 104);
        assert_eq!(
            h.source,
            Some(addr("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
        );
        // An IPv4-mapped address is a valid IPv6 address and is kept as such.
        let (h, _) = complete(b"PROXY TCP6 ::ffff:10.1.2.3 ::1 1 0\r\n");
        assert_eq!(h.source, Some(addr("[::ffff:10.1.2.3]:1")));
        assert_eq!(h.destination, Some(addr("[::1]:0")));
    }

    #[test]
    fn v1_unknown() {
        let none = header(Version::V1, Command::Proxy, None, None);
        assert_eq!(complete(b"PROXY UNKNOWN\r\nGET"), (none, 15));
        // The specification's worst case, exactly the 107-byte limit; what follows UNKNOWN is
        // ignored.
        let worst = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                      ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(worst.len(), V1_MAX_LEN);
        assert_eq!(complete(worst), (none, V1_MAX_LEN));
        assert_eq!(complete(b"PROXY UNKNOWN garbage\xff\n!\r\n"), (none, 26));
    }

    #[test]
    fn v1_longer_than_107_bytes_is_too_long() {
        let long = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
                     ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 655350\r\n";
        assert_eq!(long.len(), V1_MAX_LEN + 1);
        assert_eq!(error(long).kind(), ParseErrorKind::TooLong);
        // Rejected as soon as the CRLF can no longer fit, without waiting for more.
        assert_eq!(error(&long[..V1_MAX_LEN - 1]).reason(), "too_long");
        assert_eq!(parse(&long[..V1_MAX_LEN - 2]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn v1_malformed() {
        let cases: &[(&[u8], ParseErrorKind, &str)] = &[
            (b"PROXZ TCP4", ParseErrorKind::NotProxy, "\"PROXZ TCP4\""),
            (b"proxy TCP4", ParseErrorKind::NotProxy, "\"proxy TCP4\""),
            (b"PROXY tcp4 ", ParseErrorKind::BadV1, "\"tcp4\""),
            (b"PROXY TCP5 ", ParseErrorKind::BadV1, "\"TCP5\""),
            (b"PROXY UNKNOWNX\r\n", ParseErrorKind::BadV1, "\"UNKNOWNX\""),
            (b"PROXY \r\n", ParseErrorKind::BadV1, "got \"\""),
            (b"PROXY  TCP4", ParseErrorKind::BadV1, "got \"\""),
            (
                b"PROXY TCP4\r\n",
                ParseErrorKind::BadV1,
                "without addresses",
            ),
            // Missing CRLF: LF alone, CR followed by something else.
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\n",
                ParseErrorKind::BadV1,
                "destination port \"443\\n\"",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\rX",
                ParseErrorKind::BadV1,
                "CR not followed by LF but by \"X\"",
            ),
            (
                b"PROXY UNKNOWN\r\r\n",
                ParseErrorKind::BadV1,
                "CR not followed by LF but by \"\\r\"",
            ),
            // Ports.
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 443\r\n",
                ParseErrorKind::BadV1,
                "source port \"65536\"",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 080\r\n",
                ParseErrorKind::BadV1,
                "destination port \"080\"",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 443\r\n",
                ParseErrorKind::BadV1,
                "source port \"+80\"",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 443\r\n",
                ParseErrorKind::BadV1,
                "source port \"-1\"",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8  443\r\n",
                ParseErrorKind::BadV1,
                "source port \"\"",
            ),
            // Addresses of the wrong family or invalid.
            (
                b"PROXY TCP4 ::1 ::1 80 443\r\n",
                ParseErrorKind::BadV1,
                "TCP4 line with an IPv6 source address",
            ),
            (
                b"PROXY TCP6 1.2.3.4 ::1 80 443\r\n",
                ParseErrorKind::BadV1,
                "TCP6 line with an IPv4 source address \"1.2.3.4\"",
            ),
            (
                b"PROXY TCP4 1.2.3.4 256.1.1.1 80 443\r\n",
                ParseErrorKind::BadV1,
                "invalid TCP4 destination address \"256.1.1.1\"",
            ),
            (
                b"PROXY TCP4 01.2.3.4 5.6.7.8 80 443\r\n",
                ParseErrorKind::BadV1,
                "\"01.2.3.4\"",
            ),
            (
                b"PROXY TCP6 fe80::1%eth0 ::1 80 443\r\n",
                ParseErrorKind::BadV1,
                "invalid TCP6 source address",
            ),
            // Field count.
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
                ParseErrorKind::BadV1,
                "after 3 of its 4 fields",
            ),
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 x\r\n",
                ParseErrorKind::BadV1,
                "unexpected \"x\"",
            ),
        ];
        for &(input, kind, needle) in cases {
            let e = error(input);
            assert_eq!(e.kind(), kind, "{e} for {}", quote(input));
            assert_eq!(e.reason(), kind.as_str());
            let shown = e.to_string();
            assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
        }
    }

    #[test]
    fn errors_are_reported_before_the_line_ends() {
        // Each input is a prefix that no further byte can turn into a valid header.
        let cases: &[(&[u8], &str)] = &[
            (b"G", "not_proxy"),
            (b"\x16\x03\x01", "not_proxy"),
            (b"PROXY X", "bad_v1"),
            (b"PROXY TCP4 1.2.3.4:", "bad_v1"),
            (b"PROXY TCP4 :", "bad_v1"),
            (b"PROXY TCP6 1.2.3.4 g", "bad_v1"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999", "bad_v1"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 01", "bad_v1"),
            (b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443 ", "bad_v1"),
            (b"PROXY TCP4 1234567890123456", "bad_v1"),
        ];
        for &(input, reason) in cases {
            assert_eq!(error(input).reason(), reason, "{}", quote(input));
        }
        // While these are still valid prefixes.
        for input in [
            &b""[..],
            b"P",
            b"PROXY",
            b"PROXY UNK",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 0",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r",
            b"\r\n\r\n\0",
        ] {
            assert_eq!(parse(input), Ok(Parsed::Incomplete), "{}", quote(input));
        }
    }

    #[test]
    fn display_quotes_few_bytes_escaped() {
        let e = error(b"\xff\x00GET /a-long-path-that-goes-on-and-on HTTP/1.1\r\n");
        assert_eq!(
            e.to_string(),
            "not a PROXY protocol header: expected \"PROXY \" or the v2 signature, got \
             \"\\xff\\x00GET /a-long-pa\"..."
        );
    }

    // -----------------------------------------------------------------------------------------
    // v2, fixed cases
    // -----------------------------------------------------------------------------------------

    #[test]
    fn v2_inet_byte_by_byte() {
        let bytes = [
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54,
            0x0a, // signature
            0x21, // version 2, PROXY
            0x11, // INET, STREAM
            0x00, 0x0c, // 12 bytes follow
            192, 168, 0, 1, // source address
            192, 168, 0, 11, // destination address
            0xdc, 0x04, // source port 56324
            0x01, 0xbb, // destination port 443
            b'G', b'E', b'T', // application data
        ];
        assert_eq!(
            complete(&bytes),
            (
                header(
                    Version::V2,
                    Command::Proxy,
                    Some("192.168.0.1:56324"),
                    Some("192.168.0.11:443")
                ),
                28
            )
        );
    }

    #[test]
    fn v2_inet6_byte_by_byte() {
        let mut bytes = vec![
            0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21,
            0x21, // INET6, STREAM
            0x00, 0x24, // 36 bytes
        ];
        bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        bytes.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        bytes.extend_from_slice(&[0x04, 0xd2, 0x01, 0xbb]); // 1234, 443
        assert_eq!(
            complete(&bytes),
            (
                header(
                    Version::V2,
                    Command::Proxy,
                    Some("[2001:db8::1]:1234"),
                    Some("[2001:db8::2]:443")
                ),
                52
            )
        );
    }

    #[test]
    fn v2_local_ignores_family_and_block() {
        let local = header(Version::V2, Command::Local, None, None);
        assert_eq!(complete(&v2(0x20, 0x00, &[])), (local, 16));
        // "the receiver must ... discard the protocol block including the family"
        assert_eq!(complete(&v2(0x20, 0xff, &[1, 2, 3])), (local, 19));
        assert_eq!(complete(&v2(0x20, 0x11, &[9; 12])), (local, 28));
    }

    #[test]
    fn v2_unix_unspec_and_datagram_carry_no_tcp_addresses() {
        let none = header(Version::V2, Command::Proxy, None, None);
        let mut unix = [0u8; 216];
        unix[..17].copy_from_slice(b"/var/run/src.sock");
        unix[108..125].copy_from_slice(b"/var/run/dst.sock");
        assert_eq!(complete(&v2(0x21, 0x31, &unix)), (none, 16 + 216));
        assert_eq!(complete(&v2(0x21, 0x32, &unix)), (none, 16 + 216));
        assert_eq!(complete(&v2(0x21, 0x00, &[])), (none, 16));
        assert_eq!(complete(&v2(0x21, 0x00, &[7; 5])), (none, 21));
        assert_eq!(complete(&v2(0x21, 0x12, &[1; 12])), (none, 28));
        assert_eq!(complete(&v2(0x21, 0x22, &[1; 36])), (none, 52));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut body = vec![10, 0, 0, 1, 10, 0, 0, 2, 0x30, 0x39, 0x00, 0x50];
        body.extend(tlv(0x01, b"h2")); // ALPN
        body.extend(tlv(0x02, b"example.com")); // AUTHORITY
        body.extend(tlv(0x04, b"")); // NOOP
        body.extend(tlv(0x20, &[0x01, 0, 0, 0, 0])); // SSL, with an empty sub-TLV area
        let mut buf = v2(0x21, 0x11, &body);
        let len = buf.len();
        buf.extend_from_slice(b"\x16\x03\x01");
        assert_eq!(
            complete(&buf),
            (
                header(
                    Version::V2,
                    Command::Proxy,
                    Some("10.0.0.1:12345"),
                    Some("10.0.0.2:80")
                ),
                len
            )
        );
        // The same with a UNIX block.
        let mut body = vec![0; 216];
        body.extend(tlv(0x05, b"unique-id"));
        let buf = v2(0x21, 0x31, &body);
        assert_eq!(complete(&buf).1, buf.len());
    }

    #[test]
    fn v2_malformed() {
        let inet = [1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 1, 187];
        let mut bad_signature = v2(0x21, 0x11, &inet);
        bad_signature[6] = 0x0b;
        let mut overrun = inet.to_vec();
        overrun.extend_from_slice(&[0x01, 0x00, 0x05, b'h', b'2']);
        let mut short_tail = inet.to_vec();
        short_tail.extend(tlv(0x04, b""));
        short_tail.extend_from_slice(&[0x01, 0x00]);
        let cases: &[(Vec<u8>, ParseErrorKind, &str)] = &[
            (
                bad_signature,
                ParseErrorKind::NotProxy,
                "\"\\r\\n\\r\\n\\x00\\r\\x0b",
            ),
            (
                v2(0x31, 0x11, &inet),
                ParseErrorKind::Unsupported,
                "version 3",
            ),
            (
                v2(0x11, 0x11, &inet),
                ParseErrorKind::Unsupported,
                "version 1",
            ),
            (
                v2(0x22, 0x11, &inet),
                ParseErrorKind::Unsupported,
                "command 2",
            ),
            (
                v2(0x21, 0x41, &inet),
                ParseErrorKind::Unsupported,
                "byte 0x41",
            ),
            (
                v2(0x21, 0x13, &inet),
                ParseErrorKind::Unsupported,
                "byte 0x13",
            ),
            (
                v2(0x21, 0x10, &inet),
                ParseErrorKind::Unsupported,
                "byte 0x10",
            ),
            (
                v2(0x21, 0x01, &inet),
                ParseErrorKind::Unsupported,
                "byte 0x01",
            ),
            (
                v2(0x21, 0x11, &inet[..8]),
                ParseErrorKind::BadV2,
                "length 8 is shorter than the 12-byte INET address block",
            ),
            (
                v2(0x21, 0x21, &[0; 12]),
                ParseErrorKind::BadV2,
                "36-byte INET6 address block",
            ),
            (
                v2(0x21, 0x31, &[0; 108]),
                ParseErrorKind::BadV2,
                "216-byte UNIX address block",
            ),
            (
                v2(0x21, 0x11, &overrun),
                ParseErrorKind::BadV2,
                "TLV of type 0x01 at byte 28 announces 5 value bytes but only 2 remain",
            ),
            (
                v2(0x21, 0x11, &short_tail),
                ParseErrorKind::BadV2,
                "2 bytes at byte 31 are too short for a TLV",
            ),
        ];
        for (input, kind, needle) in cases {
            let e = error(input);
            assert_eq!(e.kind(), *kind, "{e}");
            let shown = e.to_string();
            assert!(shown.contains(needle), "{shown:?} lacks {needle:?}");
        }
    }

    #[test]
    fn v2_errors_are_reported_at_the_offending_byte() {
        let sig = V2_SIGNATURE;
        // A wrong signature byte, a version, a command, a family, then lengths.
        assert_eq!(error(&[0x0d, 0x0a, 0x0d, 0x0b]).reason(), "not_proxy");
        assert_eq!(error(&[sig, &[0x31]].concat()).reason(), "unsupported");
        assert_eq!(error(&[sig, &[0x2f]].concat()).reason(), "unsupported");
        assert_eq!(
            error(&[sig, &[0x21, 0x44]].concat()).reason(),
            "unsupported"
        );
        assert_eq!(
            parse(&[sig, &[0x21, 0x11, 0x00]].concat()),
            Ok(Parsed::Incomplete)
        );
        assert_eq!(
            error(&[sig, &[0x21, 0x11, 0x00, 0x08]].concat()).reason(),
            "bad_v2"
        );
        // TLV lengths are checked as soon as a TLV's own length field arrives.
        let mut partial = v2(0x21, 0x11, &[0; 40]);
        partial.truncate(16 + 12);
        assert_eq!(parse(&partial), Ok(Parsed::Incomplete));
        partial.extend_from_slice(&[0x01, 0x00, 0xff]);
        assert_eq!(error(&partial).reason(), "bad_v2");
    }

    #[test]
    fn v2_length_cap() {
        let body = vec![0; 200];
        let buf = v2(0x21, 0x00, &body);
        assert!(matches!(
            parse_limited(&buf, 216),
            Ok(Progress::Complete { len: 216, .. })
        ));
        // Rejected as soon as the length field has arrived.
        let e = parse_limited(&buf[..16], 215)
            .err()
            .expect("a header over the cap is rejected");
        assert_eq!(e.kind(), ParseErrorKind::TooLong);
        assert_eq!(
            e.to_string(),
            "PROXY header too long: v2 header of 216 bytes exceeds the limit of 215"
        );
        // The largest header the format can express fits the default cap.
        let largest = v2(0x21, 0x00, &vec![0; 65535]);
        assert_eq!(complete(&largest).1, MAX_HEADER_LEN);
    }

    // -----------------------------------------------------------------------------------------
    // Property tests
    // -----------------------------------------------------------------------------------------

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
        let v1_tcp6 =
            (ipv6(), ipv6(), any::<u16>(), any::<u16>()).prop_map(move |(s, d, sp, dp)| {
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
        let v2_local = (any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)).prop_map(
            move |(family, body)| {
                (
                    v2(0x20, family, &body),
                    no_addresses(Version::V2, Command::Local),
                )
            },
        );
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

    // -----------------------------------------------------------------------------------------
    // ProxyProtocol
    // -----------------------------------------------------------------------------------------

    #[test]
    fn trust_ranges() {
        let proxy = ProxyProtocol::new([net("10.1.2.3/8"), net("2001:db8::/32")]);
        assert_eq!(proxy.trusted(), [net("10.0.0.0/8"), net("2001:db8::/32")]);
        assert!(proxy.is_trusted("10.200.0.1".parse().expect("ip")));
        assert!(!proxy.is_trusted("11.0.0.1".parse().expect("ip")));
        assert!(proxy.is_trusted("2001:db8::7".parse().expect("ip")));
        assert!(!proxy.is_trusted("2001:db9::7".parse().expect("ip")));
        // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
        assert!(proxy.is_trusted("::ffff:10.0.0.1".parse().expect("ip")));
        assert!(!proxy.is_trusted("::ffff:11.0.0.1".parse().expect("ip")));
        // Mapped ranges are treated as the IPv4 ranges they map.
        let mapped = ProxyProtocol::new([net("::ffff:192.168.0.0/112")]);
        assert_eq!(mapped.trusted(), [net("192.168.0.0/16")]);
        assert!(mapped.is_trusted("192.168.4.4".parse().expect("ip")));
        assert!(mapped.is_trusted("::ffff:192.168.4.4".parse().expect("ip")));
        // Nobody is trusted by default.
        assert!(!ProxyProtocol::new([]).is_trusted("127.0.0.1".parse().expect("ip")));
    }

    /// A reader that returns `data` in reads of the scripted sizes (cycling), then EOF, and
    /// records the capacity each read was offered.
    #[derive(Debug)]
    struct Scripted {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        offered: Vec<usize>,
    }

    impl Scripted {
        fn new(data: Vec<u8>, sizes: Vec<usize>) -> Self {
            Self {
                data,
                pos: 0,
                sizes,
                offered: Vec::new(),
            }
        }
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let size = this.sizes[this.offered.len() % this.sizes.len()];
            this.offered.push(buf.remaining());
            let end = this.data.len().min(this.pos + size.min(buf.remaining()));
            buf.put_slice(&this.data[this.pos..end]);
            this.pos = end;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn reads_in_chunks_and_never_past_what_is_needed() {
        let proxy = ProxyProtocol::new([]);
        // Everything available at once: one read for a v1 header and the request after it.
        let data = b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r\nGET / HTTP/1.1\r\n\r\n".to_vec();
        let (_, stream) = proxy
            .read_header(Scripted::new(data.clone(), vec![usize::MAX]))
            .await
            .expect("header");
        assert_eq!(stream.get_ref().offered, [READ_CHUNK]);
        assert_eq!(stream.prefix(), b"GET / HTTP/1.1\r\n\r\n");

        // A 5000-byte v2 header: the second read asks for exactly the rest of it, so the
        // application bytes after it stay in the socket.
        let mut body = vec![0; 12];
        body.extend(tlv(0xe0, &vec![7; 5000 - 16 - 12 - 3]));
        let mut data = v2(0x21, 0x11, &body);
        assert_eq!(data.len(), 5000);
        data.extend_from_slice(&[1; 3000]);
        let (_, stream) = proxy
            .read_header(Scripted::new(data, vec![usize::MAX]))
            .await
            .expect("header");
        assert_eq!(stream.get_ref().offered, [READ_CHUNK, 5000 - READ_CHUNK]);
        assert_eq!(stream.get_ref().pos, 5000);
        assert!(stream.prefix().is_empty());
    }

    #[tokio::test]
    async fn header_over_the_configured_cap_is_rejected_early() {
        let proxy = ProxyProtocol::new([]).max_header_len(64);
        let data = v2(0x21, 0x00, &[0; 100]);
        let (mut client, server) = tokio::io::duplex(1024);
        // Only the fixed part is sent: the length field alone condemns the header.
        client.write_all(&data[..16]).await.expect("write");
        let e = proxy.read_header(server).await.expect_err("too long");
        assert_eq!(e.reason(), "too_long");
        assert!(matches!(e, ProxyError::Malformed(ref p) if p.kind() == ParseErrorKind::TooLong));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_times_out_at_the_deadline() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"PROXY TCP4 1.2").await.expect("write");
        let start = tokio::time::Instant::now();
        let e = ProxyProtocol::new([])
            .read_header(server)
            .await
            .expect_err("timeout");
        assert_eq!(start.elapsed(), DEFAULT_TIMEOUT);
        assert!(
            matches!(e, ProxyError::Timeout { after, received: 14 } if after == DEFAULT_TIMEOUT),
            "{e:?}"
        );
        assert_eq!(e.reason(), "timeout");
        assert_eq!(
            e.to_string(),
            "no complete PROXY header within 5s (14 bytes received)"
        );
        drop(client);

        let (_client, server) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let e = ProxyProtocol::new([])
            .timeout(Duration::from_millis(250))
            .read_header(server)
            .await
            .expect_err("timeout");
        assert_eq!(start.elapsed(), Duration::from_millis(250));
        assert_eq!(e.reason(), "timeout");
    }

    #[tokio::test]
    async fn read_errors_are_reported() {
        #[derive(Debug)]
        struct Failing;
        impl AsyncRead for Failing {
            fn poll_read(
                self: Pin<&mut Self>,
                _: &mut Context<'_>,
                _: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
        }
        let e = ProxyProtocol::new([])
            .read_header(Failing)
            .await
            .expect_err("io error");
        assert_eq!(e.reason(), "io");
        let source = e.source().and_then(|s| s.downcast_ref::<io::Error>());
        assert_eq!(
            source.map(io::Error::kind),
            Some(io::ErrorKind::ConnectionReset)
        );
    }

    #[tokio::test]
    async fn prefixed_yields_prefix_then_inner_and_passes_writes_through() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"PROXY UNKNOWN\r\nabcdef")
            .await
            .expect("write");
        let (_, mut stream) = ProxyProtocol::new([])
            .read_header(server)
            .await
            .expect("header");
        assert_eq!(stream.prefix(), b"abcdef");
        client.write_all(b"ghi").await.expect("write");
        drop(client.shutdown().await);
        // A small buffer takes the prefix in pieces.
        let mut small = [0; 4];
        assert_eq!(stream.read(&mut small).await.expect("read"), 4);
        assert_eq!(&small, b"abcd");
        // Debug shows how much is buffered, never the application's bytes.
        let shown = format!("{stream:?}");
        assert!(
            shown.starts_with("Prefixed { prefix_len: 2, inner: "),
            "{shown}"
        );
        let secret = Prefixed {
            prefix: Bytes::from_static(b"secret"),
            inner: (),
        };
        assert_eq!(
            format!("{secret:?}"),
            "Prefixed { prefix_len: 6, inner: () }"
        );
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"efghi");

        let (mut client, server) = tokio::io::duplex(1024);
        let mut plain = Prefixed::new(server);
        assert!(plain.prefix().is_empty());
        let bufs = [io::IoSlice::new(b"hello "), io::IoSlice::new(b"world")];
        let n = plain.write_vectored(&bufs).await.expect("write");
        plain.write_all(&b"hello world"[n..]).await.expect("write");
        plain.flush().await.expect("flush");
        plain.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello world");
        let (prefix, _inner) = plain.into_parts();
        assert!(prefix.is_empty());
    }

    // -----------------------------------------------------------------------------------------
    // Over real loopback TCP
    // -----------------------------------------------------------------------------------------

    async fn connected() -> (TcpStream, TcpStream, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, peer) = listener.accept().await.expect("accept");
        client.set_nodelay(true).expect("nodelay");
        (client, server, peer)
    }

    /// Limits each read of the inner stream to `max` bytes and counts reads, so a header is
    /// certain to arrive in pieces however the kernel coalesces segments.
    #[derive(Debug)]
    struct SmallReads<S> {
        inner: S,
        max: usize,
        reads: usize,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for SmallReads<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let max = this.max.min(buf.remaining());
            let mut small = ReadBuf::new(buf.initialize_unfilled_to(max));
            let poll = Pin::new(&mut this.inner).poll_read(cx, &mut small);
            let n = small.filled().len();
            buf.advance(n);
            if poll.is_ready() {
                this.reads += 1;
            }
            poll
        }
    }

    #[tokio::test]
    async fn tcp_header_and_request_in_one_write() {
        let (mut client, server, peer) = connected().await;
        let proxy = ProxyProtocol::new([net("127.0.0.0/8")]);
        assert!(proxy.is_trusted(peer.ip()));
        let request = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
        let sent = [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"[..],
            request,
        ]
        .concat();
        client.write_all(&sent).await.expect("write");
        // Half-close, so reading the request to its end cannot hang.
        client.shutdown().await.expect("shutdown");

        let (header, mut stream) = proxy.read_header(server).await.expect("header");
        assert_eq!(header.source, Some(addr("192.168.0.1:56324")));
        assert_eq!(header.destination, Some(addr("192.168.0.11:443")));
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.expect("read request");
        assert_eq!(got, request);

        stream
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .expect("write");
        stream.shutdown().await.expect("shutdown");
        let mut response = Vec::new();
        client
            .read_to_end(&mut response)
            .await
            .expect("read response");
        assert_eq!(response, b"HTTP/1.1 204 No Content\r\n\r\n");
    }

    #[tokio::test]
    async fn tcp_header_dribbled_in_pieces() {
        let (mut client, server, _) = connected().await;
        let mut sent = v2(
            0x21,
            0x21,
            &[
                &Ipv6Addr::LOCALHOST.octets()[..],
                &Ipv6Addr::LOCALHOST.octets(),
                &[0x30, 0x39, 0x01, 0xbb],
                &tlv(0x01, b"h2"),
            ]
            .concat(),
        );
        let header_len = sent.len();
        sent.extend_from_slice(b"PRI * HTTP/2.0");
        let writer = tokio::spawn(async move {
            for piece in sent.chunks(7) {
                client.write_all(piece).await.expect("write");
                tokio::task::yield_now().await;
            }
            client.shutdown().await.expect("shutdown");
            client
        });
        let reader = SmallReads {
            inner: server,
            max: 5,
            reads: 0,
        };
        let (header, mut stream) = ProxyProtocol::new([])
            .read_header(reader)
            .await
            .expect("header");
        assert_eq!(header.source, Some(addr("[::1]:12345")));
        assert_eq!(header.destination, Some(addr("[::1]:443")));
        assert!(stream.get_ref().reads >= header_len / 5);
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.expect("read");
        assert_eq!(rest, b"PRI * HTTP/2.0");
        drop(writer.await.expect("writer"));
    }

    #[tokio::test]
    async fn tcp_garbage_is_malformed() {
        let (mut client, server, _) = connected().await;
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
            .await
            .expect("write");
        let e = ProxyProtocol::new([])
            .read_header(server)
            .await
            .expect_err("garbage");
        assert_eq!(e.reason(), "not_proxy");
        assert!(
            e.to_string().contains("got \"GET / HTTP/1.1\\r\\n\""),
            "{e}"
        );
    }

    #[tokio::test]
    async fn tcp_close_before_the_header_ends() {
        let (mut client, server, _) = connected().await;
        client.write_all(b"PROXY TCP4 1.2.").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let e = ProxyProtocol::new([])
            .read_header(server)
            .await
            .expect_err("eof");
        assert!(matches!(e, ProxyError::Eof { received: 15 }), "{e:?}");
        assert_eq!(e.reason(), "eof");
    }

    // -----------------------------------------------------------------------------------------
    // Metrics
    // -----------------------------------------------------------------------------------------

    #[test]
    fn failures_are_counted_by_reason() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let proxy = ProxyProtocol::new([]);
            let (mut client, server) = tokio::io::duplex(1024);
            client
                .write_all(b"\x16\x03\x01\x02\x00")
                .await
                .expect("write");
            proxy.read_header(server).await.expect_err("not proxy");

            for _ in 0..2 {
                let (_client, server) = tokio::io::duplex(1024);
                proxy.read_header(server).await.expect_err("timeout");
            }

            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(b"PROXY TCP4 ::1").await.expect("write");
            proxy.read_header(server).await.expect_err("bad v1");

            let (client, server) = tokio::io::duplex(1024);
            drop(client);
            proxy.read_header(server).await.expect_err("eof");

            // Success is not counted.
            let (mut client, server) = tokio::io::duplex(1024);
            client.write_all(b"PROXY UNKNOWN\r\n").await.expect("write");
            proxy.read_header(server).await.expect("header");
        });

        let mut counts = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            assert_eq!(key.key().name(), PROXY_HEADER_ERRORS_TOTAL);
            let labels: Vec<_> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let [(label, reason)] = &labels[..] else {
                panic!("expected one label, got {labels:?}");
            };
            assert_eq!(label, LABEL_REASON);
            assert!(PROXY_ERROR_REASONS.contains(&reason.as_str()), "{reason}");
            let DebugValue::Counter(n) = value else {
                panic!("{reason}: not a counter");
            };
            counts.insert(reason.clone(), n);
        }
        let expected: HashMap<String, u64> =
            [("not_proxy", 1), ("timeout", 2), ("bad_v1", 1), ("eof", 1)]
                .into_iter()
                .map(|(r, n)| (r.to_owned(), n))
                .collect();
        assert_eq!(counts, expected);
    }

    #[test]
    fn reasons_are_listed_once() {
        let kinds = [
            ParseErrorKind::NotProxy,
            ParseErrorKind::BadV1,
            ParseErrorKind::BadV2,
            ParseErrorKind::TooLong,
            ParseErrorKind::Unsupported,
        ];
        let mut all: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
        all.extend(["timeout", "io", "eof"]);
        for reason in &all {
            assert!(
                PROXY_ERROR_REASONS.contains(reason),
                "{reason} is not listed"
            );
        }
        assert_eq!(all.len(), PROXY_ERROR_REASONS.len());
    }

    #[test]
    fn describe_registers_unit_and_help() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            describe();
            metrics::counter!(PROXY_HEADER_ERRORS_TOTAL, LABEL_REASON => "eof").increment(1);
        });
        let snapshot = snapshotter.snapshot().into_vec();
        assert_eq!(snapshot.len(), 1);
        for (key, unit, help, _) in snapshot {
            assert_eq!(unit, Some(Unit::Count), "{key:?}");
            assert!(help.is_some_and(|h| !h.is_empty()), "{key:?}");
        }
    }
}
