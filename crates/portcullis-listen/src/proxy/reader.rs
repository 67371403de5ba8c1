//! [`ProxyProtocol`]: which peers are trusted to send a header, and reading it under a deadline.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use ipnet::{IpNet, Ipv4Net};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::header::{Progress, parse_limited};
use super::{MAX_HEADER_LEN, Prefixed, ProxyError, ProxyHeader};
use crate::metrics::{LABEL_REASON, PROXY_HEADER_ERRORS_TOTAL};

/// How long [`ProxyProtocol::read_header`] waits for a complete header by default: 5 seconds.
///
/// A load balancer writes the header as soon as it connects, so a healthy one needs
/// milliseconds; 5 seconds still covers a few TCP retransmissions of a lost first packet, while
/// a peer that sends nothing gives its connection slot back quickly.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Smallest read issued while waiting for a header: enough for any v1 line or a typical v2
/// header in one system call, small enough that the application bytes read along with it are
/// cheap to hold.
pub(super) const READ_CHUNK: usize = 1024;

/// Listener-side PROXY protocol settings: which peers may send a header, and how long to
/// wait for it.
///
/// Cheap to clone (the trusted ranges are shared), so each connection task can take its own
/// copy. See the [module docs](super) for where and when to use it.
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
    #[must_use]
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
    #[must_use]
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
    /// v1 lines are always limited to [`V1_MAX_LEN`](super::V1_MAX_LEN) bytes.
    #[must_use]
    pub fn max_header_len(mut self, max: usize) -> Self {
        self.max_header_len = max.min(MAX_HEADER_LEN);
        self
    }

    /// The trusted ranges, normalized as described at [`new`](Self::new).
    #[must_use]
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// Whether a peer at `ip` may send a PROXY header. IPv4-mapped IPv6 addresses
    /// (`::ffff:10.1.2.3`, as accepted by a dual-stack socket) are treated as the IPv4
    /// address they map.
    ///
    /// Peers of Unix socket listeners have no IP address; whether to read a header from them
    /// is the caller's decision.
    #[must_use]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }

    /// Reads the PROXY header at the start of `stream`, which must come from a
    /// [trusted](Self::is_trusted) peer, and returns it with the stream positioned after it.
    ///
    /// Reads in chunks (never a byte per system call) until [`parse`](super::parse) completes,
    /// all within [`timeout`](Self::timeout). Application bytes received in the same read as
    /// the end of the header are yielded first by the returned [`Prefixed`]; nothing beyond one
    /// read past the header is buffered. Every failure increments
    /// [`PROXY_HEADER_ERRORS_TOTAL`] with its [`reason`](ProxyError::reason) and is logged at
    /// `DEBUG`; the caller should then close the connection (dropping it does).
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
                Ok((header, Prefixed::with_prefix(prefix, stream)))
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
