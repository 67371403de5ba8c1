//! Splitting forwarding header values into elements from the right, and parsing one element
//! into an address: the byte-level half of [`ClientIp`](super::ClientIp)'s walk.
//!
//! Public only through the hidden [`internal`](crate::internal) module, for the fuzz target;
//! applications use [`ClientIp`](super::ClientIp).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::MAX_ELEMENT_LEN;

// ===== element splitting =====

/// The comma-separated elements of one header field line, **rightmost first**.
///
/// Each item is the raw bytes between two commas, optional whitespace included. In
/// [`forwarded`](Self::forwarded) mode a comma inside a quoted string does not split.
///
/// Finding an element's left edge scans at most `MAX_ELEMENT_LEN + 1` bytes
/// ([`MAX_ELEMENT_LEN`]). When the
/// remainder cannot be split safely — no comma within that window, a quoted string left open
/// at the start of the value, or (in `forwarded` mode) a backslash, whose escape meaning cannot
/// be known when reading from the right — the whole unsplit remainder is yielded as one last
/// item and the iterator ends. That item is always rejected by [`parse_xff_element`] and
/// [`parse_forwarded_element`] (it is longer than [`MAX_ELEMENT_LEN`], has an unbalanced quote,
/// or contains a backslash), so a walk stops there.
///
/// An empty value yields one empty element; `a,` yields `""` then `a`.
#[derive(Debug, Clone)]
pub struct RevElements<'a> {
    /// The part of the value not yielded yet; `None` when done.
    rest: Option<&'a [u8]>,
    quoted: bool,
    /// Bytes examined so far (for the work-bound tests).
    pub(super) scanned: usize,
}

impl<'a> RevElements<'a> {
    /// Splits on every comma (`X-Forwarded-For`).
    #[must_use]
    pub fn comma_separated(value: &'a [u8]) -> Self {
        Self {
            rest: Some(value),
            quoted: false,
            scanned: 0,
        }
    }

    /// Splits on commas outside quoted strings (`Forwarded`, RFC 7239).
    #[must_use]
    pub fn forwarded(value: &'a [u8]) -> Self {
        Self {
            rest: Some(value),
            quoted: true,
            scanned: 0,
        }
    }
}

impl<'a> Iterator for RevElements<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest?;
        let window_start = rest.len().saturating_sub(MAX_ELEMENT_LEN + 1);
        let mut in_quote = false;
        let mut i = rest.len();
        while i > window_start {
            i -= 1;
            match rest.get(i) {
                Some(b',') if !in_quote => {
                    self.scanned += rest.len() - i;
                    self.rest = Some(rest.get(..i).unwrap_or_default());
                    return Some(rest.get(i + 1..).unwrap_or_default());
                }
                Some(b'"') if self.quoted => in_quote = !in_quote,
                Some(b'\\') if self.quoted => {
                    self.scanned += rest.len() - i;
                    self.rest = None;
                    return Some(rest);
                }
                _ => {}
            }
        }
        // The leftmost element, or a remainder that cannot be split (see the type docs).
        self.scanned += rest.len() - window_start;
        self.rest = None;
        Some(rest)
    }
}

impl std::iter::FusedIterator for RevElements<'_> {}

// ===== element parsing =====

/// Parses one `X-Forwarded-For` element (or an `X-Real-IP` value) into an address.
///
/// Accepts, with optional surrounding spaces and tabs: `192.0.2.1`, `192.0.2.1:8080`,
/// `2001:db8::1`, `[2001:db8::1]` and `[2001:db8::1]:8080`. Ports must be 1–5 digits, at most
/// 65535. IPv4-mapped IPv6 is returned as IPv4.
///
/// Returns `None` for anything that is not a usable address: `unknown`, empty, hostnames,
/// zone ids (`fe80::1%eth0`), leading-zero IPv4 octets, invalid UTF-8, more than one address,
/// or more than [`MAX_ELEMENT_LEN`] bytes.
#[must_use]
pub fn parse_xff_element(element: &[u8]) -> Option<IpAddr> {
    if element.len() > MAX_ELEMENT_LEN {
        return None;
    }
    let node = trim_ows(element);
    if let Some(inner) = node.strip_prefix(b"[") {
        let (addr, port) = split_bracketed(inner)?;
        if port.is_some_and(|p| !is_port(p)) {
            return None;
        }
        return parse_v6(addr);
    }
    match node.iter().filter(|&&b| b == b':').count() {
        0 => parse_v4(node),
        1 => {
            let (addr, port) = split_once(node, b':')?;
            if is_port(port) { parse_v4(addr) } else { None }
        }
        _ => parse_v6(node),
    }
}

