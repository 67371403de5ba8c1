//! Client-address resolution for rate limiting that a client cannot spoof.
//!
//! # The threat
//!
//! A rate limiter keyed by "the client address" is only as good as that address. Taking the
//! **leftmost** `X-Forwarded-For` entry (the "original client" by convention) lets every client
//! pick its own key: the leftmost entries are whatever the client sent, and proxies only
//! *append*. A client that writes a fresh random address per request gets a fresh bucket per
//! request, and one that writes its victim's address exhausts the victim's bucket. Believing
//! forwarding headers from a peer that is not a proxy at all is the same mistake.
//!
//! # The rules
//!
//! [`ClientIp::resolve`] applies these, in order:
//!
//! 1. The client is the TCP peer (or the PROXY protocol source the caller passes as the peer),
//!    unless the peer is inside the configured [`TrustedProxies`]. With no trusted ranges (the
//!    default) headers are never read.
//! 2. A trusted peer's forwarding header is read. The headers consulted, and their order, are
//!    configurable ([`ForwardingHeader`]); by default `Forwarded` (RFC 7239), then
//!    `X-Forwarded-For`, then `X-Real-IP`. Only the **first one present** is read; a client
//!    never gets to choose between them.
//! 3. The header is walked **from the right** (the nearest hop first), across all its field lines
//!    in order (the last line's last element is the nearest hop). Addresses inside the trusted
//!    ranges are skipped; the first untrusted address is the client. If every listed address is
//!    trusted, the leftmost one is the client. A trusted peer that sends no header is itself the
//!    client.
//! 4. An element that is not a usable IP address (`unknown`, empty, garbage, an obfuscated
//!    `Forwarded` identifier such as `for=_hidden`, invalid UTF-8, a bad quoted string, an
//!    element longer than [`MAX_ELEMENT_LEN`]) stops the walk, and the client is the last address
//!    already walked: the nearest trusted hop, or the peer. Hostile values can therefore never
//!    produce a fresh address per request: every address returned was written by a trusted hop
//!    (or is the peer itself).
//! 5. At most [`ClientIp::max_hops`] elements are examined (default [`DEFAULT_MAX_HOPS`]); past
//!    that the walk stops at the last trusted address. Elements are found by scanning from the
//!    right and each scan is bounded by [`MAX_ELEMENT_LEN`], so a 10 KB header costs at most
//!    `max_hops` small steps: the header is never parsed as a whole.
//! 6. IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`) are IPv4 everywhere: in the peer, in header
//!    values and in trust checks (a dual-stack listener reports IPv4 peers that way).
//!
//! `X-Real-IP` holds one address written by the proxy rather than a list: it is believed only as
//! exactly one field line holding exactly one address (ports and brackets as for
//! `X-Forwarded-For`); anything else falls back to the peer.
//!
//! Resolving a request's client does not allocate: values are walked as byte slices.
//!
//! # Choosing what to trust
//!
//! Trust only ranges that clients can never connect from (your load balancers). If the proxy in
//! front of you writes only `X-Forwarded-For` but passes a client's own `Forwarded` header
//! through untouched, the default order would read the client's `Forwarded`: configure
//! [`ClientIp::headers`] with exactly the header your proxy maintains (or make the proxy strip
//! the others). The same holds for `X-Real-IP` when the proxy does not overwrite it.
//!
//! # Aggregating keys
//!
//! IPv6 clients usually hold a whole /64 and can rotate addresses inside it at will.
//! [`KeyPrefix::apply`] masks the resolved address to a configurable prefix (default /32 for
//! IPv4, /64 for IPv6) before it is used as a limiter key.
//!
//! # Example
//!
//! ```
//! use std::net::IpAddr;
//!
//! use http::HeaderMap;
//! use portcullis_limit::client::{ClientIp, KeyPrefix, TrustedProxies};
//!
//! // Our load balancers live in 10.0.0.0/8.
//! let resolver = ClientIp::new(TrustedProxies::new(["10.0.0.0/8".parse()?]));
//!
//! let mut headers = HeaderMap::new();
//! // 6.6.6.6 is whatever the client claimed; the balancer at 10.1.2.3 saw 198.51.100.7.
//! headers.insert("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.2.3".parse()?);
//!
//! // Through a trusted balancer: the rightmost untrusted address.
//! let client = resolver.resolve("10.0.0.1".parse()?, &headers);
//! assert_eq!(client, "198.51.100.7".parse::<IpAddr>()?);
//!
//! // Straight from the internet: the header is ignored.
//! let direct = resolver.resolve("203.0.113.9".parse()?, &headers);
//! assert_eq!(direct, "203.0.113.9".parse::<IpAddr>()?);
//!
//! // IPv6 clients share a key per /64.
//! let prefix = KeyPrefix::default();
//! assert_eq!(
//!     prefix.apply("2001:db8:1:2:aaaa::1".parse()?),
//!     prefix.apply("2001:db8:1:2:bbbb::2".parse()?),
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::ControlFlow;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use ipnet::{Ipv4Net, Ipv6Net};

pub(crate) mod elements;

use elements::{RevElements, parse_forwarded_element, parse_xff_element};

/// A CIDR range (`10.0.0.0/8`, `2001:db8::/32`), re-exported from the `ipnet` crate so that
/// callers use the same version portcullis does.
pub use ipnet::IpNet;

/// Default for [`ClientIp::max_hops`]: how many header elements are examined at most.
///
/// Real deployments have a handful of proxies; 32 leaves room for long chains while bounding
/// the work a hostile header can cause.
pub const DEFAULT_MAX_HOPS: usize = 32;

/// The longest single header element (between two commas) that is examined, in bytes.
///
/// An address with a port and brackets is under 60 bytes; a `Forwarded` element carrying `by`,
/// `host` and `proto` as well stays well under this. A longer element is not a usable address
/// and stops the walk, and the scan for its left edge gives up after this many bytes, which
/// bounds the work per hop.
pub const MAX_ELEMENT_LEN: usize = 512;

static FORWARDED: HeaderName = header::FORWARDED;
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

// ===== TrustedProxies =====

/// The address ranges of proxies whose forwarding headers are believed.
///
/// IPv4-mapped IPv6 ranges (inside `::ffff:0:0/96`) are stored as the IPv4 ranges they map, and
/// addresses are canonicalised the same way before lookup, so `::ffff:10.0.0.0/104` and
/// `10.0.0.0/8` mean the same thing. An IPv6 range that merely *contains* the mapped block
/// (such as `::/0`) trusts IPv6 peers only, never IPv4 ones: trust is never widened implicitly.
///
/// The default is empty: nothing is trusted and the peer is always the client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    v4: Vec<Ipv4Net>,
    v6: Vec<Ipv6Net>,
}

