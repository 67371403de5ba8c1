//! Socket activation with a real inherited descriptor: the test re-executes itself as a child
//! process that receives a listening socket as fd 3 with `LISTEN_PID`/`LISTEN_FDS`/
//! `LISTEN_FDNAMES` set, the way systemd passes it.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};
use std::time::Duration;

use portcullis_listen::{ActivationError, ListenerConfig, SocketActivation};
use tokio::io::AsyncWriteExt;

/// Set in the child's environment: run the child half of the test.
const ROLE: &str = "PORTCULLIS_LISTEN_ACTIVATION_CHILD";
const TEST_NAME: &str = "inherited_socket_is_served_by_the_child";

/// Moves stdin (the socket) to fd 3, sets the activation variables with the pid that `exec`
/// keeps, and execs the test binary.
const SCRIPT: &str =
    r#"exec 3<&0 0</dev/null; LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web exec "$0" "$@""#;

#[test]
fn inherited_socket_is_served_by_the_child() -> io::Result<()> {
    if std::env::var_os(ROLE).is_some() {
        child()
    } else {
        parent()
    }
}

fn parent() -> io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let child = {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(SCRIPT)
            .arg(std::env::current_exe()?)
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
            .env(ROLE, "1")
            .stdin(Stdio::from(OwnedFd::from(listener)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd.spawn()?
        // `cmd` drops here, closing the parent's copy of the listening socket: from now on only
        // the child holds it.
    };
    let child_pid = child.id();

    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    // A safety net against a hung child, not synchronization: the read returns as soon as the
    // child answers or exits.
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut reply = String::new();
    let read = conn.read_to_string(&mut reply);

    let output = child.wait_with_output()?;
    let diagnostics = format!(
        "child status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(read.is_ok(), "{read:?}\n{diagnostics}");
    assert!(output.status.success(), "{diagnostics}");
    assert_eq!(
        reply.trim(),
        format!("{port} {child_pid}"),
        "served by the child on the inherited socket\n{diagnostics}"
    );
    Ok(())
}

fn child() -> io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut activation = SocketActivation::from_env()
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::other("expected socket activation"))?;
        assert_eq!(activation.names().collect::<Vec<_>>(), ["web"]);
        assert!(!activation.is_empty());

        // The environment is left alone; the descriptors are taken only once.
        assert_eq!(std::env::var("LISTEN_FDNAMES").ok().as_deref(), Some("web"));
        assert!(matches!(
            SocketActivation::from_env(),
            Err(ActivationError::AlreadyTaken)
        ));

        // The inherited descriptor is now close-on-exec.
        #[cfg(target_os = "linux")]
        {
            let info = std::fs::read_to_string("/proc/self/fdinfo/3")?;
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .ok_or_else(|| io::Error::other("no flags line"))?;
            let flags = u32::from_str_radix(flags.trim(), 8).map_err(io::Error::other)?;
            assert_ne!(flags & 0o2000000, 0, "O_CLOEXEC set on fd 3");
        }

        let config = ListenerConfig::default();
        // A name that was not passed: nothing taken, and bind_or_activated falls back to bind.
        assert!(activation.take("admin", &config)?.is_empty());
        let fallback = config.bind_or_activated(
            Some(&mut activation),
            "admin",
            SocketAddr::from(([127, 0, 0, 1], 0)),
        )?;
        assert_eq!(fallback.len(), 1);
        assert_eq!(activation.names().count(), 1, "fallback took nothing");

        // The named socket is taken instead of binding the (unusable) fallback address.
        let mut listeners = config.bind_or_activated(
            Some(&mut activation),
            "web",
            SocketAddr::from(([127, 0, 0, 1], 1)),
        )?;
        assert!(activation.is_empty());
        assert_eq!(listeners.len(), 1);
        let mut listener = listeners.pop().ok_or_else(|| io::Error::other("none"))?;
        let port = listener
            .local_addr()
            .as_inet()
            .ok_or_else(|| io::Error::other("not inet"))?
            .port();
        assert_ne!(
            Some(port),
            fallback[0].local_addr().as_inet().map(|a| a.port())
        );

        let mut accepted = listener.accept().await;
        let reply = format!("{port} {}\n", std::process::id());
        accepted.stream.write_all(reply.as_bytes()).await?;
        accepted.stream.shutdown().await?;
        Ok(())
    })
}

#[test]
fn without_activation_environment_there_is_nothing_to_take() -> Result<(), ActivationError> {
    if std::env::var_os("LISTEN_PID").is_some() {
        // Running under a service manager after all; the child test covers this case.
        return Ok(());
    }
    assert!(SocketActivation::from_env()?.is_none());
    // Not taking anything does not use up the once-per-process guard.
    assert!(SocketActivation::from_env()?.is_none());
    Ok(())
}
