//! Reading headers over real loopback TCP connections.

use super::*;

async fn connected() -> (TcpStream, TcpStream, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let client = TcpStream::connect(addr).await.expect("connect");
    let (server, peer) = listener.accept().await.expect("accept");
    client.set_nodelay(true).expect("nodelay");
    (client, server, peer)
}

/// Limits each read of the inner stream to `max` bytes and counts reads, so a header is
/// certain to arrive in pieces however the kernel coalesces segments.
#[derive(Debug)]
struct SmallReads<S> {
    inner: S,
    max: usize,
    reads: usize,
}

impl<S: AsyncRead + Unpin> AsyncRead for SmallReads<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let max = this.max.min(buf.remaining());
        let mut small = ReadBuf::new(buf.initialize_unfilled_to(max));
        let poll = Pin::new(&mut this.inner).poll_read(cx, &mut small);
        let n = small.filled().len();
        buf.advance(n);
        if poll.is_ready() {
            this.reads += 1;
        }
        poll
    }
}

#[tokio::test]
async fn tcp_header_and_request_in_one_write() {
    let (mut client, server, peer) = connected().await;
    let proxy = ProxyProtocol::new([net("127.0.0.0/8")]);
    assert!(proxy.is_trusted(peer.ip()));
    let request = b"GET / HTTP/1.1\r\nHost: example\r\n\r\n";
    let sent = [
        &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"[..],
        request,
    ]
    .concat();
    client.write_all(&sent).await.expect("write");
    // Half-close, so reading the request to its end cannot hang.
    client.shutdown().await.expect("shutdown");

    let (header, mut stream) = proxy.read_header(server).await.expect("header");
    assert_eq!(header.source, Some(addr("192.168.0.1:56324")));
    assert_eq!(header.destination, Some(addr("192.168.0.11:443")));
    let mut got = Vec::new();
    stream.read_to_end(&mut got).await.expect("read request");
    assert_eq!(got, request);

    stream
        .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        .await
        .expect("write");
    stream.shutdown().await.expect("shutdown");
    let mut response = Vec::new();
    client
        .read_to_end(&mut response)
        .await
        .expect("read response");
    assert_eq!(response, b"HTTP/1.1 204 No Content\r\n\r\n");
}

#[tokio::test]
async fn tcp_header_dribbled_in_pieces() {
    let (mut client, server, _) = connected().await;
    let mut sent = v2(
        0x21,
        0x21,
        &[
            &Ipv6Addr::LOCALHOST.octets()[..],
            &Ipv6Addr::LOCALHOST.octets(),
            &[0x30, 0x39, 0x01, 0xbb],
            &tlv(0x01, b"h2"),
        ]
        .concat(),
    );
    let header_len = sent.len();
    sent.extend_from_slice(b"PRI * HTTP/2.0");
    let writer = tokio::spawn(async move {
        for piece in sent.chunks(7) {
            client.write_all(piece).await.expect("write");
            tokio::task::yield_now().await;
        }
        client.shutdown().await.expect("shutdown");
        client
    });
    let reader = SmallReads {
        inner: server,
        max: 5,
        reads: 0,
    };
    let (header, mut stream) = ProxyProtocol::new([])
        .read_header(reader)
        .await
        .expect("header");
    assert_eq!(header.source, Some(addr("[::1]:12345")));
    assert_eq!(header.destination, Some(addr("[::1]:443")));
    assert!(stream.get_ref().reads >= header_len / 5);
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read");
    assert_eq!(rest, b"PRI * HTTP/2.0");
    drop(writer.await.expect("writer"));
}

#[tokio::test]
async fn tcp_garbage_is_malformed() {
    let (mut client, server, _) = connected().await;
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n")
        .await
        .expect("write");
    let e = ProxyProtocol::new([])
        .read_header(server)
        .await
        .expect_err("garbage");
    assert_eq!(e.reason(), "not_proxy");
    assert!(
        e.to_string().contains("got \"GET / HTTP/1.1\\r\\n\""),
        "{e}"
    );
}

#[tokio::test]
async fn tcp_close_before_the_header_ends() {
    let (mut client, server, _) = connected().await;
    client.write_all(b"PROXY TCP4 1.2.").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let e = ProxyProtocol::new([])
        .read_header(server)
        .await
        .expect_err("eof");
    assert!(matches!(e, ProxyError::Eof { received: 15 }), "{e:?}");
    assert_eq!(e.reason(), "eof");
}