impl TrustedProxies {
    /// Trusts the given ranges. Host bits are ignored (`10.1.2.3/8` is `10.0.0.0/8`) and
    /// duplicates are dropped.
    #[must_use]
    pub fn new<I: IntoIterator<Item = IpNet>>(nets: I) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match canonical_net(net) {
                IpNet::V4(net) => v4.push(net),
                IpNet::V6(net) => v6.push(net),
            }
        }
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        Self { v4, v6 }
    }

    /// Trusts nothing: forwarding headers are never believed. Same as [`Default`].
    #[must_use]
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether no range is trusted.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// Whether `ip` (canonicalised: IPv4-mapped IPv6 is IPv4) is inside a trusted range.
    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(ip) => self.v4.iter().any(|net| net.contains(&ip)),
            IpAddr::V6(ip) => self.v6.iter().any(|net| net.contains(&ip)),
        }
    }

    /// The trusted ranges, canonicalised (IPv4 first).
    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .iter()
            .copied()
            .map(IpNet::V4)
            .chain(self.v6.iter().copied().map(IpNet::V6))
    }
}

impl FromIterator<IpNet> for TrustedProxies {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        Self::new(iter)
    }
}

/// Truncates host bits and turns a range inside `::ffff:0:0/96` into its IPv4 range.
fn canonical_net(net: IpNet) -> IpNet {
    match net.trunc() {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(IpNet::V6(v6)),
            None => IpNet::V6(v6),
        },
        other => other,
    }
}

// ===== ForwardingHeader =====

/// A request header that can carry the client address through proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ForwardingHeader {
    /// `Forwarded` (RFC 7239): the `for` parameter of each element.
    Forwarded,
    /// `X-Forwarded-For`: a comma-separated list of addresses.
    XForwardedFor,
    /// `X-Real-IP`: one address written by the proxy.
    XRealIp,
}

impl ForwardingHeader {
    /// The default order: `Forwarded` (the standard) first, then `X-Forwarded-For`, then
    /// `X-Real-IP`.
    pub const DEFAULT_ORDER: [ForwardingHeader; 3] = [
        ForwardingHeader::Forwarded,
        ForwardingHeader::XForwardedFor,
        ForwardingHeader::XRealIp,
    ];

    /// The header's name.
    #[must_use]
    pub fn header_name(self) -> &'static HeaderName {
        match self {
            ForwardingHeader::Forwarded => &FORWARDED,
            ForwardingHeader::XForwardedFor => &X_FORWARDED_FOR,
            ForwardingHeader::XRealIp => &X_REAL_IP,
        }
    }
}

// ===== ClientIp =====

/// Resolves the client address of a request from its peer address and forwarding headers.
///
/// See the [module documentation](self) for the rules. Configuration happens once; resolving
/// takes `&self` and does not allocate, so one resolver (behind an `Arc` if needed) serves every
/// connection.
#[derive(Debug, Clone)]
pub struct ClientIp {
    trusted: TrustedProxies,
    headers: Vec<ForwardingHeader>,
    max_hops: usize,
}

impl Default for ClientIp {
    /// Trusts no proxy: the peer is always the client.
    fn default() -> Self {
        Self::new(TrustedProxies::none())
    }
}

/// What one resolution did; the counters exist so tests can check the work bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Walk {
    client: IpAddr,
    /// Header elements examined.
    hops: usize,
    /// Header bytes scanned while looking for element boundaries.
    scanned: usize,
}

impl ClientIp {
    /// A resolver that believes forwarding headers only from peers inside `trusted`.
    ///
    /// Defaults: the headers of [`ForwardingHeader::DEFAULT_ORDER`], at most
    /// [`DEFAULT_MAX_HOPS`] elements examined.
    #[must_use]
    pub fn new(trusted: TrustedProxies) -> Self {
        Self {
            trusted,
            headers: ForwardingHeader::DEFAULT_ORDER.to_vec(),
            max_hops: DEFAULT_MAX_HOPS,
        }
    }

    /// Sets which headers are consulted, in order of preference; only the first one present in
    /// a request is read. Repeats are ignored. With no header at all the peer is always the
    /// client, as if nothing were trusted.
    ///
    /// Default: [`ForwardingHeader::DEFAULT_ORDER`]. Name exactly the headers your proxies
    /// maintain: a header a proxy passes through untouched is written by the client.
    #[must_use]
    pub fn headers<I: IntoIterator<Item = ForwardingHeader>>(mut self, headers: I) -> Self {
        self.headers.clear();
        for h in headers {
            if !self.headers.contains(&h) {
                self.headers.push(h);
            }
        }
        self
    }

    /// Sets how many header elements are examined at most before the walk stops at the last
    /// trusted address. `0` means headers are never read.
    ///
    /// Default: [`DEFAULT_MAX_HOPS`] (32). It bounds the work per request: each hop scans at
    /// most [`MAX_ELEMENT_LEN`] bytes.
    #[must_use]
    pub fn max_hops(mut self, max_hops: usize) -> Self {
        self.max_hops = max_hops;
        self
    }

    /// The trusted proxy ranges.
    #[must_use]
    pub fn trusted(&self) -> &TrustedProxies {
        &self.trusted
    }

    /// The client address of a request that arrived from `peer` with `headers`.
    ///
    /// The result is canonical (IPv4-mapped IPv6 becomes IPv4) and is either `peer` itself or an
    /// address written in the headers by a trusted hop. When `peer` is not trusted the headers
    /// are not looked at. Does not allocate.
    #[must_use]
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.walk(peer, headers).client
    }

    fn walk(&self, peer: IpAddr, headers: &HeaderMap) -> Walk {
        let mut walk = Walk {
            client: peer.to_canonical(),
            hops: 0,
            scanned: 0,
        };
        if self.max_hops == 0 || !self.trusted.contains(walk.client) {
            return walk;
        }
        for &which in &self.headers {
            let lines = headers.get_all(which.header_name());
            if lines.iter().next().is_none() {
                continue;
            }
            match which {
                ForwardingHeader::XRealIp => {
                    let mut lines = lines.iter();
                    if let (Some(line), None) = (lines.next(), lines.next()) {
                        walk.hops = 1;
                        walk.scanned = line.len();
                        if let Some(ip) = parse_xff_element(line.as_bytes()) {
                            walk.client = ip;
                        }
                    }
                }
                ForwardingHeader::Forwarded => {
                    self.walk_lines(lines.iter(), true, &mut walk);
                }
                ForwardingHeader::XForwardedFor => {
                    self.walk_lines(lines.iter(), false, &mut walk);
                }
            }
            // Only the first header present is read, whatever it yields.
            return walk;
        }
        walk
    }

    /// Walks field lines nearest-first; `walk.client` holds the last trusted address.
    fn walk_lines<'a, L>(&self, lines: L, forwarded: bool, walk: &mut Walk)
    where
        L: DoubleEndedIterator<Item = &'a HeaderValue>,
    {
        for line in lines.rev() {
            let mut elements = if forwarded {
                RevElements::forwarded(line.as_bytes())
            } else {
                RevElements::comma_separated(line.as_bytes())
            };
            let flow = self.walk_elements(&mut elements, forwarded, walk);
            walk.scanned += elements.scanned;
            if flow.is_break() {
                return;
            }
        }
    }

    fn walk_elements(
        &self,
        elements: &mut RevElements<'_>,
        forwarded: bool,
        walk: &mut Walk,
    ) -> ControlFlow<()> {
        loop {
            // Checked before scanning for the next element, so the limit bounds the scan too.
            if walk.hops >= self.max_hops {
                return ControlFlow::Break(());
            }
            let Some(element) = elements.next() else {
                return ControlFlow::Continue(());
            };
            walk.hops += 1;
            let parsed = if forwarded {
                parse_forwarded_element(element)
            } else {
                parse_xff_element(element)
            };
            match parsed {
                // Not an address: stay with the last trusted view.
                None => return ControlFlow::Break(()),
                Some(ip) => {
                    walk.client = ip;
                    if !self.trusted.contains(ip) {
                        return ControlFlow::Break(());
                    }
                }
            }
        }
    }
}

