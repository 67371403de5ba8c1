//! The I/O wrapper that reports read activity to the connection's [`ConnState`].

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use portcullis_limit::ConnPermit;
use portcullis_listen::Stream;
use portcullis_listen::proxy::Prefixed;
use portcullis_tls::tokio_rustls::server::TlsStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::rate::{FrameScanner, H2Event, WriteStall};
use crate::state::ConnState;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's first read buffer (8 KiB). While a request with a body is in flight, reads give
/// it at most one byte less: hyper doubles its buffer after every read that fills it, up to
/// the head limit (64 KiB), and never shrinks it, so one large upload would leave an idle
/// connection holding 64 KiB for the rest of its life. A body then arrives in reads of up to
/// 8 KiB (nginx reads bodies in 8 or 16 KiB buffers), copied once more. Not covered: the read
/// that brings a head and the start of its body together can still fill the buffer once
/// (16 KiB then), and a request head larger than 8 KiB grows it to hold the head.
const READ_CHUNK: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// Still matching the first bytes against the HTTP/2 preface; holds how many matched.
    Sniffing(usize),
    Http1,
    Http2,
}

/// Wraps a connection's byte stream: every successful read updates the connection phase, and
/// a write the socket does not take at once is held to the minimum response rate. On HTTP/2
/// it also follows the connection window (`rate/h2_window.rs`).
#[derive(Debug)]
pub(crate) struct TrackedIo<T> {
    inner: T,
    state: Arc<ConnState>,
    protocol: Protocol,
    stall: WriteStall,
    /// HTTP/2 only: the frames read, and the frames written.
    frames: Option<Box<[FrameScanner; 2]>>,
    /// The protocol TLS ALPN agreed on: the first bytes must be that protocol.
    agreed: Option<Agreed>,
    /// The connection's place under the connection caps, released with the I/O.
    _permit: Option<ConnPermit>,
}

/// A protocol agreed by ALPN before the first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Agreed {
    Http1,
    Http2,
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            protocol: Protocol::Sniffing(0),
            stall: WriteStall::default(),
            frames: None,
            agreed: None,
            _permit: None,
        }
    }

    /// Holds `permit` for as long as this I/O lives, upgrades included.
    pub(crate) fn holding(mut self, permit: ConnPermit) -> Self {
        self._permit = Some(permit);
        self
    }

    /// The first bytes must be `agreed`'s: a client that agreed on HTTP/1.1 and sends the
    /// HTTP/2 preface (or the reverse) gets its connection closed.
    pub(crate) fn agreed(mut self, agreed: Option<Agreed>) -> Self {
        self.agreed = agreed;
        self
    }

    /// Whether what was read so far fits the agreed protocol.
    fn fits_agreement(&self) -> bool {
        !matches!(
            (self.agreed, self.protocol),
            (Some(Agreed::Http1), Protocol::Http2) | (Some(Agreed::Http2), Protocol::Http1)
        )
    }

    fn on_read(&mut self, bytes: &[u8]) {
        match self.protocol {
            Protocol::Http1 => self.state.on_http1_read(),
            Protocol::Http2 => self.read_frames(bytes),
            Protocol::Sniffing(matched) => {
                let wanted = &H2_PREFACE[matched..];
                let n = wanted.len().min(bytes.len());
                if bytes[..n] != wanted[..n] {
                    self.protocol = Protocol::Http1;
                } else if matched + n == H2_PREFACE.len() {
                    self.protocol = Protocol::Http2;
                    self.state.on_http2_preface();
                    self.frames = Some(Box::default());
                    self.read_frames(&bytes[n..]);
                } else {
                    self.protocol = Protocol::Sniffing(matched + n);
                }
            }
        }
    }

    /// HTTP/2 frames from the client: DATA uses up the connection window.
    fn read_frames(&mut self, bytes: &[u8]) {
        if let Some(frames) = &mut self.frames {
            let state = &self.state;
            frames[0].feed(bytes, |event| {
                if let H2Event::Data(length) = event {
                    state.h2_window_used(length);
                }
            });
        }
    }

    /// HTTP/2 frames the server wrote: WINDOW_UPDATE on stream 0 gives window back.
    fn wrote_frames<'a>(&mut self, mut taken: usize, slices: impl Iterator<Item = &'a [u8]>) {
        let Some(frames) = &mut self.frames else {
            return;
        };
        let state = &self.state;
        for slice in slices {
            if taken == 0 {
                break;
            }
            let piece = &slice[..slice.len().min(taken)];
            taken -= piece.len();
            frames[1].feed(piece, |event| match event {
                H2Event::ConnWindowUpdate(increment) => state.h2_window_granted(increment),
                H2Event::Data(length) => state.h2_sent(length),
            });
        }
    }

    /// Whether a write that went through needs looking at: a stalled write is being timed, or
    /// HTTP/2 frames are being followed.
    fn watching(&self) -> bool {
        self.stall.is_timing() || self.frames.is_some()
    }

    /// A write of `presented()` bytes returned `polled`. A write taken whole while nothing
    /// is owed (every write of a client that reads) costs one comparison.
    fn wrote(&mut self, presented: impl FnOnce() -> usize, polled: &Poll<io::Result<usize>>) {
        let taken = match polled {
            Poll::Ready(Ok(_)) if !self.stall.is_timing() => return,
            Poll::Ready(Ok(n)) => Some(*n as u64),
            Poll::Ready(Err(_)) => return,
            Poll::Pending => None,
        };
        let presented = presented() as u64;
        self.stall.wrote(&self.state, presented, taken);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        // Reads go straight to hyper (a keep-alive GET pays nothing) unless a request with a
        // body is in flight: then through the smaller buffer.
        let result = if buf.remaining() >= READ_CHUNK && this.state.is_body_in_flight() {
            read_in_chunks(Pin::new(&mut this.inner), cx, buf)
        } else {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        };
        if let Poll::Ready(Ok(())) = result {
            let filled = buf.filled();
            if filled.len() > before {
                let sniffing = matches!(this.protocol, Protocol::Sniffing(_));
                this.on_read(&filled[before..]);
                // The protocol is decided only while sniffing the first bytes.
                if sniffing && !this.fits_agreement() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the client speaks another protocol than the one ALPN agreed on",
                    )));
                }
            }
        }
        result
    }
}

