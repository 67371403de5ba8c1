//! The v1 text header: `PROXY TCP4 <source> <destination> <source port> <destination port>\r\n`
//! (or `TCP6`, or `UNKNOWN` followed by anything), checked field by field as the bytes arrive.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::error::{bad_v1, quote};
use super::header::{Progress, match_signature};
use super::{Command, ParseError, ParseErrorKind, ProxyHeader, Version};

/// The longest v1 header, CRLF included, in bytes (the specification's own worst case,
/// `PROXY UNKNOWN` followed by two full IPv6 addresses and two 5-digit ports).
pub const V1_MAX_LEN: usize = 107;

/// Every v1 line starts with this.
pub(super) const V1_PREFIX: &[u8] = b"PROXY ";

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

pub(super) fn parse_v1(buf: &[u8]) -> Result<Progress, ParseError> {
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