// ===== KeyPrefix =====

/// How much of a client address forms its rate-limit key.
///
/// IPv6 clients typically get a whole /64 and can rotate addresses inside it freely, so keying on
/// the full address would give one client millions of buckets. The default keys IPv4 clients
/// by their full address (/32) and IPv6 clients by their /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyPrefix {
    v4: u8,
    v6: u8,
}

impl Default for KeyPrefix {
    /// /32 for IPv4, /64 for IPv6.
    fn default() -> Self {
        Self { v4: 32, v6: 64 }
    }
}

impl KeyPrefix {
    /// Keys IPv4 clients by their first `v4` bits and IPv6 clients by their first `v6` bits.
    ///
    /// # Errors
    ///
    /// [`KeyPrefixError`] when `v4` is over 32 or `v6` is over 128.
    pub const fn new(v4: u8, v6: u8) -> Result<Self, KeyPrefixError> {
        if v4 > 32 {
            return Err(KeyPrefixError {
                ipv6: false,
                value: v4,
            });
        }
        if v6 > 128 {
            return Err(KeyPrefixError {
                ipv6: true,
                value: v6,
            });
        }
        Ok(Self { v4, v6 })
    }

    /// The IPv4 prefix length.
    #[must_use]
    pub const fn v4(&self) -> u8 {
        self.v4
    }

    /// The IPv6 prefix length.
    #[must_use]
    pub const fn v6(&self) -> u8 {
        self.v6
    }

    /// The key for `ip`: `ip` canonicalised (IPv4-mapped IPv6 is IPv4) with the bits past the
    /// prefix cleared.
    #[must_use]
    pub fn apply(&self, ip: IpAddr) -> IpAddr {
        match ip.to_canonical() {
            IpAddr::V4(ip) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.v4)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from_bits(ip.to_bits() & mask))
            }
            IpAddr::V6(ip) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.v6)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from_bits(ip.to_bits() & mask))
            }
        }
    }
}

/// A key prefix length out of range for its address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPrefixError {
    ipv6: bool,
    value: u8,
}

impl KeyPrefixError {
    /// The rejected prefix length.
    #[must_use]
    pub fn value(&self) -> u8 {
        self.value
    }

    /// Whether the IPv6 (rather than IPv4) length was rejected.
    #[must_use]
    pub fn is_ipv6(&self) -> bool {
        self.ipv6
    }

    /// The largest length allowed for that family (32 or 128).
    #[must_use]
    pub fn max(&self) -> u8 {
        if self.ipv6 { 128 } else { 32 }
    }
}

impl fmt::Display for KeyPrefixError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let family = if self.ipv6 { "IPv6" } else { "IPv4" };
        write!(
            f,
            "{family} key prefix /{} is out of range (at most /{})",
            self.value,
            self.max()
        )
    }
}

