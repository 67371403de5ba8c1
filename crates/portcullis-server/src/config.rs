//! HTTP connection settings with hardened defaults.

use std::time::Duration;

use crate::rate::{DEFAULT_MIN_RATE, MinRate};

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
/// A request in flight has no deadline of its own: its body and its response are held to
/// minimum data rates instead ([`min_body_rate`](Self::min_body_rate),
/// [`min_response_rate`](Self::min_response_rate)), and the handler's own time is the
/// application's to bound (for example with `tower::timeout`). The drain deadline bounds
/// everything at shutdown.
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
    pub(crate) min_body_rate: MinRate,
    pub(crate) min_response_rate: MinRate,
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
            min_body_rate: DEFAULT_MIN_RATE,
            min_response_rate: DEFAULT_MIN_RATE,
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

    /// The minimum rate of request bodies: once the application has waited `grace` for a
    /// body, the bytes received over the time it waited must stay at or above the rate
    /// (see [`RequestBody`](crate::RequestBody) for how time counts). Below it the request is
    /// answered 408 (when no response has started) and the connection closed, or on HTTP/2
    /// the stream reset; counted as `min_body_rate`. [`MinRate::OFF`] turns it off; a route
    /// can have its own ([`MinRateLayer`](crate::MinRateLayer)).
    ///
    /// Default 240 B/s after 5 s ([`DEFAULT_MIN_RATE`](crate::DEFAULT_MIN_RATE), Kestrel's):
    /// a body trickled at a few bytes per second (R-U-Dead-Yet) holds its connection for about
    /// six seconds instead of forever, while the slowest real links send twenty times faster.
    pub fn min_body_rate(mut self, rate: MinRate) -> Self {
        self.min_body_rate = rate;
        self
    }

    /// The minimum rate at which clients must take responses: a write the socket does not
    /// take at once must be taken within the grace period, or longer at the rate for its
    /// size (bytes joining it extend it at the rate), never under one second. Below it the
    /// connection is closed. On HTTP/2 a stream whose body stalls on its own flow-control
    /// window is reset instead, and response data waiting in h2's buffers for window the
    /// client keeps shut must leave at the rate too, or the connection is closed. Counted as
    /// `min_response_rate`. [`MinRate::OFF`] turns it off; a route can
    /// have its own ([`MinRateLayer`](crate::MinRateLayer)).
    ///
    /// Default 240 B/s after 5 s ([`DEFAULT_MIN_RATE`](crate::DEFAULT_MIN_RATE)): a client
    /// that stops reading holds its connection, its task and its buffers for seconds, not
    /// forever; enforced on the connection's writes because hyper stops polling a response
    /// body while the socket is full, so a timer on the body would never fire.
    pub fn min_response_rate(mut self, rate: MinRate) -> Self {
        self.min_response_rate = rate;
        self
    }
}
