//! What a rate limit is keyed by: [`KeyBy`], [`Key`], and the [`PeerAddr`] request extension.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Extensions, HeaderMap, HeaderName, Method, Uri};

/// The peer address of the connection a request came on (the client named by a trusted
/// proxy's PROXY header, or the TCP peer).
///
/// The rate limit layer finds it, in this order:
///
/// 1. a `PeerAddr` request extension (portcullis-server inserts one unless
///    `Builder::peer_addr(false)`; another server can insert it itself);
/// 2. the connection's scope, [`PeerAddr::scope`]: portcullis-server runs every connection task
///    (and the HTTP/2 stream tasks it spawns) inside one, which costs nothing per request,
///    unlike an extension, which allocates;
/// 3. axum's `ConnectInfo<SocketAddr>` extension (crate feature `axum`).
///
/// A request with none of them is keyed as `0.0.0.0`, so requests of unknown origin share one
/// bucket instead of escaping the limit; a warning is logged once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

tokio::task_local! {
    static CONNECTION_PEER: SocketAddr;
}

impl PeerAddr {
    /// Runs `future` (a connection's task) with `peer` as the peer of every request handled
    /// while it is polled. Tasks spawned from it do not inherit the scope: a server that
    /// spawns per-request tasks scopes them too (portcullis-server's executor does).
    pub fn scope<F: Future>(peer: SocketAddr, future: F) -> impl Future<Output = F::Output> {
        CONNECTION_PEER.scope(peer, future)
    }

    /// The peer of the connection scope the current task runs in, if any.
    #[must_use]
    pub fn current() -> Option<SocketAddr> {
        CONNECTION_PEER.try_with(|peer| *peer).ok()
    }
}

/// A rate-limit key: a client address (after prefix aggregation) or bytes of the application's
/// choosing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Repr);

#[derive(Clone, PartialEq, Eq, Hash)]
enum Repr {
    Ip(IpAddr),
    Bytes(Box<[u8]>),
}

/// The longest header value or custom key used as is: longer values are keyed by the client
/// address instead, so a key never costs more than this in the table.
pub const MAX_KEY_LEN: usize = 256;

impl Key {
    /// A key for an address, used as given (no prefix aggregation).
    #[must_use]
    pub fn ip(ip: IpAddr) -> Self {
        Key(Repr::Ip(ip))
    }

    /// A key of at most [`MAX_KEY_LEN`] bytes (an API key, a tenant id); `None` if longer.
    #[must_use]
    pub fn bytes(bytes: &[u8]) -> Option<Self> {
        (bytes.len() <= MAX_KEY_LEN).then(|| Key(Repr::Bytes(bytes.into())))
    }
}

impl Key {
    /// Appends the key as a Redis key part: `ip:` and an address in its text form, or `k:`
    /// and bytes in hex. The kinds never collide (a header valued `10.0.0.5` is not the client
    /// 10.0.0.5), and no byte a client chooses can be a brace that moves the hash tag (and so
    /// pick the Cluster slot).
    #[cfg(feature = "redis")]
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        use std::io::Write as _;
        match &self.0 {
            // Writing to a Vec cannot fail.
            Repr::Ip(ip) => drop(write!(out, "ip:{ip}")),
            Repr::Bytes(bytes) => {
                out.extend_from_slice(b"k:");
                for byte in bytes.iter() {
                    drop(write!(out, "{byte:02x}"));
                }
            }
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Ip(ip) => write!(f, "Key({ip})"),
            Repr::Bytes(bytes) => write!(f, "Key({} bytes)", bytes.len()),
        }
    }
}

/// The parts of a request a custom key extractor may look at, with the resolved client
/// address.
#[derive(Debug)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target.
    pub uri: &'a Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions (an authenticated user inserted by an earlier layer, say).
    pub extensions: &'a Extensions,
    /// The client address, resolved through the trusted proxies and aggregated to the key
    /// prefix.
    pub client: IpAddr,
}

type Extract = dyn Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync;

/// What requests are counted together.
///
/// Whenever a key cannot be taken from the request (no such header, a value over
/// [`MAX_KEY_LEN`], an extractor returning `None`), the client address is the key: leaving a
/// header out never escapes the limit.
#[derive(Clone)]
pub enum KeyBy {
    /// The client address (see [`ClientIp`](crate::client::ClientIp)).
    Client,
    /// One bucket for every request.
    Global,
    /// The value of a header, for example an API key. Only behind authentication: every
    /// distinct value is a bucket of its own, so a client free to send any value gets a fresh
    /// bucket per value (until the key table is full). Put the layer after the layer that
    /// rejects unknown keys, or key on the client and the value together with
    /// [`KeyBy::Custom`].
    Header(HeaderName),
    /// A key computed by the application.
    Custom(Arc<Extract>),
}

impl KeyBy {
    /// A key computed by `extract`.
    #[must_use]
    pub fn custom(
        extract: impl Fn(&RequestInfo<'_>) -> Option<Key> + Send + Sync + 'static,
    ) -> Self {
        KeyBy::Custom(Arc::new(extract))
    }
}

impl fmt::Debug for KeyBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyBy::Client => f.write_str("Client"),
            KeyBy::Global => f.write_str("Global"),
            KeyBy::Header(name) => f.debug_tuple("Header").field(name).finish(),
            KeyBy::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}
