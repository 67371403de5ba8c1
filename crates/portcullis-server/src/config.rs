//! HTTP connection settings with hardened defaults.

use std::time::Duration;

/// HTTP settings applied to every connection a [`Server`](crate::Server) serves.
///
/// Every default is chosen for a server exposed to untrusted clients; the reason for each is
/// written next to its setter. All settings are enforced by portcullis itself or set explicitly on
/// hyper, so they do not change when hyper's own defaults change.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use portcullis_server::HttpConfig;
///
/// let http = HttpConfig::default()
///     .header_timeout(Duration::from_secs(5))
///     .idle_timeout(Duration::from_secs(30));
/// assert_ne!(http, HttpConfig::default());
/// ```
///
/// A timeout of `Duration::MAX` means "never"; a zero timeout closes connections at once.
///
/// Not covered by a deadline: a request in flight (reading its body, running the handler,
/// writing the response). The drain deadline bounds it at shutdown; the application bounds it
/// otherwise (for example with `tower::timeout`).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub struct HttpConfig {
    pub(crate) header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) max_headers: usize,
    pub(crate) max_header_bytes: usize,
    pub(crate) h2_max_concurrent_streams: u32,
    pub(crate) h2_max_pending_accept_reset_streams: usize,
    pub(crate) h2_max_local_error_reset_streams: usize,
    pub(crate) h2_max_header_list_size: u32,
}

/// Default for [`HttpConfig::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`HttpConfig::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_headers: 100,
            max_header_bytes: 64 * 1024,
            h2_max_concurrent_streams: 100,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 256,
            h2_max_header_list_size: 64 * 1024,
        }
    }
}

impl HttpConfig {
    /// Deadline for a whole request head, counted from its first byte.
    ///
    /// Applies to every request on a connection, not only the first (a keep-alive connection
    /// dribbling its second request is closed just like a first one), and on a new connection
    /// to the first byte, the protocol detection and the HTTP/2 preface.
    ///
    /// Default 10 s: a legitimate client sends a head in one round trip; a slowloris client
    /// holding a connection open byte by byte is cut off after this long.
    ///
    /// The clock starts at the first byte read while no request is in flight. Bytes of a
    /// pipelined HTTP/1 request that arrive while the previous response is still being
    /// produced are covered by the idle timeout until that response ends, and by this one from
    /// the next byte on.
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// How long a connection with no request in progress stays open: HTTP/1 keep-alive
    /// between requests, and HTTP/2 with no open stream.
    ///
    /// Default 60 s: long enough for browsers and pooling clients to reuse connections (most
    /// close theirs after 60–90 s of idleness themselves), short enough that idle connections
    /// do not pin descriptors and memory. hyper has no idle timeout for HTTP/2 and, on its own,
    /// closes idle HTTP/1 connections at its header timeout; portcullis keeps the two separate.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Most header fields in one HTTP/1 request; more is answered with 431.
    ///
    /// Default 100: what real clients send fits easily; each field costs parsing work and
    /// memory. 100 is also hyper's built-in limit, which parses into a fixed array on the
    /// stack; any other value makes hyper allocate the array for every request.
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }

    /// Most bytes of an HTTP/1 request head (hyper's read buffer); more is answered with 431.
    /// Values below 8 KiB are raised to 8 KiB, hyper's minimum.
    ///
    /// Default 64 KiB: large cookies and tokens fit; a client cannot make the server buffer
    /// megabytes before a request even starts.
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes.max(8 * 1024);
        self
    }

    /// Most concurrent HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    ///
    /// Default 100, the value RFC 9113 recommends as a minimum and browsers expect; it bounds
    /// the work one connection can have in flight.
    pub fn h2_max_concurrent_streams(mut self, streams: u32) -> Self {
        self.h2_max_concurrent_streams = streams;
        self
    }

    /// Most HTTP/2 streams that a client opened and reset before the server accepted them;
    /// past this the connection is closed with `ENHANCE_YOUR_CALM`.
    ///
    /// Default 20: the mitigation for rapid reset (CVE-2023-44487). Legitimate clients rarely
    /// have more than a handful pending.
    pub fn h2_max_pending_accept_reset_streams(mut self, streams: usize) -> Self {
        self.h2_max_pending_accept_reset_streams = streams;
        self
    }

    /// Most HTTP/2 streams the server may reset because of client protocol errors before it
    /// closes the connection.
    ///
    /// Default 256: a misbehaving client cannot make the server spend unbounded work resetting
    /// streams (the "MadeYouReset" class of floods).
    pub fn h2_max_local_error_reset_streams(mut self, streams: usize) -> Self {
        self.h2_max_local_error_reset_streams = streams;
        self
    }

    /// Most bytes of one HTTP/2 header list (`SETTINGS_MAX_HEADER_LIST_SIZE`), after
    /// decompression; bounds CONTINUATION floods.
    ///
    /// Default 64 KiB, the same bound as [`max_header_bytes`](Self::max_header_bytes) for
    /// HTTP/1.
    pub fn h2_max_header_list_size(mut self, bytes: u32) -> Self {
        self.h2_max_header_list_size = bytes;
        self
    }
}