/// Reads through a buffer of `READ_CHUNK - 1` bytes. Out of line: its 8 KiB stack frame
/// (and the probe of its pages) stays off the path of every other read.
#[inline(never)]
fn read_in_chunks<T: AsyncRead>(
    inner: Pin<&mut T>,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<io::Result<()>> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK - 1];
    let mut chunk = ReadBuf::uninit(&mut chunk);
    let result = inner.poll_read(cx, &mut chunk);
    buf.put_slice(chunk.filled());
    result
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if polled.is_ready() && !this.watching() {
            return polled;
        }
        this.wrote(|| buf.len(), &polled);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote_frames(n, std::iter::once(buf));
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if polled.is_ready() && !this.watching() {
            return polled;
        }
        this.wrote(|| bufs.iter().map(|b| b.len()).sum(), &polled);
        if let Poll::Ready(Ok(n)) = polled {
            this.wrote_frames(n, bufs.iter().map(|b| &**b));
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        if polled.is_ready() && !this.stall.is_timing() {
            return polled;
        }
        if !matches!(polled, Poll::Ready(Err(_))) {
            this.stall.flushed(&this.state, polled.is_ready());
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A connection's byte stream after the optional PROXY header and TLS handshake: one type for
/// plain (`Left`) and TLS (`Right`) connections, so the rest of the connection path is the
/// same for both. The TLS stream is boxed: it is large, and plain connections should not pay
/// for its size.
pub(crate) type ConnIo =
    tokio_util::either::Either<Prefixed<Stream>, Box<TlsStream<Prefixed<Stream>>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;
    use tokio::time::Instant;

    async fn feed(chunks: &[&[u8]]) -> Arc<ConnState> {
        let state = ConnState::new(Instant::now());
        let (mut client, server) = tokio::io::duplex(1024);
        let mut io = TrackedIo::new(server, Arc::clone(&state));
        for chunk in chunks {
            tokio::io::AsyncWriteExt::write_all(&mut client, chunk)
                .await
                .expect("write");
            let mut buf = vec![0; chunk.len()];
            io.read_exact(&mut buf).await.expect("read");
        }
        state
    }

    #[tokio::test]
    async fn preface_split_across_reads_is_http2() {
        let state = feed(&[&H2_PREFACE[..5], &H2_PREFACE[5..20], &H2_PREFACE[20..]]).await;
        let deadline = state
            .deadline(
                crate::state::nanos(Duration::from_secs(1)),
                crate::state::nanos(Duration::from_secs(100)),
            )
            .expect("idle");
        assert_eq!(deadline.reason, crate::metrics::CloseReason::IdleTimeout);
    }

    #[tokio::test]
    async fn http1_request_is_not_http2() {
        let state = feed(&[b"PRI", b"NT / HTTP/1.1\r\n"]).await;
        let deadline = state
            .deadline(
                crate::state::nanos(Duration::from_secs(1)),
                crate::state::nanos(Duration::from_secs(100)),
            )
            .expect("greeting");
        assert_eq!(deadline.reason, crate::metrics::CloseReason::HeaderTimeout);
    }

    proptest::proptest! {
        /// However the first bytes are split across reads, a connection is HTTP/2 exactly
        /// when they start with the preface.
        #[test]
        fn detection_matches_the_prefix_whatever_the_split(
            prefix_len in 0usize..=24,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            cuts in proptest::collection::vec(1usize..8, 0..16),
        ) {
            let mut bytes = H2_PREFACE[..prefix_len].to_vec();
            bytes.extend_from_slice(&tail);
            let expect_h2 = bytes.starts_with(H2_PREFACE);
            let mut io = TrackedIo::new((), ConnState::new(Instant::now()));
            let mut rest = &bytes[..];
            for cut in cuts.iter().copied().chain(std::iter::repeat(3)) {
                if rest.is_empty() {
                    break;
                }
                let (chunk, tail) = rest.split_at(cut.min(rest.len()));
                io.on_read(chunk);
                rest = tail;
            }
            let detected = match io.protocol {
                Protocol::Http2 => Some(true),
                Protocol::Http1 => Some(false),
                Protocol::Sniffing(_) => None,
            };
            if bytes.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&bytes) {
                proptest::prop_assert_eq!(detected, Some(expect_h2));
            } else {
                // A strict prefix of the preface: still undecided.
                proptest::prop_assert_eq!(detected, None);
            }
        }
    }
}