impl std::error::Error for KeyPrefixError {}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use http::header::{HeaderMap, HeaderName, HeaderValue};
    use ipnet::IpNet;
    use proptest::prelude::*;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    fn net(s: &str) -> IpNet {
        s.parse().expect("test network")
    }

    fn trusting(nets: &[&str]) -> ClientIp {
        ClientIp::new(TrustedProxies::new(nets.iter().map(|n| net(n))))
    }

    /// Appends one field line per `(name, value)` pair, in order.
    fn map(lines: &[(&str, &[u8])]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in lines {
            let name = HeaderName::from_bytes(name.as_bytes()).expect("test header name");
            let value = HeaderValue::from_bytes(value).expect("test header value");
            headers.append(name, value);
        }
        headers
    }

    fn xff(value: &str) -> HeaderMap {
        map(&[("x-forwarded-for", value.as_bytes())])
    }

    fn fwd(value: &str) -> HeaderMap {
        map(&[("forwarded", value.as_bytes())])
    }

    /// Deterministic pseudo-random numbers (no extra dependency).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u8 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) as u8
        }
    }

    /// Whether `ip` is written in `input`: some run of address characters (hex digits, `.`,
    /// `:`), possibly without a trailing `:port`, parses to it (both canonicalised).
    fn appears_literally(input: &[u8], ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        input
            .split(|b| !(b.is_ascii_hexdigit() || *b == b'.' || *b == b':'))
            .filter(|run| !run.is_empty())
            .any(|run| {
                let without_port = run
                    .iter()
                    .rposition(|&b| b == b':')
                    .map_or(run, |at| &run[..at]);
                [run, without_port].iter().any(|candidate| {
                    std::str::from_utf8(candidate)
                        .ok()
                        .and_then(|s| s.parse::<IpAddr>().ok())
                        .is_some_and(|parsed| parsed.to_canonical() == ip)
                })
            })
    }

    // ----- parse_xff_element -----

    #[test]
    fn xff_element_accepts_each_form() {
        let cases: &[(&str, &str)] = &[
            ("1.2.3.4", "1.2.3.4"),
            ("1.2.3.4:567", "1.2.3.4"),
            ("1.2.3.4:65535", "1.2.3.4"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:80", "2001:db8::1"),
            (" \t1.2.3.4 \t", "1.2.3.4"),
            ("  [2001:db8::1]:80 ", "2001:db8::1"),
            ("::ffff:1.2.3.4", "1.2.3.4"),
            ("[::ffff:1.2.3.4]:80", "1.2.3.4"),
            ("::ffff:102:304", "1.2.3.4"),
            ("::1", "::1"),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_xff_element(input.as_bytes()),
                Some(ip(want)),
                "{input:?}"
            );
        }
    }

    #[test]
    fn xff_element_rejects_hostile_values() {
        let long = format!("1.2.3.4{}", " ".repeat(MAX_ELEMENT_LEN));
        let cases: &[&[u8]] = &[
            b"unknown",
            b"",
            b"   ",
            b"garbage",
            b"1.2.3",
            b"1.2.3.4.5",
            b"01.2.3.4",
            b"256.1.1.1",
            b"1.2.3.4:",
            b"1.2.3.4:99999",
            b"1.2.3.4:123456",
            b"1.2.3.4:000080",
            b"1.2.3.4:8o",
            b"1.2.3.4 :80",
            b"1.2.3.4 5.6.7.8",
            b"1.2.3.4,5.6.7.8",
            b"[1.2.3.4]",
            b"[2001:db8::1",
            b"2001:db8::1]",
            b"[2001:db8::1]80",
            b"[2001:db8::1]:",
            b"[2001:db8::1]:x",
            b"fe80::1%eth0",
            b"example.com",
            b"for=1.2.3.4",
            b"\"1.2.3.4\"",
            b"1.2.3.4\xff",
            b"\xff\xfe",
            long.as_bytes(),
        ];
        for input in cases {
            assert_eq!(
                parse_xff_element(input),
                None,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    // ----- parse_forwarded_element -----

    #[test]
    fn forwarded_element_accepts_rfc_forms_and_documented_leniency() {
        let cases: &[(&str, &str)] = &[
            ("for=192.0.2.60", "192.0.2.60"),
            ("for=\"[2001:db8:cafe::17]:4711\"", "2001:db8:cafe::17"),
            ("for=\"[2001:db8:cafe::17]\"", "2001:db8:cafe::17"),
            ("for=\"192.0.2.43:47011\"", "192.0.2.43"),
            ("for=\"192.0.2.43:_hidden-port\"", "192.0.2.43"),
            ("for=\"192.0.2.43\"", "192.0.2.43"),
            ("FOR=192.0.2.60", "192.0.2.60"),
            ("For=\"192.0.2.60\"", "192.0.2.60"),
            ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
            ("proto=https; for=192.0.2.60 ;by=_lb", "192.0.2.60"),
            (" for=192.0.2.60 ", "192.0.2.60"),
            ("for=192.0.2.60;;", "192.0.2.60"),
            ("host=\"a,b;c\";for=192.0.2.60", "192.0.2.60"),
            ("for=\"[::ffff:192.0.2.60]\"", "192.0.2.60"),
            // Lenient: unquoted `:` and brackets.
            ("for=192.0.2.43:47011", "192.0.2.43"),
            ("for=[2001:db8::1]", "2001:db8::1"),
            ("for=[2001:db8::1]:80", "2001:db8::1"),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_forwarded_element(input.as_bytes()),
                Some(ip(want)),
                "{input:?}"
            );
        }
    }

    #[test]
    fn forwarded_element_rejects_hostile_values() {
        let long = format!("for=1.2.3.4;host={}", "a".repeat(MAX_ELEMENT_LEN));
        let cases: &[&[u8]] = &[
            b"",
            b"for=unknown",
            b"for=\"unknown\"",
            b"for=_hidden",
            b"for=\"_x\"",
            b"for=\"_abc\"",
            b"for=\"_abc:80\"",
            b"by=192.0.2.60",
            b"proto=http",
            b"192.0.2.60",
            b"for=",
            b"for=\"\"",
            b"for",
            b"for =192.0.2.60",
            b"for= 192.0.2.60",
            b"=192.0.2.60",
            b"for=\"192.0.2.60",
            b"for=192.0.2.60\"",
            b"for=\"192.0.2.60\"x",
            b"for=\"1.2\\\".3.4\"",
            b"for=\"\\1.2.3.4\"",
            b"host=\"a\\\"b\";for=1.2.3.4",
            // Read naively the quoted string would end at `\"` and `for` would follow.
            b"host=\"a\\\";for=1.2.3.4",
            b"for=192.0.2.60;for=192.0.2.61",
            b"for=192.0.2.60;FOR=192.0.2.61",
            b"for=192.0.2.60 junk",
            b"b@d=x;for=192.0.2.60",
            b"for=192.0.2.60 proto=http",
            b"for=\"192.0.2.60\"proto=http",
            b"for=192.0.2.60;x=a@b",
            b"for=192.0.2.60;x=\"a\"b",
            b"for=192.0.2.60, for=192.0.2.61",
            b"for=2001:db8::1",
            b"for=\"2001:db8::1\"",
            b"for=\"[2001:db8::1\"",
            b"for=\"[2001:db8::1]80\"",
            b"for=\"192.0.2.43:\"",
            b"for=\"192.0.2.43:_\"",
            b"for=\"192.0.2.43:99999\"",
            b"for=\"[192.0.2.43]\"",
            b"for=\"192.0.2.43 \"",
            b"for=\"\xff\"",
            b"for=\xff",
            b"for=example.com",
            long.as_bytes(),
        ];
        for input in cases {
            assert_eq!(
                parse_forwarded_element(input),
                None,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    // ----- RevElements -----

    fn rev(value: &[u8], forwarded: bool) -> Vec<&[u8]> {
        if forwarded {
            RevElements::forwarded(value).collect()
        } else {
            RevElements::comma_separated(value).collect()
        }
    }

    #[test]
    fn rev_elements_split_from_the_right() {
        let want: Vec<&[u8]> = vec![b" c", b" b", b"a"];
        assert_eq!(rev(b"a, b, c", false), want);
        let want: Vec<&[u8]> = vec![b"", b"", b"", b""];
        assert_eq!(rev(b",,,", false), want);
        let want: Vec<&[u8]> = vec![b""];
        assert_eq!(rev(b"", false), want);
    }

    #[test]
    fn rev_elements_forwarded_is_quote_aware() {
        let value = b"for=a;host=\"x,y\", for=b";
        let want: Vec<&[u8]> = vec![b" for=b", b"for=a;host=\"x,y\""];
        assert_eq!(rev(value, true), want);
        // The comma-separated splitter does split inside quotes.
        assert_eq!(rev(value, false).len(), 3);
    }

    #[test]
    fn rev_elements_yield_an_unsplittable_remainder_that_parsers_reject() {
        // An unterminated quote on the far left: elements to its right are still found.
        let value = b"for=\"1.1.1.1, for=2.2.2.2";
        let items = rev(value, true);
        assert_eq!(items.len(), 2);
        assert_eq!(parse_forwarded_element(items[0]), Some(ip("2.2.2.2")));
        assert_eq!(items[1], b"for=\"1.1.1.1");
        assert_eq!(parse_forwarded_element(items[1]), None);

        // A backslash: the escape cannot be interpreted from the right.
        let value = b"for=1.1.1.1;host=\"a\\\", for=2.2.2.2\"";
        let items = rev(value, true);
        assert_eq!(items, vec![&value[..]]);
        assert_eq!(parse_forwarded_element(items[0]), None);

        // Forwarded mode stops at any backslash; comma mode does not care.
        let value = b"1.1.1.1, b\\c, 2.2.2.2";
        assert_eq!(
            rev(value, true),
            vec![&b" 2.2.2.2"[..], &b"1.1.1.1, b\\c"[..]]
        );
        assert_eq!(rev(value, false).len(), 3);

        // No comma within the window: the rest is yielded whole, and is too long to parse.
        let value = format!("1.1.1.1, {}2.2.2.2", " ".repeat(MAX_ELEMENT_LEN));
        let mut items = RevElements::comma_separated(value.as_bytes());
        let first = items.next().expect("one item");
        assert_eq!(first, value.as_bytes());
        assert_eq!(parse_xff_element(first), None);
        assert_eq!(items.next(), None);
        assert_eq!(items.scanned, MAX_ELEMENT_LEN + 1);
    }

    // ----- resolve: spoofing -----

    #[test]
    fn untrusted_peer_cannot_spoof() {
        let r = trusting(&["10.0.0.0/8"]);
        let headers = map(&[
            ("x-forwarded-for", b"1.2.3.4"),
            ("forwarded", b"for=1.2.3.4"),
            ("x-real-ip", b"1.2.3.4"),
        ]);
        assert_eq!(r.resolve(ip("203.0.113.9"), &headers), ip("203.0.113.9"));
    }

    #[test]
    fn nothing_trusted_means_the_peer() {
        let r = ClientIp::default();
        assert_eq!(r.resolve(ip("10.0.0.1"), &xff("1.2.3.4")), ip("10.0.0.1"));
        let r = ClientIp::new(TrustedProxies::none());
        assert_eq!(r.resolve(ip("10.0.0.1"), &xff("1.2.3.4")), ip("10.0.0.1"));
    }

    #[test]
    fn trusted_peer_forwards_the_client() {
        let r = trusting(&["10.0.0.0/8"]);
        let got = r.resolve(ip("10.0.0.1"), &xff("1.2.3.4, 10.0.0.2"));
        assert_eq!(got, ip("1.2.3.4"));
    }

    #[test]
    fn rightmost_untrusted_wins_not_leftmost() {
        let r = trusting(&["10.0.0.0/8"]);
        let got = r.resolve(ip("10.0.0.1"), &xff("6.6.6.6, 1.2.3.4"));
        assert_eq!(got, ip("1.2.3.4"));
        let got = r.resolve(ip("10.0.0.1"), &fwd("for=6.6.6.6, for=1.2.3.4"));
        assert_eq!(got, ip("1.2.3.4"));
    }

    #[test]
    fn forwarded_is_preferred_over_xff() {
        let r = trusting(&["10.0.0.0/8"]);
        let headers = map(&[
            ("x-forwarded-for", b"7.7.7.7"),
            ("forwarded", b"for=8.8.8.8"),
            ("x-real-ip", b"9.9.9.9"),
        ]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &headers), ip("8.8.8.8"));
        // XFF beats X-Real-IP.
        let headers = map(&[("x-real-ip", b"9.9.9.9"), ("x-forwarded-for", b"7.7.7.7")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &headers), ip("7.7.7.7"));
    }

    #[test]
    fn only_the_first_present_header_is_read() {
        let r = trusting(&["10.0.0.0/8"]);
        // A broken Forwarded does not fall through to X-Forwarded-For.
        let headers = map(&[
            ("forwarded", b"for=unknown"),
            ("x-forwarded-for", b"7.7.7.7"),
        ]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &headers), ip("10.0.0.1"));
    }

    #[test]
    fn configured_headers_and_order() {
        let headers = map(&[
            ("forwarded", b"for=8.8.8.8"),
            ("x-forwarded-for", b"7.7.7.7"),
            ("x-real-ip", b"9.9.9.9"),
        ]);
        let peer = ip("10.0.0.1");
        let r = trusting(&["10.0.0.0/8"]);

        let xff_only = r.clone().headers([ForwardingHeader::XForwardedFor]);
        assert_eq!(xff_only.resolve(peer, &headers), ip("7.7.7.7"));

        let real_first = r.clone().headers([
            ForwardingHeader::XRealIp,
            ForwardingHeader::Forwarded,
            ForwardingHeader::XRealIp,
        ]);
        assert_eq!(
            real_first.headers,
            [ForwardingHeader::XRealIp, ForwardingHeader::Forwarded]
        );
        assert_eq!(real_first.resolve(peer, &headers), ip("9.9.9.9"));

        let none = r.clone().headers([]);
        assert_eq!(none.resolve(peer, &headers), peer);

        // A configured header that is absent falls through to the next one.
        let headers = map(&[("x-real-ip", b"9.9.9.9")]);
        assert_eq!(r.resolve(peer, &headers), ip("9.9.9.9"));
    }

    #[test]
    fn trusted_peer_without_header_is_the_client() {
        let r = trusting(&["10.0.0.0/8"]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        let unrelated = map(&[("x-forwarded-host", b"1.2.3.4")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &unrelated), ip("10.0.0.1"));
    }

    #[test]
    fn all_trusted_means_the_leftmost() {
        let r = trusting(&["10.0.0.0/8"]);
        let got = r.resolve(ip("10.0.0.1"), &xff("10.0.0.5, 10.0.0.4, 10.0.0.3"));
        assert_eq!(got, ip("10.0.0.5"));
    }

    // ----- resolve: hostile values fall back to the last trusted view -----

    #[test]
    fn hostile_xff_elements_stop_at_the_last_trusted_hop() {
        let r = trusting(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let hostile: &[&[u8]] = &[
            b"unknown",
            b"",
            b"garbage",
            b"\xff\xfe",
            b"1.2.3.4:99999",
            b"for=1.2.3.4",
        ];
        for bad in hostile {
            let mut value = b"9.9.9.9, ".to_vec();
            value.extend_from_slice(bad);
            value.extend_from_slice(b", 10.0.0.7");
            let headers = map(&[("x-forwarded-for", &value)]);
            assert_eq!(
                r.resolve(peer, &headers),
                ip("10.0.0.7"),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
            // Alone, the peer is the client.
            let headers = map(&[("x-forwarded-for", bad)]);
            assert_eq!(r.resolve(peer, &headers), peer);
        }
        assert_eq!(r.resolve(peer, &xff(",,,")), peer);
        assert_eq!(r.resolve(peer, &xff("1.2.3.4,")), peer);
        // Garbage further left than the first untrusted address does not matter.
        assert_eq!(r.resolve(peer, &xff("garbage, 1.2.3.4")), ip("1.2.3.4"));
        let headers = map(&[("x-forwarded-for", b"\xff, 1.2.3.4")]);
        assert_eq!(r.resolve(peer, &headers), ip("1.2.3.4"));
    }

    #[test]
    fn hostile_forwarded_elements_stop_at_the_last_trusted_hop() {
        let r = trusting(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let hostile = [
            "for=unknown",
            "for=_hidden",
            "for=\"_x\"",
            "for=\"_abc\"",
            "by=1.2.3.4",
            "",
            "for=\"1.2\\\".3.4\"",
            "for=2001:db8::1",
            "for=\"1.2.3.4",
        ];
        for bad in hostile {
            let value = format!("for=9.9.9.9, {bad}, for=10.0.0.7");
            assert_eq!(r.resolve(peer, &fwd(&value)), ip("10.0.0.7"), "{bad:?}");
            assert_eq!(r.resolve(peer, &fwd(bad)), peer, "{bad:?}");
        }
        let headers = map(&[("forwarded", b"for=\"\xff\", for=10.0.0.7")]);
        assert_eq!(r.resolve(peer, &headers), ip("10.0.0.7"));
        // An unterminated quote on the left does not hide what trusted hops appended.
        let got = r.resolve(peer, &fwd("for=\"6.6.6.6, for=1.2.3.4"));
        assert_eq!(got, ip("1.2.3.4"));
        let got = r.resolve(peer, &fwd("for=\"6.6.6.6, for=10.0.0.9"));
        assert_eq!(got, ip("10.0.0.9"));
    }

    #[test]
    fn uppercase_for_and_quoted_forms_resolve() {
        let r = trusting(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let value = "FOR=\"[2001:db8:cafe::17]:4711\";Proto=https, for=\"10.0.0.2:47011\"";
        assert_eq!(r.resolve(peer, &fwd(value)), ip("2001:db8:cafe::17"));
    }

    #[test]
    fn brackets_with_port_in_xff() {
        let r = trusting(&["10.0.0.0/8", "fd00::/8"]);
        let got = r.resolve(ip("fd00::1"), &xff("[2001:db8::5]:443, [fd00::2]:80"));
        assert_eq!(got, ip("2001:db8::5"));
    }

    #[test]
    fn multiple_field_lines_walk_last_line_last() {
        let r = trusting(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let headers = map(&[
            ("x-forwarded-for", b"6.6.6.6, 1.1.1.1"),
            ("x-forwarded-for", b"10.0.0.3"),
        ]);
        assert_eq!(r.resolve(peer, &headers), ip("1.1.1.1"));
        let headers = map(&[
            ("x-forwarded-for", b"1.1.1.1"),
            ("x-forwarded-for", b"2.2.2.2"),
        ]);
        assert_eq!(r.resolve(peer, &headers), ip("2.2.2.2"));
        let headers = map(&[
            ("forwarded", b"for=1.1.1.1"),
            ("forwarded", b"for=10.0.0.4"),
            ("forwarded", b"for=10.0.0.3"),
        ]);
        assert_eq!(r.resolve(peer, &headers), ip("1.1.1.1"));
        // An empty line is an empty element: stop at the nearest trusted hop.
        let headers = map(&[
            ("x-forwarded-for", b"1.1.1.1"),
            ("x-forwarded-for", b""),
            ("x-forwarded-for", b"10.0.0.3"),
        ]);
        assert_eq!(r.resolve(peer, &headers), ip("10.0.0.3"));
    }

    #[test]
    fn x_real_ip_is_one_line_with_one_address() {
        let r = trusting(&["10.0.0.0/8"]).headers([ForwardingHeader::XRealIp]);
        let peer = ip("10.0.0.1");
        let one = |v: &[u8]| map(&[("x-real-ip", v)]);
        assert_eq!(r.resolve(peer, &one(b"1.2.3.4")), ip("1.2.3.4"));
        assert_eq!(
            r.resolve(peer, &one(b" [2001:db8::1]:80 ")),
            ip("2001:db8::1")
        );
        // A trusted value is still the client: nothing further was forwarded.
        assert_eq!(r.resolve(peer, &one(b"10.9.9.9")), ip("10.9.9.9"));
        assert_eq!(r.resolve(peer, &one(b"1.2.3.4, 5.6.7.8")), peer);
        assert_eq!(r.resolve(peer, &one(b"unknown")), peer);
        assert_eq!(r.resolve(peer, &one(b"")), peer);
        let two = map(&[("x-real-ip", b"1.2.3.4"), ("x-real-ip", b"5.6.7.8")]);
        assert_eq!(r.resolve(peer, &two), peer);
        assert_eq!(r.clone().max_hops(0).resolve(peer, &one(b"1.2.3.4")), peer);
    }

    // ----- IPv4-mapped IPv6 -----

    #[test]
    fn ipv4_mapped_is_ipv4_everywhere() {
        let r = trusting(&["10.0.0.0/8"]);
        // Mapped peer, trusted through the IPv4 range.
        let got = r.resolve(ip("::ffff:10.0.0.1"), &xff("[::ffff:1.2.3.4]:80"));
        assert_eq!(got, ip("1.2.3.4"));
        assert!(got.is_ipv4());
        // Mapped header values are trusted through the IPv4 range too.
        let got = r.resolve(ip("10.0.0.1"), &xff("1.2.3.4, ::ffff:10.0.0.2"));
        assert_eq!(got, ip("1.2.3.4"));
        // An untrusted mapped peer comes back as IPv4.
        let got = r.resolve(ip("::ffff:203.0.113.9"), &xff("1.2.3.4"));
        assert_eq!(got, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)));
        // A mapped trusted range is the IPv4 range.
        let r = trusting(&["::ffff:10.0.0.0/104"]);
        assert_eq!(r.trusted().iter().collect::<Vec<_>>(), [net("10.0.0.0/8")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &xff("1.2.3.4")), ip("1.2.3.4"));
    }

    #[test]
    fn wide_ipv6_ranges_do_not_trust_ipv4() {
        let t = TrustedProxies::new([net("::/0")]);
        assert!(t.contains(ip("2001:db8::1")));
        assert!(!t.contains(ip("10.0.0.1")));
        assert!(!t.contains(ip("::ffff:10.0.0.1")));
    }

    #[test]
    fn trusted_proxies_normalise() {
        let t: TrustedProxies = [net("10.1.2.3/8"), net("10.0.0.0/8"), net("fd00::1/8")]
            .into_iter()
            .collect();
        assert_eq!(
            t.iter().collect::<Vec<_>>(),
            [net("10.0.0.0/8"), net("fd00::/8")]
        );
        assert!(t.contains(ip("10.255.0.1")));
        assert!(!t.contains(ip("11.0.0.1")));
        assert!(!t.is_empty());
        assert!(TrustedProxies::none().is_empty());
        assert!(!TrustedProxies::none().contains(ip("10.0.0.1")));
    }

    // ----- work bounds -----

    fn random_trusted_chain(rng: &mut Lcg, bytes: usize) -> Vec<String> {
        let mut chain = Vec::new();
        let mut len = 0;
        while len < bytes {
            let hop = format!("10.{}.{}.{}", rng.next(), rng.next(), rng.next());
            len += hop.len() + 2;
            chain.push(hop);
        }
        chain
    }

    #[test]
    fn ten_kilobyte_header_costs_at_most_max_hops() {
        let r = trusting(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let mut rng = Lcg(7);
        // The nearest 40 hops are fixed; everything left of them differs per request.
        let near = random_trusted_chain(&mut rng, 40 * 20);
        let near = &near[..40];
        let mut results = Vec::new();
        for seed in 0..4 {
            let mut rng = Lcg(seed);
            let mut chain = vec![format!("203.0.113.{}", rng.next())];
            chain.extend(random_trusted_chain(&mut rng, 10 * 1024));
            chain.extend(near.iter().cloned());
            let value = chain.join(", ");
            assert!(value.len() > 10 * 1024);
            let walk = r.walk(peer, &xff(&value));
            assert_eq!(walk.hops, DEFAULT_MAX_HOPS);
            assert!(walk.scanned <= DEFAULT_MAX_HOPS * (MAX_ELEMENT_LEN + 1));
            // Exactly the 32nd hop from the right, never the client-chosen leftmost.
            assert_eq!(walk.client, ip(&chain[chain.len() - DEFAULT_MAX_HOPS]));
            results.push(walk.client);
        }
        assert!(results.windows(2).all(|w| w[0] == w[1]), "{results:?}");

        // Same bound with Forwarded.
        let mut rng = Lcg(99);
        let value = random_trusted_chain(&mut rng, 10 * 1024)
            .iter()
            .map(|hop| format!("for={hop};proto=https"))
            .collect::<Vec<_>>()
            .join(",");
        let walk = r.walk(peer, &fwd(&value));
        assert_eq!(walk.hops, DEFAULT_MAX_HOPS);
        assert!(walk.scanned <= DEFAULT_MAX_HOPS * (MAX_ELEMENT_LEN + 1));
    }

    #[test]
    fn ten_kilobyte_list_of_random_addresses_resolves_to_the_nearest_untrusted() {
        let r = trusting(&["10.0.0.0/8"]);
        let mut rng = Lcg(3);
        let mut chain = Vec::new();
        while chain.iter().map(|h: &String| h.len() + 1).sum::<usize>() < 10 * 1024 {
            chain.push(format!(
                "{}.{}.{}.{}",
                rng.next() | 1,
                rng.next(),
                rng.next(),
                rng.next()
            ));
        }
        let nearest_untrusted = chain
            .iter()
            .rev()
            .map(|h| ip(h))
            .find(|a| !r.trusted().contains(*a))
            .expect("some untrusted");
        let walk = r.walk(ip("10.0.0.1"), &xff(&chain.join(",")));
        assert_eq!(walk.client, nearest_untrusted);
        assert!(walk.hops <= DEFAULT_MAX_HOPS);
    }

    #[test]
    fn a_single_huge_element_is_scanned_only_within_the_window() {
        let r = trusting(&["10.0.0.0/8"]);
        let peer = ip("10.0.0.1");
        let value = "9".repeat(10 * 1024);
        let walk = r.walk(peer, &xff(&value));
        assert_eq!(walk.client, peer);
        assert!(walk.scanned <= MAX_ELEMENT_LEN + 1);
        // A quote at the far left of a Forwarded value is never reached.
        let value = format!("\"{}, for=1.2.3.4", "x".repeat(10 * 1024));
        let walk = r.walk(peer, &fwd(&value));
        assert_eq!(walk.client, ip("1.2.3.4"));
        assert!(walk.scanned < 64);
    }

    #[test]
    fn many_field_lines_are_bounded_too() {
        let r = trusting(&["10.0.0.0/8"]);
        let lines: Vec<(&str, &[u8])> = (0..1000)
            .map(|_| ("x-forwarded-for", &b"10.0.0.9"[..]))
            .collect();
        let walk = r.walk(ip("10.0.0.1"), &map(&lines));
        assert_eq!(walk.hops, DEFAULT_MAX_HOPS);
        assert_eq!(walk.client, ip("10.0.0.9"));
    }

    #[test]
    fn max_hops_limits_the_walk() {
        let peer = ip("10.0.0.1");
        let headers = xff("1.1.1.1, 10.0.0.4, 10.0.0.3, 10.0.0.2");
        let r = trusting(&["10.0.0.0/8"]);
        assert_eq!(r.resolve(peer, &headers), ip("1.1.1.1"));
        assert_eq!(r.clone().max_hops(4).resolve(peer, &headers), ip("1.1.1.1"));
        assert_eq!(
            r.clone().max_hops(3).resolve(peer, &headers),
            ip("10.0.0.4")
        );
        assert_eq!(
            r.clone().max_hops(1).resolve(peer, &headers),
            ip("10.0.0.2")
        );
        assert_eq!(r.clone().max_hops(0).resolve(peer, &headers), peer);
    }

    // ----- KeyPrefix -----

    #[test]
    fn key_prefix_rejects_out_of_range_lengths() {
        let err = KeyPrefix::new(33, 64).expect_err("v4 33");
        assert_eq!((err.value(), err.is_ipv6(), err.max()), (33, false, 32));
        assert!(err.to_string().contains("/33"), "{err}");
        assert!(err.to_string().contains("IPv4"), "{err}");
        let err = KeyPrefix::new(32, 129).expect_err("v6 129");
        assert_eq!((err.value(), err.is_ipv6(), err.max()), (129, true, 128));
        assert!(err.to_string().contains("/129"), "{err}");
        let ok = KeyPrefix::new(32, 128).expect("in range");
        assert_eq!((ok.v4(), ok.v6()), (32, 128));
        assert_eq!(
            KeyPrefix::default(),
            KeyPrefix::new(32, 64).expect("default")
        );
    }

    #[test]
    fn key_prefix_masks() {
        let p = KeyPrefix::default();
        assert_eq!(p.apply(ip("192.0.2.77")), ip("192.0.2.77"));
        assert_eq!(p.apply(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(p.apply(ip("::ffff:192.0.2.77")), ip("192.0.2.77"));
        let p = KeyPrefix::new(24, 48).expect("valid");
        assert_eq!(p.apply(ip("192.0.2.77")), ip("192.0.2.0"));
        assert_eq!(p.apply(ip("2001:db8:1:2::1")), ip("2001:db8:1::"));
        let p = KeyPrefix::new(0, 0).expect("valid");
        assert_eq!(p.apply(ip("192.0.2.77")), ip("0.0.0.0"));
        assert_eq!(p.apply(ip("2001:db8::1")), ip("::"));
        let p = KeyPrefix::new(32, 128).expect("valid");
        assert_eq!(p.apply(ip("2001:db8::1")), ip("2001:db8::1"));
    }

    // ----- property tests -----

    /// A piece of a header value: a well-formed address in some form, or junk.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        let v4 = any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string());
        let v6 = any::<u128>().prop_map(|b| Ipv6Addr::from_bits(b).to_string());
        let addr = prop_oneof![
            v4.clone(),
            v4.clone().prop_map(|a| format!("{a}:80")),
            v4.clone().prop_map(|a| format!("::ffff:{a}")),
            v6.clone(),
            v6.clone().prop_map(|a| format!("[{a}]:443")),
            v4.clone().prop_map(|a| format!("for={a}")),
            v4.prop_map(|a| format!("for=\"{a}:1\"")),
            v6.prop_map(|a| format!("FOR=\"[{a}]\"")),
        ]
        .prop_map(String::into_bytes);
        let junk = prop::sample::select(vec![
            ",",
            ", ",
            ";",
            "\"",
            "\\",
            "=",
            "[",
            "]",
            ":",
            " ",
            "\t",
            "for=",
            "unknown",
            "_x",
            "10.0.0.2",
            "::ffff:",
            "proto=http;",
        ])
        .prop_map(|s| s.as_bytes().to_vec());
        let bytes = prop::collection::vec(any::<u8>(), 0..6);
        prop_oneof![3 => addr, 4 => junk, 1 => bytes]
    }

    /// A header value made of pieces, with bytes a `HeaderValue` cannot hold replaced.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(piece(), 0..10).prop_map(|pieces| {
            let mut v = pieces.concat();
            for b in &mut v {
                if (*b < 0x20 && *b != b'\t') || *b == 0x7f {
                    *b = b'x';
                }
            }
            v
        })
    }

    proptest! {
        #[test]
        fn parsers_never_invent_addresses(bytes in prop::collection::vec(any::<u8>(), 0..64), v in value()) {
            for input in [&bytes, &v] {
                for got in [parse_xff_element(input), parse_forwarded_element(input)].into_iter().flatten() {
                    prop_assert!(appears_literally(input, got), "{got} from {:?}", String::from_utf8_lossy(input));
                }
            }
        }

        #[test]
        fn comma_split_reassembles_short_values(v in value()) {
            prop_assume!(v.len() <= MAX_ELEMENT_LEN);
            let mut parts: Vec<&[u8]> = RevElements::comma_separated(&v).collect();
            parts.reverse();
            prop_assert_eq!(parts.join(&b","[..]), v);
        }

        #[test]
        fn resolve_returns_the_peer_or_a_literal_address(
            fwd_lines in prop::collection::vec(value(), 0..3),
            xff_lines in prop::collection::vec(value(), 0..3),
            real_lines in prop::collection::vec(value(), 0..2),
            trust_all in any::<bool>(),
            order in prop::sample::subsequence(ForwardingHeader::DEFAULT_ORDER.to_vec(), 0..=3).prop_shuffle(),
            max_hops in 0usize..40,
        ) {
            let nets: &[&str] = if trust_all { &["0.0.0.0/0", "::/0"] } else { &["10.0.0.0/8", "2001:db8::/32"] };
            let r = trusting(nets).headers(order).max_hops(max_hops);
            let peer = ip("10.0.0.1");
            let mut headers = HeaderMap::new();
            let mut all = Vec::new();
            for (name, lines) in [("forwarded", &fwd_lines), ("x-forwarded-for", &xff_lines), ("x-real-ip", &real_lines)] {
                for line in lines {
                    let value = HeaderValue::from_bytes(line).expect("sanitised");
                    headers.append(HeaderName::from_static(name), value);
                    all.extend_from_slice(line);
                    all.push(b'\n');
                }
            }
            let walk = r.walk(peer, &headers);
            prop_assert!(walk.client == peer || appears_literally(&all, walk.client),
                "{} from {:?}", walk.client, String::from_utf8_lossy(&all));
            prop_assert!(walk.hops <= max_hops);
            prop_assert!(walk.scanned <= max_hops * (MAX_ELEMENT_LEN + 1));
        }
    }

    /// Addresses that chains and trusted sets are drawn from, so that both overlap often.
    fn pool() -> Vec<IpAddr> {
        [
            "10.0.0.1",
            "10.0.0.2",
            "10.0.0.3",
            "10.9.9.9",
            "192.0.2.1",
            "192.0.2.2",
            "198.51.100.7",
            "2001:db8::1",
            "2001:db8::2",
            "2001:db8:1::5",
            "fd00::1",
            "fd00::2",
        ]
        .iter()
        .map(|s| ip(s))
        .collect()
    }

    fn format_xff(addr: IpAddr, form: u8) -> String {
        match (addr, form % 4) {
            (IpAddr::V4(a), 0) => a.to_string(),
            (IpAddr::V4(a), 1) => format!("{a}:5{form}"),
            (IpAddr::V4(a), 2) => format!("::ffff:{a}"),
            (IpAddr::V4(a), _) => format!("[::ffff:{a}]:80"),
            (IpAddr::V6(a), 0) => a.to_string(),
            (IpAddr::V6(a), 1) => format!("[{a}]"),
            (IpAddr::V6(a), _) => format!("[{a}]:4{form}"),
        }
    }

    fn format_forwarded(addr: IpAddr, form: u8) -> String {
        let node = match (addr, form % 3) {
            (IpAddr::V4(a), 0) => a.to_string(),
            (IpAddr::V4(a), 1) => format!("\"{a}:47011\""),
            (IpAddr::V4(a), _) => format!("\"{a}:_p\""),
            (IpAddr::V6(a), 0) => format!("\"[{a}]\""),
            (IpAddr::V6(a), _) => format!("\"[{a}]:4711\""),
        };
        match form % 4 {
            0 => format!("for={node}"),
            1 => format!("FOR={node};proto=https"),
            2 => format!("by=_lb; For={node}"),
            _ => format!("host=\"a,b\";for={node}"),
        }
    }

    /// The rules, written the obvious way.
    fn reference(peer: IpAddr, chain: &[IpAddr], nets: &[IpNet], max_hops: usize) -> IpAddr {
        let trusted = |a: IpAddr| nets.iter().any(|n| n.contains(&a));
        if !trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for &hop in chain.iter().rev().take(max_hops) {
            client = hop;
            if !trusted(hop) {
                break;
            }
        }
        client
    }

    proptest! {
        #[test]
        fn resolve_matches_the_reference(
            chain in prop::collection::vec((0usize..12, any::<u8>()), 0..40),
            trusted in prop::collection::vec(0usize..12, 0..8),
            trust_ten in any::<bool>(),
            peer in 0usize..12,
            cuts in prop::collection::vec(any::<bool>(), 40),
            forwarded in any::<bool>(),
            max_hops in 1usize..40,
        ) {
            let pool = pool();
            let mut nets: Vec<IpNet> = trusted.iter().map(|&i| IpNet::from(pool[i])).collect();
            if trust_ten {
                nets.push(net("10.0.0.0/8"));
            }
            let addrs: Vec<IpAddr> = chain.iter().map(|&(i, _)| pool[i]).collect();

            // Lay the chain out over one or more field lines.
            let mut lines: Vec<String> = Vec::new();
            let mut line = Vec::new();
            for (k, &(i, form)) in chain.iter().enumerate() {
                line.push(if forwarded { format_forwarded(pool[i], form) } else { format_xff(pool[i], form) });
                if cuts[k] || k + 1 == chain.len() {
                    lines.push(line.join(if form % 2 == 0 { ", " } else { "," }));
                    line.clear();
                }
            }
            let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
            let headers = map(&lines.iter().map(|l| (name, l.as_bytes())).collect::<Vec<_>>());

            let r = ClientIp::new(TrustedProxies::new(nets.iter().copied())).max_hops(max_hops);
            let got = r.resolve(pool[peer], &headers);
            prop_assert_eq!(got, reference(pool[peer], &addrs, &nets, max_hops), "lines {:?}", lines);
        }

        #[test]
        fn key_prefix_properties(
            v4 in any::<u32>(),
            v6 in any::<u128>(),
            other_low in any::<u64>(),
            len4 in 0u8..=32,
            len6 in 0u8..=128,
        ) {
            let p = KeyPrefix::new(len4, len6).expect("in range");
            let a4 = IpAddr::V4(Ipv4Addr::from_bits(v4));
            let a6 = IpAddr::V6(Ipv6Addr::from_bits(v6));
            for a in [a4, a6] {
                let key = p.apply(a);
                prop_assert_eq!(p.apply(key), key);
                let len = if a.is_ipv4() { len4 } else { len6 };
                let prefix = IpNet::new(a.to_canonical(), len).expect("valid").trunc();
                prop_assert!(prefix.contains(&key) && prefix.network() == key);
            }
            // Mapped IPv4 is IPv4.
            let mapped = IpAddr::V6(Ipv4Addr::from_bits(v4).to_ipv6_mapped());
            prop_assert_eq!(p.apply(mapped), p.apply(a4));
            // Same /64, same default key; a different /64, a different key.
            let d = KeyPrefix::default();
            let same = (v6 & !u128::from(u64::MAX)) | u128::from(other_low);
            prop_assert_eq!(d.apply(a6), d.apply(IpAddr::V6(Ipv6Addr::from_bits(same))));
            let elsewhere = v6 ^ (1u128 << 64);
            prop_assert_ne!(d.apply(a6), d.apply(IpAddr::V6(Ipv6Addr::from_bits(elsewhere))));
        }
    }
}
