//! The field deserializers of [`ServerConfig`](super::ServerConfig): each value is read in the
//! form a person writes it (strings for addresses, durations, rates and ranges) and checked
//! here, so that an error carries the position of the value it is about.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use portcullis_limit::Quota;
use portcullis_limit::client::IpNet;
use serde::de::{Deserialize, Deserializer, Error, Visitor};

/// Parses a string inside the deserializer's visit, so that the deserializer attaches the
/// position of the value to the error (an element of an array included).
struct Parse<T> {
    parse: fn(&str) -> Result<T, String>,
    expecting: &'static str,
}

impl<T> Visitor<'_> for Parse<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: Error>(self, value: &str) -> Result<T, E> {
        (self.parse)(value).map_err(E::custom)
    }
}

fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: fn(&str) -> Result<T, String>,
    expecting: &'static str,
) -> Result<T, D::Error> {
    d.deserialize_str(Parse { parse, expecting })
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "invalid address {text:?}: expected IP:PORT, like \"127.0.0.1:8080\" or \"[::1]:8080\""
        )
    })
}

/// A CIDR range, or a single address (a /32 or /128).
pub(super) fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "invalid range {text:?}: expected a CIDR range like \"10.0.0.0/8\" or an address"
            )
        })
}

const ADDR: &str = "an address string like \"127.0.0.1:8080\"";
const NET: &str = "a CIDR range string like \"10.0.0.0/8\"";

pub(super) fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parsed(d, parse_addr, ADDR).map(Some)
}

/// One element of an array.
struct Element<T>(T);

impl<'de> Deserialize<'de> for Element<SocketAddr> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, parse_addr, ADDR).map(Element)
    }
}

impl<'de> Deserialize<'de> for Element<IpNet> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, parse_net, NET).map(Element)
    }
}

pub(super) fn addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let elements = <Vec<Element<SocketAddr>>>::deserialize(d)?;
    Ok(elements.into_iter().map(|Element(addr)| addr).collect())
}

pub(super) fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let elements = <Vec<Element<IpNet>>>::deserialize(d)?;
    Ok(elements.into_iter().map(|Element(net)| net).collect())
}

pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let parse = |text: &str| portcullis_listen::parse_duration(text).map_err(|e| e.to_string());
    parsed(d, parse, "a duration string like \"5s\"")
}

pub(super) fn quota<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Quota>, D::Error> {
    let parse = |text: &str| text.parse::<Quota>().map_err(|e| e.to_string());
    parsed(d, parse, "a rate string like \"100/s\"").map(Some)
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = i64::deserialize(d)?;
    match u64::try_from(value) {
        Ok(value) if value > 0 => Ok(value),
        _ => Err(D::Error::custom(format_args!(
            "invalid value {value}: must be at least 1"
        ))),
    }
}

pub(super) fn nonzero_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NonZeroU32>, D::Error> {
    let value = at_least_one(d)?;
    u32::try_from(value)
        .ok()
        .and_then(NonZeroU32::new)
        .map(Some)
        .ok_or_else(|| D::Error::custom(format_args!("invalid value {value}: too large")))
}

pub(super) fn nonzero_usize<'de, D: Deserializer<'de>>(d: D) -> Result<NonZeroUsize, D::Error> {
    let value = at_least_one(d)?;
    usize::try_from(value)
        .ok()
        .and_then(NonZeroUsize::new)
        .ok_or_else(|| D::Error::custom(format_args!("invalid value {value}: too large")))
}

pub(super) fn nonzero_usize_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<NonZeroUsize>, D::Error> {
    nonzero_usize(d).map(Some)
}
