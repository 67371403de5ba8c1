//! Tests of the PROXY protocol module, one file per part: the two parsers, property tests of
//! both, reading from a connection, over real TCP, and the metrics.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use ipnet::IpNet;
use metrics::Unit;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use proptest::prelude::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::error::quote;
use super::header::{Progress, parse_limited};
use super::reader::READ_CHUNK;
use super::v1::V1_PREFIX;
use super::v2::V2_SIGNATURE;
use super::*;
use crate::metrics::{LABEL_REASON, PROXY_ERROR_REASONS, PROXY_HEADER_ERRORS_TOTAL};

mod counted;
mod properties;
mod reader;
mod tcp;
mod v1;
mod v2;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNet {
    s.parse().expect("test network")
}

fn header(
    version: Version,
    command: Command,
    source: Option<&str>,
    destination: Option<&str>,
) -> ProxyHeader {
    ProxyHeader {
        version,
        command,
        source: source.map(addr),
        destination: destination.map(addr),
    }
}

#[track_caller]
fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
    match parse(buf) {
        Ok(Parsed::Complete { header, len }) => (header, len),
        other => panic!(
            "expected a complete header in {}, got {other:?}",
            quote(buf)
        ),
    }
}

#[track_caller]
fn error(buf: &[u8]) -> ParseError {
    match parse(buf) {
        Err(e) => e,
        other => panic!("expected an error for {}, got {other:?}", quote(buf)),
    }
}

/// A v2 header with the given version/command byte, family/transport byte and body.
fn v2(ver_cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(body.len()).expect("test body fits the length field");
    let mut out = V2_SIGNATURE.to_vec();
    out.extend_from_slice(&[ver_cmd, family]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let len = u16::try_from(value.len()).expect("test TLV fits");
    let mut out = vec![kind];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    out
}

/// A reader that returns `data` in reads of the scripted sizes (cycling), then EOF, and
/// records the capacity each read was offered.
#[derive(Debug)]
struct Scripted {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    offered: Vec<usize>,
}

impl Scripted {
    fn new(data: Vec<u8>, sizes: Vec<usize>) -> Self {
        Self {
            data,
            pos: 0,
            sizes,
            offered: Vec::new(),
        }
    }
}

impl AsyncRead for Scripted {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let size = this.sizes[this.offered.len() % this.sizes.len()];
        this.offered.push(buf.remaining());
        let end = this.data.len().min(this.pos + size.min(buf.remaining()));
        buf.put_slice(&this.data[this.pos..end]);
        this.pos = end;
        Poll::Ready(Ok(()))
    }
}
