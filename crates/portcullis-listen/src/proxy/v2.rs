//! The v2 binary header: a 12-byte signature, version and command, address family and
//! transport, a 16-bit length, then the address block and TLVs.

use std::net::{IpAddr, SocketAddr};

use super::error::{bad_v2, unsupported};
use super::header::{Progress, match_signature};
use super::{Command, ParseError, ParseErrorKind, ProxyHeader, Version};

/// The longest v2 header accepted, in bytes: the 16-byte fixed part plus the largest length
/// its 16-bit length field can announce (65535).
///
/// This is what the format can express, so by default no well-formed v2 header is refused for
/// its size; [`ProxyProtocol::max_header_len`](super::ProxyProtocol::max_header_len) lowers the
/// cap for [`read_header`](super::ProxyProtocol::read_header), and a header announcing more is
/// rejected with reason `too_long` as soon as its length field has arrived, before its body is
/// buffered.
pub const MAX_HEADER_LEN: usize = V2_FIXED_LEN + 65535;

/// Every v2 header starts with this.
pub(super) const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version and command, family and transport, and the length field.
pub(super) const V2_FIXED_LEN: usize = 16;

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

pub(super) fn parse_v2(buf: &[u8], max_len: usize) -> Result<Progress, ParseError> {
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
