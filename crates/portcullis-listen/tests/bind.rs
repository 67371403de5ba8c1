//! Binding: acceptors, address families, errors, Unix sockets, accepting and streams.

use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use portcullis_listen::{Addr, BindErrorKind, Listener, ListenerConfig, Stream};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

fn v4() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn v6() -> SocketAddr {
    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))
}

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> io::Result<Self> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "portcullis-listen-{}-{tag}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn echo_once(
    mut server: Stream,
    mut client: impl AsyncReadExt + AsyncWriteExt + Unpin,
) -> io::Result<()> {
    client.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").await?;
    server.flush().await?;
    client.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"pong");
    Ok(())
}

#[tokio::test]
async fn acceptors_share_the_port_picked_for_port_0() -> io::Result<()> {
    let four = NonZeroUsize::new(4).expect("nonzero");
    let listeners = ListenerConfig::new()
        .acceptors(four)
        .bind(v4())
        .expect("bind four acceptors");
    assert_eq!(listeners.len(), 4);
    let port = listeners[0].local_addr().as_inet().expect("inet").port();
    assert_ne!(port, 0);
    let mut ids = Vec::new();
    for l in &listeners {
        assert_eq!(
            l.local_addr(),
            &Addr::Inet(SocketAddr::from(([127, 0, 0, 1], port)))
        );
        assert!(
            SockRef::from(l).reuse_port()?,
            "acceptors imply SO_REUSEPORT"
        );
        ids.push(l.id());
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 4, "every acceptor has its own id");

    // A client is served by one of them.
    let [mut a, mut b, mut c, mut d] = <[Listener; 4]>::try_from(listeners).expect("four");
    let client = TcpStream::connect(("127.0.0.1", port)).await?;
    let accepted = tokio::select! {
        x = a.accept() => x,
        x = b.accept() => x,
        x = c.accept() => x,
        x = d.accept() => x,
    };
    assert_eq!(accepted.peer, Addr::Inet(client.local_addr()?));
    Ok(())
}

#[tokio::test]
async fn one_acceptor_by_default_without_reuse_port() -> io::Result<()> {
    let listeners = ListenerConfig::default().bind(v4()).expect("bind");
    assert_eq!(listeners.len(), 1);
    assert!(!SockRef::from(&listeners[0]).reuse_port()?);
    Ok(())
}

#[tokio::test]
async fn ipv4_and_ipv6_accept_and_stream() -> io::Result<()> {
    for addr in [v4(), v6()] {
        let mut listener = Listener::bind(addr).expect("bind");
        let local = listener.local_addr().as_inet().expect("inet");
        assert_eq!(local.ip(), addr.ip());
        assert_ne!(local.port(), 0);
        let shown = listener.local_addr().to_string();
        if addr.is_ipv6() {
            assert_eq!(shown, format!("[::1]:{}", local.port()));
        } else {
            assert_eq!(shown, format!("127.0.0.1:{}", local.port()));
        }
        let (client, accepted) = tokio::join!(TcpStream::connect(local), listener.accept());
        let client = client?;
        assert_eq!(accepted.peer, Addr::Inet(client.local_addr()?));
        assert_eq!(accepted.local, Addr::Inet(local));
        assert_eq!(accepted.listener, listener.id());
        assert!(accepted.stream.as_tcp().is_some());
        assert!(accepted.stream.as_unix().is_none());
        echo_once(accepted.stream, client).await?;
    }
    Ok(())
}

#[tokio::test]
async fn v4_and_v6_loopback_on_the_same_port() {
    let first = Listener::bind(v6()).expect("bind v6");
    let port = first.local_addr().as_inet().expect("inet").port();
    let second = Listener::bind(SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(second.is_ok(), "{:?}", second.err());
}

#[tokio::test]
async fn address_in_use_names_the_address() {
    let first = Listener::bind(v4()).expect("bind");
    let addr = first.local_addr().as_inet().expect("inet");
    let err = Listener::bind(addr).expect_err("second bind must fail");
    assert_eq!(err.kind(), BindErrorKind::AddrInUse);
    assert_eq!(err.addr(), Some(&Addr::Inet(addr)));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot bind {addr}: address already in use")),
        "{msg}"
    );
    assert!(std::error::Error::source(&err).is_some());
}

#[test]
fn binding_outside_a_runtime_is_an_error_not_a_panic() -> io::Result<()> {
    let err = ListenerConfig::default()
        .bind(v4())
        .expect_err("no runtime");
    assert_eq!(err.kind(), BindErrorKind::NoRuntime);
    assert!(err.to_string().contains("no tokio runtime"), "{err}");

    let err = ListenerConfig::default()
        .from_std(std::net::TcpListener::bind(v4())?)
        .expect_err("no runtime");
    assert_eq!(err.kind(), BindErrorKind::NoRuntime);

    let dir = TempDir::new("noruntime")?;
    let path = dir.path("s.sock");
    let err = ListenerConfig::default()
        .bind_unix(&path, None)
        .expect_err("no runtime");
    assert_eq!(err.kind(), BindErrorKind::NoRuntime);
    assert!(!path.exists(), "nothing created without a runtime");
    Ok(())
}

#[tokio::test]
async fn accept_is_cancellation_safe() -> io::Result<()> {
    let mut listener = Listener::bind(v4()).expect("bind");
    let addr = listener.local_addr().as_inet().expect("inet");
    // Start accepting and give up before a client arrives, several times.
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::ZERO, listener.accept()).await;
        assert!(r.is_err());
    }
    let client = TcpStream::connect(addr).await?;
    let accepted = listener.accept().await;
    assert_eq!(accepted.peer, Addr::Inet(client.local_addr()?));
    Ok(())
}

