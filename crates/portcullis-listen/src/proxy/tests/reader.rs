//! `ProxyProtocol`: trusted ranges, chunked reads, the cap, the deadline; and `Prefixed`.

use super::*;

#[test]
fn trust_ranges() {
    let proxy = ProxyProtocol::new([net("10.1.2.3/8"), net("2001:db8::/32")]);
    assert_eq!(proxy.trusted(), [net("10.0.0.0/8"), net("2001:db8::/32")]);
    assert!(proxy.is_trusted("10.200.0.1".parse().expect("ip")));
    assert!(!proxy.is_trusted("11.0.0.1".parse().expect("ip")));
    assert!(proxy.is_trusted("2001:db8::7".parse().expect("ip")));
    assert!(!proxy.is_trusted("2001:db9::7".parse().expect("ip")));
    // A dual-stack socket reports IPv4 peers as IPv4-mapped IPv6 addresses.
    assert!(proxy.is_trusted("::ffff:10.0.0.1".parse().expect("ip")));
    assert!(!proxy.is_trusted("::ffff:11.0.0.1".parse().expect("ip")));
    // Mapped ranges are treated as the IPv4 ranges they map.
    let mapped = ProxyProtocol::new([net("::ffff:192.168.0.0/112")]);
    assert_eq!(mapped.trusted(), [net("192.168.0.0/16")]);
    assert!(mapped.is_trusted("192.168.4.4".parse().expect("ip")));
    assert!(mapped.is_trusted("::ffff:192.168.4.4".parse().expect("ip")));
    // Nobody is trusted by default.
    assert!(!ProxyProtocol::new([]).is_trusted("127.0.0.1".parse().expect("ip")));
}

#[tokio::test]
async fn reads_in_chunks_and_never_past_what_is_needed() {
    let proxy = ProxyProtocol::new([]);
    // Everything available at once: one read for a v1 header and the request after it.
    let data = b"PROXY TCP4 1.2.3.4 5.6.7.8 80 443\r\nGET / HTTP/1.1\r\n\r\n".to_vec();
    let (_, stream) = proxy
        .read_header(Scripted::new(data.clone(), vec![usize::MAX]))
        .await
        .expect("header");
    assert_eq!(stream.get_ref().offered, [READ_CHUNK]);
    assert_eq!(stream.prefix(), b"GET / HTTP/1.1\r\n\r\n");

    // A 5000-byte v2 header: the second read asks for exactly the rest of it, so the
    // application bytes after it stay in the socket.
    let mut body = vec![0; 12];
    body.extend(tlv(0xe0, &vec![7; 5000 - 16 - 12 - 3]));
    let mut data = v2(0x21, 0x11, &body);
    assert_eq!(data.len(), 5000);
    data.extend_from_slice(&[1; 3000]);
    let (_, stream) = proxy
        .read_header(Scripted::new(data, vec![usize::MAX]))
        .await
        .expect("header");
    assert_eq!(stream.get_ref().offered, [READ_CHUNK, 5000 - READ_CHUNK]);
    assert_eq!(stream.get_ref().pos, 5000);
    assert!(stream.prefix().is_empty());
}

#[tokio::test]
async fn header_over_the_configured_cap_is_rejected_early() {
    let proxy = ProxyProtocol::new([]).max_header_len(64);
    let data = v2(0x21, 0x00, &[0; 100]);
    let (mut client, server) = tokio::io::duplex(1024);
    // Only the fixed part is sent: the length field alone condemns the header.
    client.write_all(&data[..16]).await.expect("write");
    let e = proxy.read_header(server).await.expect_err("too long");
    assert_eq!(e.reason(), "too_long");
    assert!(matches!(e, ProxyError::Malformed(ref p) if p.kind() == ParseErrorKind::TooLong));
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_times_out_at_the_deadline() {
    let (mut client, server) = tokio::io::duplex(1024);
    client.write_all(b"PROXY TCP4 1.2").await.expect("write");
    let start = tokio::time::Instant::now();
    let e = ProxyProtocol::new([])
        .read_header(server)
        .await
        .expect_err("timeout");
    assert_eq!(start.elapsed(), DEFAULT_TIMEOUT);
    assert!(
        matches!(e, ProxyError::Timeout { after, received: 14 } if after == DEFAULT_TIMEOUT),
        "{e:?}"
    );
    assert_eq!(e.reason(), "timeout");
    assert_eq!(
        e.to_string(),
        "no complete PROXY header within 5s (14 bytes received)"
    );
    drop(client);

    let (_client, server) = tokio::io::duplex(1024);
    let start = tokio::time::Instant::now();
    let e = ProxyProtocol::new([])
        .timeout(Duration::from_millis(250))
        .read_header(server)
        .await
        .expect_err("timeout");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(e.reason(), "timeout");
}

#[tokio::test]
async fn read_errors_are_reported() {
    #[derive(Debug)]
    struct Failing;
    impl AsyncRead for Failing {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
        }
    }
    let e = ProxyProtocol::new([])
        .read_header(Failing)
        .await
        .expect_err("io error");
    assert_eq!(e.reason(), "io");
    let source = e.source().and_then(|s| s.downcast_ref::<io::Error>());
    assert_eq!(
        source.map(io::Error::kind),
        Some(io::ErrorKind::ConnectionReset)
    );
}

#[tokio::test]
async fn prefixed_yields_prefix_then_inner_and_passes_writes_through() {
    let (mut client, server) = tokio::io::duplex(1024);
    client
        .write_all(b"PROXY UNKNOWN\r\nabcdef")
        .await
        .expect("write");
    let (_, mut stream) = ProxyProtocol::new([])
        .read_header(server)
        .await
        .expect("header");
    assert_eq!(stream.prefix(), b"abcdef");
    client.write_all(b"ghi").await.expect("write");
    drop(client.shutdown().await);
    // A small buffer takes the prefix in pieces.
    let mut small = [0; 4];
    assert_eq!(stream.read(&mut small).await.expect("read"), 4);
    assert_eq!(&small, b"abcd");
    // Debug shows how much is buffered, never the application's bytes.
    let shown = format!("{stream:?}");
    assert!(
        shown.starts_with("Prefixed { prefix_len: 2, inner: "),
        "{shown}"
    );
    let secret = Prefixed::with_prefix(Bytes::from_static(b"secret"), ());
    assert_eq!(
        format!("{secret:?}"),
        "Prefixed { prefix_len: 6, inner: () }"
    );
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read");
    assert_eq!(rest, b"efghi");

    let (mut client, server) = tokio::io::duplex(1024);
    let mut plain = Prefixed::new(server);
    assert!(plain.prefix().is_empty());
    let bufs = [io::IoSlice::new(b"hello "), io::IoSlice::new(b"world")];
    let n = plain.write_vectored(&bufs).await.expect("write");
    plain.write_all(&b"hello world"[n..]).await.expect("write");
    plain.flush().await.expect("flush");
    plain.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.expect("read");
    assert_eq!(got, b"hello world");
    let (prefix, _inner) = plain.into_parts();
    assert!(prefix.is_empty());
}
