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
//! use portcullis_listen::proxy::{IpNet, Prefixed, ProxyProtocol};
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
//! # Metrics
//!
//! Every failed [`read_header`](ProxyProtocol::read_header) increments
//! [`metrics::PROXY_HEADER_ERRORS_TOTAL`](crate::metrics::PROXY_HEADER_ERRORS_TOTAL) with a
//! `reason` from the closed set
//! [`metrics::PROXY_ERROR_REASONS`](crate::metrics::PROXY_ERROR_REASONS), which is also every
//! value of [`ProxyError::reason`].
//!
//! [PROXY protocol]: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
// Each file answers one question:
mod error; // what went wrong: `ParseError` (the bytes) and `ProxyError` (the read)
mod header; // what a header says, and `parse`, which picks the version by the first byte
mod prefixed; // the stream handed back, with the bytes read past the header in front
mod reader; // which peers are trusted, and reading a header under a deadline
mod v1; // the text format
mod v2; // the binary format

#[cfg(test)]
mod tests;

pub use error::{ParseError, ParseErrorKind, ProxyError};
pub use header::{Command, Parsed, ProxyHeader, Version, parse};
pub use prefixed::Prefixed;
pub use reader::{DEFAULT_TIMEOUT, ProxyProtocol};
pub use v1::V1_MAX_LEN;
pub use v2::MAX_HEADER_LEN;

// The dependency types in this module's signatures (`ProxyProtocol::new` and `trusted`,
// `Prefixed::into_parts`), so callers need not depend on the same versions themselves.
pub use bytes::Bytes;
pub use ipnet::IpNet;