#[tokio::test]
async fn unix_socket_with_mode_accepts_and_is_removed_on_drop() -> io::Result<()> {
    let dir = TempDir::new("mode")?;
    let path = dir.path("app.sock");
    let mut listener = ListenerConfig::default()
        .bind_unix(&path, Some(0o660))
        .expect("bind unix");
    assert_eq!(listener.local_addr(), &Addr::Unix(Some(path.clone())));
    assert_eq!(
        listener.local_addr().to_string(),
        format!("unix:{}", path.display())
    );
    let meta = std::fs::symlink_metadata(&path)?;
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let (client, accepted) = tokio::join!(UnixStream::connect(&path), listener.accept());
    let client = client?;
    assert_eq!(accepted.peer, Addr::Unix(None));
    assert_eq!(accepted.peer.to_string(), "unix:(unnamed)");
    assert_eq!(accepted.local, Addr::Unix(Some(path.clone())));
    assert!(accepted.stream.as_unix().is_some());
    echo_once(accepted.stream, client).await?;

    drop(listener);
    assert!(!path.exists(), "socket file removed on drop");
    Ok(())
}

#[tokio::test]
async fn stale_unix_socket_is_replaced() -> io::Result<()> {
    let dir = TempDir::new("stale")?;
    let path = dir.path("app.sock");
    // A socket file nobody listens on any more (std does not remove it on drop).
    drop(std::os::unix::net::UnixListener::bind(&path)?);
    assert!(std::fs::symlink_metadata(&path)?.file_type().is_socket());
    let mut listener = ListenerConfig::default()
        .bind_unix(&path, None)
        .expect("stale socket replaced");
    let (client, _accepted) = tokio::join!(UnixStream::connect(&path), listener.accept());
    client?;
    Ok(())
}

#[tokio::test]
async fn live_unix_socket_is_refused_and_kept() -> io::Result<()> {
    let dir = TempDir::new("live")?;
    let path = dir.path("app.sock");
    let live = std::os::unix::net::UnixListener::bind(&path)?;
    let err = ListenerConfig::default()
        .bind_unix(&path, None)
        .expect_err("a live server owns the path");
    assert_eq!(err.kind(), BindErrorKind::AddrInUse);
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    // The live server still has its socket.
    let _client = std::os::unix::net::UnixStream::connect(&path)?;
    let (_conn, _) = live.accept()?;
    Ok(())
}

#[tokio::test]
async fn regular_files_and_symlinks_are_never_removed() -> io::Result<()> {
    let dir = TempDir::new("file")?;
    let path = dir.path("app.sock");
    std::fs::write(&path, b"precious")?;
    let err = ListenerConfig::default()
        .bind_unix(&path, None)
        .expect_err("not a socket");
    assert_eq!(err.kind(), BindErrorKind::NotASocket);
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path)?, b"precious");

    // A symlink to a stale socket is not followed or removed either.
    let stale = dir.path("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale)?);
    let link = dir.path("link.sock");
    std::os::unix::fs::symlink(&stale, &link)?;
    let err = ListenerConfig::default()
        .bind_unix(&link, None)
        .expect_err("symlink");
    assert_eq!(err.kind(), BindErrorKind::NotASocket);
    assert!(std::fs::symlink_metadata(&link)?.file_type().is_symlink());
    assert!(std::fs::symlink_metadata(&stale)?.file_type().is_socket());
    Ok(())
}

#[tokio::test]
async fn drop_leaves_a_replaced_path_alone() -> io::Result<()> {
    let dir = TempDir::new("replaced")?;
    let path = dir.path("app.sock");
    let listener = ListenerConfig::default()
        .bind_unix(&path, None)
        .expect("bind unix");
    // Someone else took the path over while we were running.
    std::fs::remove_file(&path)?;
    std::fs::write(&path, b"theirs")?;
    drop(listener);
    assert_eq!(std::fs::read(&path)?, b"theirs");
    Ok(())
}

#[tokio::test]
async fn missing_directory_names_the_path() -> io::Result<()> {
    let dir = TempDir::new("missing")?;
    let path: PathBuf = dir.path("no/such/dir/app.sock");
    let err = ListenerConfig::default()
        .bind_unix(&path, None)
        .expect_err("missing dir");
    assert_eq!(err.addr(), Some(&Addr::Unix(Some(path.clone()))));
    assert!(
        err.to_string()
            .starts_with(&format!("cannot bind unix:{}", Path::new(&path).display())),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn several_acceptors_still_refuse_a_port_in_use() {
    use std::num::NonZeroUsize;
    let acceptors = NonZeroUsize::new(2).expect("2");
    let config = portcullis_listen::ListenerConfig::default().acceptors(acceptors);
    let first = config
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = first[0].local_addr().as_inet().expect("inet");
    // A second group of acceptors on the same port: refused, not silently sharing it.
    let error = config.bind(addr).expect_err("port in use");
    assert_eq!(
        error.kind(),
        portcullis_listen::BindErrorKind::AddrInUse,
        "{error}"
    );
    assert!(error.to_string().contains(&addr.to_string()), "{error}");
    // An explicit reuse_port opts into sharing.
    let shared = config.clone().reuse_port(true);
    let first_shared = shared
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let port = first_shared[0].local_addr().as_inet().expect("inet");
    assert_eq!(shared.bind(port).expect("shared bind").len(), 2);
}
