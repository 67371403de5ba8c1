//! Socket options set by `ListenerConfig::bind`, read back from the kernel.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use portcullis_listen::{Accepted, BindErrorKind, Keepalive, Listener, ListenerConfig, sockopt};
use socket2::SockRef;
use tokio::net::TcpStream;

fn v4() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn v6() -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
}

fn one(config: &ListenerConfig, addr: SocketAddr) -> Listener {
    let mut listeners = config.bind(addr).expect("bind");
    assert_eq!(listeners.len(), 1);
    listeners.pop().expect("one listener")
}

/// Connects a client and accepts it.
async fn connect_and_accept(listener: &mut Listener) -> io::Result<(Accepted, TcpStream)> {
    let addr = listener.local_addr().as_inet().expect("inet listener");
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    Ok((accepted, client?))
}

#[tokio::test]
async fn defaults_on_the_listening_socket() -> io::Result<()> {
    let listener = one(&ListenerConfig::default(), v4());
    let sock = SockRef::from(&listener);
    assert!(sock.reuse_address()?);
    assert!(!sock.reuse_port()?);
    assert_eq!(sockopt::tcp_fastopen(&listener)?, 0);
    assert_eq!(sockopt::tcp_defer_accept(&listener)?, 0);
    Ok(())
}

#[tokio::test]
async fn configured_listening_socket_options() -> io::Result<()> {
    let config = ListenerConfig::new()
        .reuse_port(true)
        .recv_buffer_size(96 * 1024)
        .send_buffer_size(80 * 1024)
        .tcp_fastopen(16)
        .defer_accept(Duration::from_secs(5))
        .backlog(16);
    let listener = one(&config, v4());
    let sock = SockRef::from(&listener);
    assert!(sock.reuse_address()?);
    assert!(sock.reuse_port()?);
    // Linux doubles the requested sizes for bookkeeping.
    assert!(
        sock.recv_buffer_size()? >= 96 * 1024,
        "{}",
        sock.recv_buffer_size()?
    );
    assert!(
        sock.send_buffer_size()? >= 80 * 1024,
        "{}",
        sock.send_buffer_size()?
    );
    assert_eq!(sockopt::tcp_fastopen(&listener)?, 16);
    // Stored as SYN-ACK retransmissions and converted back: rounded, but on.
    assert!(sockopt::tcp_defer_accept(&listener)? > 0);
    Ok(())
}

#[tokio::test]
async fn reuse_address_can_be_turned_off() -> io::Result<()> {
    let listener = one(&ListenerConfig::new().reuse_address(false), v4());
    assert!(!SockRef::from(&listener).reuse_address()?);
    Ok(())
}

#[tokio::test]
async fn ipv6_loopback_is_ipv6_only() -> io::Result<()> {
    // Linux also forces IPV6_V6ONLY on for a specific address like [::1]; that `only_v6(false)`
    // reaches the socket is checked on the unbound socket in the crate's unit tests, since
    // only `[::]` would show it after bind and tests bind loopback addresses only.
    let listener = one(&ListenerConfig::default(), v6());
    assert!(SockRef::from(&listener).only_v6()?);
    Ok(())
}

#[tokio::test]
async fn defaults_on_accepted_connections() -> io::Result<()> {
    let mut listener = one(&ListenerConfig::default(), v4());
    let (accepted, _client) = connect_and_accept(&mut listener).await?;
    let sock = SockRef::from(&accepted.stream);
    assert!(sock.tcp_nodelay()?);
    assert!(sock.keepalive()?);
    assert_eq!(sock.tcp_keepalive_time()?, Duration::from_secs(60));
    assert_eq!(sock.tcp_keepalive_interval()?, Duration::from_secs(10));
    assert_eq!(sock.tcp_keepalive_retries()?, 6);
    assert_eq!(sock.tcp_user_timeout()?, None);
    Ok(())
}

#[tokio::test]
async fn configured_options_on_accepted_connections() -> io::Result<()> {
    let config = ListenerConfig::new()
        .nodelay(false)
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(30),
            Duration::from_secs(5),
            3,
        )))
        .user_timeout(Some(Duration::from_secs(20)));
    let mut listener = one(&config, v4());
    let (accepted, _client) = connect_and_accept(&mut listener).await?;
    let sock = SockRef::from(&accepted.stream);
    assert!(!sock.tcp_nodelay()?);
    assert!(sock.keepalive()?);
    assert_eq!(sock.tcp_keepalive_time()?, Duration::from_secs(30));
    assert_eq!(sock.tcp_keepalive_interval()?, Duration::from_secs(5));
    assert_eq!(sock.tcp_keepalive_retries()?, 3);
    assert_eq!(sock.tcp_user_timeout()?, Some(Duration::from_secs(20)));
    Ok(())
}

#[tokio::test]
async fn keepalive_can_be_turned_off() -> io::Result<()> {
    let mut listener = one(&ListenerConfig::new().keepalive(None), v6());
    let (accepted, _client) = connect_and_accept(&mut listener).await?;
    assert!(!SockRef::from(&accepted.stream).keepalive()?);
    Ok(())
}

#[tokio::test]
async fn options_apply_to_adopted_std_listeners() -> io::Result<()> {
    let std_listener = std::net::TcpListener::bind(v4())?;
    let addr = std_listener.local_addr()?;
    let mut listener = ListenerConfig::new()
        .nodelay(false)
        .keepalive(Some(Keepalive::new(
            Duration::from_secs(42),
            Duration::from_secs(7),
            2,
        )))
        .from_std(std_listener)
        .expect("adopt");
    assert_eq!(listener.local_addr().as_inet(), Some(addr));
    let (accepted, _client) = connect_and_accept(&mut listener).await?;
    let sock = SockRef::from(&accepted.stream);
    assert!(!sock.tcp_nodelay()?);
    assert_eq!(sock.tcp_keepalive_time()?, Duration::from_secs(42));
    assert_eq!(sock.tcp_keepalive_retries()?, 2);
    Ok(())
}

#[tokio::test]
async fn invalid_keepalive_is_rejected_at_bind_time() {
    // Linux keeps keep-alive times in whole seconds; zero is invalid.
    let config = ListenerConfig::new().keepalive(Some(Keepalive::new(
        Duration::ZERO,
        Duration::from_secs(1),
        1,
    )));
    let err = config.bind(v4()).expect_err("zero keep-alive idle time");
    assert_eq!(err.kind(), BindErrorKind::InvalidConfig);
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot set per-connection options"),
        "{msg}"
    );
    assert!(msg.contains("127.0.0.1:0"), "{msg}");
}