/// Parses the `for` parameter of one `Forwarded` element (RFC 7239) into an address.
///
/// The element is a `;`-separated list of `name=value` pairs (names case-insensitive, values a
/// token or a quoted string, optional whitespace around pairs). The `for` value must be an
/// IPv4 address or a bracketed IPv6 address, optionally followed by `:port` (digits, or an
/// obfuscated `_port`): `for=192.0.2.60`, `for="192.0.2.43:47011"`,
/// `for="[2001:db8:cafe::17]:4711"`. IPv4-mapped IPv6 is returned as IPv4.
///
/// Leniency: RFC 7239 requires quoting a value containing `:` or `[`; this parser also accepts
/// those unquoted (`for=[2001:db8::1]:80`, `for=192.0.2.43:47011`), as several proxies emit
/// them. Unbracketed IPv6 (`for=2001:db8::1` or `for="2001:db8::1"`) is *not* accepted: it is
/// ambiguous with a port and the RFC forbids it.
///
/// Returns `None` for anything that is not a usable address: no `for` parameter, a repeated
/// `for`, `for=unknown`, obfuscated identifiers (`for=_hidden`, `for="_abc"`), malformed pairs,
/// an unterminated quoted string, any backslash (an address never contains a quoted-pair, and
/// escapes are not interpreted), invalid UTF-8 in the value, or more than [`MAX_ELEMENT_LEN`]
/// bytes.
#[must_use]
pub fn parse_forwarded_element(element: &[u8]) -> Option<IpAddr> {
    if element.len() > MAX_ELEMENT_LEN || element.contains(&b'\\') {
        return None;
    }
    let mut rest = element;
    let mut for_value: Option<&[u8]> = None;
    loop {
        rest = trim_start_ows(rest);
        let Some((&first, after)) = rest.split_first() else {
            break;
        };
        if first == b';' {
            // An empty pair is allowed by the grammar.
            rest = after;
            continue;
        }
        let name_len = rest.iter().take_while(|&&b| is_tchar(b)).count();
        if name_len == 0 {
            return None;
        }
        let (name, after_name) = rest.split_at(name_len);
        let after_eq = after_name.strip_prefix(b"=")?;
        let (value, after_value) = if let Some(quoted) = after_eq.strip_prefix(b"\"") {
            let (value, after) = split_once(quoted, b'"')?;
            (value, after)
        } else {
            let len = after_eq.iter().take_while(|&&b| is_token_value(b)).count();
            if len == 0 {
                return None;
            }
            after_eq.split_at(len)
        };
        if name.eq_ignore_ascii_case(b"for") {
            if for_value.is_some() {
                return None;
            }
            for_value = Some(value);
        }
        rest = trim_start_ows(after_value);
        match rest.split_first() {
            None => break,
            Some((b';', after)) => rest = after,
            Some(_) => return None,
        }
    }
    parse_forwarded_node(for_value?)
}

/// `nodename [ ":" node-port ]` where nodename is IPv4 or `[IPv6]`.
fn parse_forwarded_node(node: &[u8]) -> Option<IpAddr> {
    let (addr, port, bracketed) = match node.strip_prefix(b"[") {
        Some(inner) => {
            let (addr, port) = split_bracketed(inner)?;
            (addr, port, true)
        }
        None => match split_once(node, b':') {
            Some((addr, port)) => (addr, Some(port), false),
            None => (node, None, false),
        },
    };
    if port.is_some_and(|p| !is_port(p) && !is_obfport(p)) {
        return None;
    }
    if bracketed {
        parse_v6(addr)
    } else {
        parse_v4(addr)
    }
}

/// After a `[`: the address up to `]`, and the port after an optional `:`.
fn split_bracketed(inner: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let (addr, after) = split_once(inner, b']')?;
    match after.split_first() {
        None => Some((addr, None)),
        Some((b':', port)) => Some((addr, Some(port))),
        Some(_) => None,
    }
}

fn split_once(bytes: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|&b| b == sep)?;
    let (head, tail) = bytes.split_at(at);
    Some((head, tail.get(1..).unwrap_or_default()))
}

fn parse_v4(bytes: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

fn parse_v6(bytes: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.parse::<Ipv6Addr>()
        .ok()
        .map(|ip| IpAddr::V6(ip).to_canonical())
}

/// 1–5 digits, at most 65535.
fn is_port(bytes: &[u8]) -> bool {
    (1..=5).contains(&bytes.len())
        && bytes.iter().all(u8::is_ascii_digit)
        && bytes
            .iter()
            .fold(0u32, |n, &d| n * 10 + u32::from(d - b'0'))
            <= 65535
}

/// RFC 7239 `obfport = "_" 1*(ALPHA / DIGIT / "." / "_" / "-")`.
fn is_obfport(bytes: &[u8]) -> bool {
    match bytes.split_first() {
        Some((b'_', rest)) => {
            !rest.is_empty()
                && rest
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        _ => false,
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A token value, leniently also allowing the `[`, `]` and `:` of an unquoted node.
fn is_token_value(b: u8) -> bool {
    is_tchar(b) || matches!(b, b'[' | b']' | b':')
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_start_ows(bytes: &[u8]) -> &[u8] {
    let skip = bytes.iter().take_while(|&&b| is_ows(b)).count();
    bytes.get(skip..).unwrap_or_default()
}

fn trim_ows(bytes: &[u8]) -> &[u8] {
    let bytes = trim_start_ows(bytes);
    let keep = bytes.len() - bytes.iter().rev().take_while(|&&b| is_ows(b)).count();
    bytes.get(..keep).unwrap_or_default()
}
