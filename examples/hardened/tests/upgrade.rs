//! Zero-downtime upgrades with real processes: SIGUSR2 hands every listening socket (both
//! SO_REUSEPORT acceptors and the admin listener) to a new `hardened`, which reports ready;
//! the old one drains and exits 0. Under continuous load (keep-alive clients, a new
//! connection per request, slow requests in flight across each switch) no connection is
//! refused and no request fails across two upgrades in a row. A new executable that exits at
//! once, and one that never becomes ready, are rolled back: the old process serves on, the
//! child is gone, and the failure is one `error:` line. The same over the upgrade socket for a
//! server the old one did not start (SCM_RIGHTS), in per-core mode, and across a restart
//! through systemd's descriptor store.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Hardened, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Each load task's bound on requests (the test stops them long before).
const MAX_REQUESTS: u64 = 200_000;

/// Whether process `pid` still runs (exists and is no zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|end| stat[end + 1..].split_ascii_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X")
    })
}

/// Polls (bounded by `limit`) until process `pid` has ended.
async fn gone(pid: u32, limit: Duration) {
    let deadline = Instant::now() + limit;
    while alive(pid) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} still runs after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the processes it holds when dropped: the generations an upgrade started are not
/// this test's children, so a failing assertion must not leave them running.
struct Reap(Vec<u32>);

impl Drop for Reap {
    fn drop(&mut self) {
        for pid in &self.0 {
            if alive(*pid) {
                let _ = std::process::Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
    }
}

fn kill(signal: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// The pid of an `upgraded: pid N serves now` line.
fn upgraded_pid(line: &str) -> u32 {
    line.strip_prefix("upgraded: pid ")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("not an upgrade line: {line:?}"))
}

/// How one request went.
enum Exchange {
    /// 200, and whether the server said it closes the connection.
    Ok { closes: bool },
    /// The connection ended before any byte of the response: on a reused keep-alive
    /// connection, the server closed it between requests (the race every HTTP client retries
    /// an idempotent request after, RFC 9112 section 9.3.1).
    ClosedBeforeAnswer,
    /// Anything else.
    Failed(String),
}

/// Writes `GET path` on `stream` and reads one response (head and `Content-Length` body).
async fn exchange(stream: &mut TcpStream, path: &str, close: bool) -> Exchange {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: t\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    let io = async {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&response[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if response.len() >= end + 4 + length {
                    return Ok(Some(head));
                }
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Ok((!response.is_empty())
                    .then(String::new)
                    .map(|_| String::from_utf8_lossy(&response).into_owned()))
                .and_then(|head: Option<String>| match head {
                    None => Ok(None),
                    Some(partial) => Err(std::io::Error::other(format!(
                        "closed mid-response: {partial:?}"
                    ))),
                });
            }
            response.extend_from_slice(&buf[..n]);
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), io).await {
        Err(_) => Exchange::Failed(format!("GET {path}: no answer within 10 s")),
        Ok(Ok(None)) => Exchange::ClosedBeforeAnswer,
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::ConnectionReset => {
            Exchange::ClosedBeforeAnswer
        }
        Ok(Err(error)) => Exchange::Failed(format!("GET {path}: {error}")),
        Ok(Ok(Some(head))) if head.starts_with("http/1.1 200") => Exchange::Ok {
            closes: head.contains("\r\nconnection: close"),
        },
        Ok(Ok(Some(head))) => Exchange::Failed(format!("GET {path}: {head}")),
    }
}

/// Clients running until stopped: what they saw.
struct Load {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<(Vec<String>, u64)>>,
}

impl Load {
    /// Two keep-alive clients, two opening a connection per request, one with a 300 ms
    /// request in flight most of the time.
    fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (keep_alive, path) in [
            (true, "/"),
            (true, "/"),
            (false, "/"),
            (false, "/"),
            (false, "/slow?ms=300"),
        ] {
            let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut retried = 0;
                let mut stream: Option<TcpStream> = None;
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && sent < MAX_REQUESTS {
                    sent += 1;
                    let reused = stream.is_some();
                    let mut conn = match stream.take() {
                        Some(conn) => conn,
                        None => match TcpStream::connect(addr).await {
                            Ok(conn) => conn,
                            Err(error) => {
                                failures.push(format!("connect to {addr}: {error}"));
                                continue;
                            }
                        },
                    };
                    match exchange(&mut conn, path, !keep_alive).await {
                        Exchange::Ok { closes } => {
                            served.fetch_add(1, Ordering::Relaxed);
                            if keep_alive && !closes {
                                stream = Some(conn);
                            }
                        }
                        Exchange::ClosedBeforeAnswer if reused => retried += 1,
                        Exchange::ClosedBeforeAnswer => {
                            failures.push(format!("GET {path}: closed before any answer"));
                        }
                        Exchange::Failed(failure) => failures.push(failure),
                    }
                }
                (failures, retried)
            }));
        }
        Self {
            stop,
            served,
            tasks,
        }
    }

    /// Polls (bounded: 30 s) until `more` requests were served from now on.
    async fn serves(&self, more: u64) {
        let target = self.served.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.served.load(Ordering::Relaxed) < target {
            assert!(Instant::now() < deadline, "the load stalled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the clients: every failure they saw, and how many requests were served.
    async fn stop(self) -> (Vec<String>, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let mut failures = Vec::new();
        let mut retried = 0;
        for task in self.tasks {
            let (f, r) = task.await.expect("load task");
            failures.extend(f);
            retried += r;
        }
        (failures, self.served.load(Ordering::Relaxed), retried)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_upgrades_in_a_row_under_load_refuse_no_connection_and_fail_no_request() {
    let mut first = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--acceptors",
            "2",
        ],
        1,
    )
    .await;
    let (addr, admin) = (first.addr(), first.admin());
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 1.0);
    let load = Load::start(addr);
    load.serves(200).await;

    // The first upgrade: the old process exits 0 once the new one serves and it drained.
    first.signal("USR2");
    let second = upgraded_pid(
        &first
            .line_starting("upgraded: pid ", Duration::from_secs(60))
            .await,
    );
    let mut reap = Reap(vec![second]);
    assert_eq!(first.exited(Duration::from_secs(30)).await, 0);
    load.serves(200).await;
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 2.0);

    // The second, from the process the first one started.
    kill("USR2", second);
    let third = upgraded_pid(
        &first
            .line_starting("upgraded: pid ", Duration::from_secs(60))
            .await,
    );
    reap.0.push(third);
    gone(second, Duration::from_secs(30)).await;
    load.serves(200).await;
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 3.0);

    let (failures, served, retried) = load.stop().await;
    eprintln!("{served} requests served, {retried} retried after a close between requests");
    assert!(
        failures.is_empty(),
        "{} failed of {served} served ({retried} retried after a close between requests): {failures:?}",
        failures.len()
    );
    kill("TERM", third);
    gone(third, Duration::from_secs(30)).await;
}

/// A `hardened` with `--upgrade-exec exec`, `extra` flags and `env`.
async fn with_upgrade_exec(
    exec: &std::path::Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Hardened {
    let exec = exec.to_str().expect("a UTF-8 path");
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upgrade-exec",
        exec,
    ];
    args.extend_from_slice(extra);
    Hardened::start_with_env(&args, env, 1).await
}

/// An executable script in a fresh directory.
fn script(name: &str, body: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir =
        std::env::temp_dir().join(format!("portcullis-upgrade-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (dir, path)
}

/// Polls the admin's `series` (bounded: 30 s) until it is `value`.
async fn metric_is(admin: SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = metric(admin, series).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is {now}, not {value}, after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops `server` (it exits 0) and checks that the failure was told in exactly one
/// `error:` line on stderr over its whole life, holding `what`, and never at tracing's
/// ERROR level.
async fn stop_with_one_error_line(mut server: Hardened, what: &str) {
    let line = server
        .error_starting("error: upgrade failed", Duration::from_secs(10))
        .await;
    assert!(line.contains(what), "{line}");
    server.signal("TERM");
    assert_eq!(server.exited(Duration::from_secs(30)).await, 0);
    let rest = server.errors_to_the_end(Duration::from_secs(10)).await;
    assert!(
        !rest
            .iter()
            .any(|l| l.starts_with("error:") || l.contains(" ERROR ")),
        "more than one error line: {line:?} then {rest:?}"
    );
}

#[tokio::test]
async fn a_new_executable_that_exits_at_once_is_rolled_back() {
    let (dir, exec) = script("exits", "exit 3");
    let server = with_upgrade_exec(&exec, &[], &[]).await;
    let (addr, admin) = (server.addr(), server.admin());
    let load = Load::start(addr);
    load.serves(100).await;
    server.signal("USR2");
    metric_is(admin, "portcullis_upgrades_total{outcome=\"exited\"}", 1.0).await;
    load.serves(100).await;
    let (failures, served, _) = load.stop().await;
    assert!(failures.is_empty(), "of {served}: {failures:?}");
    assert_eq!(
        metric(admin, "portcullis_upgrades_total{outcome=\"ready\"}").await,
        0.0
    );
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 1.0);
    stop_with_one_error_line(server, "exited before it was ready").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_new_executable_never_ready_is_killed_after_the_timeout() {
    // It records its pid, then waits far longer than the upgrade's timeout.
    // (No fork before the pid is written: the pid file is named by the environment the
    // server passes on.)
    let (dir, exec) = script(
        "never-ready",
        "echo $$ > \"$UPGRADE_TEST_PID_FILE\"; exec sleep 600 >/dev/null 2>&1",
    );
    let pid_file = dir.join("pid");
    let server = with_upgrade_exec(
        &exec,
        &["--upgrade-timeout", "3s"],
        &[("UPGRADE_TEST_PID_FILE", pid_file.to_str().expect("utf8"))],
    )
    .await;
    let (addr, admin) = (server.addr(), server.admin());
    let load = Load::start(addr);
    load.serves(100).await;
    server.signal("USR2");
    metric_is(admin, "portcullis_upgrades_total{outcome=\"timeout\"}", 1.0).await;
    let child: u32 = std::fs::read_to_string(&pid_file)
        .expect("the child wrote its pid")
        .trim()
        .parse()
        .expect("a pid");
    let _reap = Reap(vec![child]);
    assert!(
        !alive(child),
        "the child {child} outlived the upgrade's timeout"
    );
    load.serves(100).await;
    let (failures, served, _) = load.stop().await;
    assert!(failures.is_empty(), "of {served}: {failures:?}");
    // Still the first generation, serving; and it drains as ever.
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 1.0);
    stop_with_one_error_line(server, "was not ready within 3s").await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_systemd_the_new_process_becomes_the_main_pid_and_the_old_one_falls_silent() {
    use std::os::unix::net::UnixDatagram;
    let (dir, path, socket) = common::notify_socket("upgrade-sd");
    // The watchdog as systemd sets it: for this process (WATCHDOG_PID), pinged every 100 ms.
    let script = format!(
        "NOTIFY_SOCKET='{}' WATCHDOG_USEC=200000 WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
        path.to_str().expect("utf8")
    );
    let mut server = Hardened::start_via_shell(&script, &["--listen", "127.0.0.1:0"], 1).await;
    let old = server.pid();
    let recv = |socket: &UnixDatagram, seen: &[String], what: &str| {
        let mut buf = [0u8; 512];
        let n = socket
            .recv(&mut buf)
            .unwrap_or_else(|error| panic!("no {what} within 10 s ({error}): {seen:?}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    while !seen.iter().any(|m| m == "STATUS=serving\n") {
        seen.push(recv(&socket, &seen, "STATUS=serving"));
    }
    assert!(seen.contains(&"READY=1\n".to_owned()), "{seen:?}");

    server.signal("USR2");
    let new = upgraded_pid(
        &server
            .line_starting("upgraded: pid ", Duration::from_secs(60))
            .await,
    );
    let _reap = Reap(vec![new]);
    assert_eq!(server.exited(Duration::from_secs(30)).await, 0);
    // The old process has exited: everything it sent is queued.
    let main_pid = format!("MAINPID={new}");
    seen.clear();
    while !seen.contains(&main_pid) {
        seen.push(recv(&socket, &seen, &main_pid));
    }
    socket.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 512];
    while let Ok(n) = socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    for expected in [
        format!("STATUS=upgrading: new process {new} started"),
        format!("READY=1\nSTATUS=serving (upgraded from pid {old})"),
    ] {
        assert!(seen.contains(&expected), "no {expected:?}: {seen:?}");
    }
    // The old process's drain never reads as the service stopping.
    assert!(
        !seen.iter().any(|m| m.contains("STOPPING=1")),
        "the old process told systemd it stops: {seen:?}"
    );
    // The new process keeps the watchdog fed: it is the main process now.
    socket.set_nonblocking(false).expect("blocking");
    let mut after = Vec::new();
    while !after.iter().any(|m| m == "WATCHDOG=1\n") {
        after.push(recv(&socket, &after, "WATCHDOG=1 from the new process"));
    }
    kill("TERM", new);
    gone(new, Duration::from_secs(30)).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_in_per_core_mode_refuses_no_connection_and_fails_no_request() {
    let mut first = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--per-core",
        ],
        1,
    )
    .await;
    let (addr, admin) = (first.addr(), first.admin());
    let load = Load::start(addr);
    load.serves(200).await;
    first.signal("USR2");
    let second = upgraded_pid(
        &first
            .line_starting("upgraded: pid ", Duration::from_secs(60))
            .await,
    );
    let _reap = Reap(vec![second]);
    assert_eq!(first.exited(Duration::from_secs(30)).await, 0);
    load.serves(200).await;
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 2.0);
    let (failures, served, retried) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed of {served} served ({retried} retried): {failures:?}",
        failures.len()
    );
    kill("TERM", second);
    gone(second, Duration::from_secs(30)).await;
}

/// Polls (bounded: 30 s) until a server answers on the upgrade socket at `path` (it binds it
/// once it serves, after its listener lines).
async fn serves_upgrades(path: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(path).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing serves {path} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh directory for an upgrade socket.
fn socket_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("portcullis-upsock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_started_on_the_upgrade_socket_take_over_twice_under_load() {
    let dir = socket_dir("takeover");
    let socket = dir.join("upgrade.sock");
    let socket = socket.to_str().expect("utf8");
    // Each server is started by this test, not by the one before: the sockets go over the
    // upgrade socket, never by inheritance.
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--acceptors",
        "2",
        "--upgrade-socket",
        socket,
    ];
    let mut first = Hardened::start(&args, 1).await;
    let (addr, admin) = (first.addr(), first.admin());
    serves_upgrades(socket).await;
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(socket)
            .expect("the upgrade socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the upgrade socket is private");
    }
    let load = Load::start(addr);
    load.serves(200).await;

    let mut second = Hardened::start(&args, 1).await;
    // The same sockets, admin's included: port 0 was not bound again.
    assert_eq!((second.addr(), second.admin()), (addr, admin));
    let line = first
        .line_starting("upgraded: pid ", Duration::from_secs(60))
        .await;
    assert_eq!(upgraded_pid(&line), second.pid());
    assert_eq!(first.exited(Duration::from_secs(30)).await, 0);
    load.serves(200).await;
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 2.0);

    let third = Hardened::start(&args, 1).await;
    assert_eq!(third.addr(), addr);
    let line = second
        .line_starting("upgraded: pid ", Duration::from_secs(60))
        .await;
    assert_eq!(upgraded_pid(&line), third.pid());
    assert_eq!(second.exited(Duration::from_secs(30)).await, 0);
    load.serves(200).await;
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 3.0);

    let (failures, served, retried) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} failed of {served} served ({retried} retried): {failures:?}",
        failures.len()
    );
    third.signal("TERM");
    assert_eq!(third.wait(Duration::from_secs(30)).await, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_the_upgrade_socket_never_ready_is_rolled_back_and_stops() {
    let dir = socket_dir("rollback");
    let socket = dir.join("upgrade.sock");
    let socket = socket.to_str().expect("utf8");
    let old = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--upgrade-socket",
            socket,
            "--upgrade-timeout",
            "2s",
        ],
        1,
    )
    .await;
    let (addr, admin) = (old.addr(), old.admin());
    serves_upgrades(socket).await;
    let load = Load::start(addr);
    load.serves(100).await;
    // Never ready: a critical check that cannot pass (nothing listens on port 1).
    let new = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--upgrade-socket",
            socket,
            "--ready-requires",
            "tcp://127.0.0.1:1",
        ],
        1,
    )
    .await;
    assert_eq!(new.addr(), addr, "it took the sockets over");
    metric_is(admin, "portcullis_upgrades_total{outcome=\"timeout\"}", 1.0).await;
    // It stops on its own: the old process cannot kill a process it did not start.
    assert_eq!(new.wait(Duration::from_secs(30)).await, 0);
    load.serves(100).await;
    let (failures, served, _) = load.stop().await;
    assert!(failures.is_empty(), "of {served}: {failures:?}");
    assert_eq!(metric(admin, "portcullis_upgrade_generation").await, 1.0);
    stop_with_one_error_line(old, "it was told to roll back").await;
    let _ = std::fs::remove_dir_all(dir);
}

/// One datagram of the notify socket and the descriptors it carried.
fn recv_with_fds(socket: &std::os::unix::net::UnixDatagram) -> (String, Vec<std::os::fd::OwnedFd>) {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    use std::mem::MaybeUninit;
    let mut text = [0u8; 4096];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = rustix::net::recvmsg(
        socket,
        &mut [std::io::IoSliceMut::new(&mut text)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .expect("a notification within 10 s");
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(passed) = message {
            fds.extend(passed);
        }
    }
    (
        String::from_utf8_lossy(&text[..received.bytes]).into_owned(),
        fds,
    )
}

/// Reads notifications until `listener-0` and `admin` were stored: each name's removal
/// first, then the socket. Returns the stored `listener-0`.
fn stored_sockets(socket: &std::os::unix::net::UnixDatagram) -> std::os::fd::OwnedFd {
    let mut seen = Vec::new();
    let mut listener = None;
    let mut admin = false;
    while listener.is_none() || !admin {
        let (state, mut fds) = recv_with_fds(socket);
        if let Some(name) = state.strip_prefix("FDSTORE=1\nFDNAME=") {
            assert_eq!(fds.len(), 1, "{state:?}");
            let name = name.trim_end();
            let removal = format!("FDSTOREREMOVE=1\nFDNAME={name}\n");
            assert!(
                seen.contains(&removal),
                "{name} stored without its removal first: {seen:?}"
            );
            match name {
                "listener-0" => listener = fds.pop(),
                "admin" => admin = true,
                _ => {}
            }
        } else {
            assert!(fds.is_empty(), "descriptors with {state:?}");
        }
        seen.push(state);
    }
    listener.expect("listener-0")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_descriptor_store_keeps_the_socket_and_its_queue_across_a_restart() {
    let (dir, path, notify) = common::notify_socket("fdstore");
    let notify_path = path.to_str().expect("utf8");
    // As systemd runs a service with FileDescriptorStoreMax=8.
    let env = [("NOTIFY_SOCKET", notify_path), ("FDSTORE", "8")];
    let first = Hardened::start_with_env(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--acceptors",
            "1",
        ],
        &env,
        1,
    )
    .await;
    let addr = first.addr();
    let stored = stored_sockets(&notify);
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(30)).await, 0);

    // No process serves now; the stored socket still queues this client's connection.
    let mut client = TcpStream::connect(addr)
        .await
        .expect("queued in the stored socket");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");

    // systemd's restart: the stored socket at descriptor 3, named, LISTEN_PID the process.
    let script = format!(
        "exec 3<&0 0</dev/null; NOTIFY_SOCKET='{notify_path}' FDSTORE=8 LISTEN_PID=$$ \
         LISTEN_FDS=1 LISTEN_FDNAMES=listener-0 exec \"$0\" \"$@\""
    );
    let port = addr.port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let second = Hardened::start_via_shell_with_stdin(
        &script,
        &["--listen", &listen, "--acceptors", "1"],
        std::process::Stdio::from(stored),
        1,
    )
    .await;
    assert_eq!(second.addr(), addr);
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), client.read_to_end(&mut response))
        .await
        .expect("the queued request is answered within 20 s")
        .expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    // The restarted process stores its socket again, under the same name.
    let (state, fds) = loop {
        let (state, fds) = recv_with_fds(&notify);
        if state.starts_with("FDSTORE=1\n") {
            break (state, fds);
        }
    };
    assert_eq!(state, "FDSTORE=1\nFDNAME=listener-0\n");
    assert_eq!(fds.len(), 1);
    second.signal("TERM");
    assert_eq!(second.wait(Duration::from_secs(30)).await, 0);
    let _ = std::fs::remove_dir_all(dir);
}

/// The sum of every series of `name` on `/metrics`.
async fn metric_sum(admin: SocketAddr, name: &str) -> f64 {
    common::get(admin, "/metrics")
        .await
        .lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_is_counted_as_draining_until_it_exits_across_unrelated_processes() {
    let dir = socket_dir("draining");
    let socket = dir.join("upgrade.sock");
    let socket = socket.to_str().expect("utf8");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--upgrade-socket",
        socket,
    ];
    let mut first = Hardened::start(&args, 1).await;
    let (addr, admin) = (first.addr(), first.admin());
    serves_upgrades(socket).await;
    // A request in flight that keeps the first generation draining for seconds.
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        match exchange(&mut stream, "/slow?ms=4000", true).await {
            Exchange::Ok { .. } => {}
            Exchange::ClosedBeforeAnswer => panic!("the slow request was cut"),
            Exchange::Failed(failure) => panic!("{failure}"),
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_sum(admin, "http_server_active_requests").await < 1.0 {
        assert!(Instant::now() < deadline, "the slow request never began");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = Hardened::start(&args, 1).await;
    first
        .line_starting("upgraded: pid ", Duration::from_secs(60))
        .await;
    // The first generation still drains its slow request: counted by the second.
    metric_is(admin, "portcullis_upgrade_draining_generations", 1.0).await;
    slow.await.expect("the slow request is answered in full");
    assert_eq!(first.exited(Duration::from_secs(30)).await, 0);
    // Gone: no longer counted.
    metric_is(admin, "portcullis_upgrade_draining_generations", 0.0).await;
    second.signal("TERM");
    assert_eq!(second.wait(Duration::from_secs(30)).await, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_asking_while_an_upgrade_is_on_probation_is_refused_and_fails_to_start() {
    let dir = socket_dir("probation");
    let socket = dir.join("upgrade.sock");
    let socket = socket.to_str().expect("utf8");
    let old = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upgrade-socket",
            socket,
            "--upgrade-timeout",
            "20s",
        ],
        1,
    )
    .await;
    let addr = old.addr();
    serves_upgrades(socket).await;
    // Never ready: the old process waits for it, and it waits for the old one's answer.
    let probation = Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upgrade-socket",
            socket,
            "--ready-requires",
            "tcp://127.0.0.1:1",
        ],
        1,
    )
    .await;
    assert_eq!(probation.addr(), addr);
    // A third server now: whichever of the two answers, it refuses (an upgrade is in
    // progress; not yet confirmed), and the third one fails to start, naming the socket.
    let (code, _, stderr) =
        common::run_to_exit(&["--listen", "127.0.0.1:0", "--upgrade-socket", socket]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        stderr.contains(socket) && stderr.contains("refused"),
        "{stderr}"
    );
    // Both serve on meanwhile.
    let response = common::get(addr, "/").await;
    assert!(response.ends_with("hello\n"), "{response}");
    probation.signal("TERM");
    assert_eq!(probation.wait(Duration::from_secs(30)).await, 0);
    old.signal("TERM");
    assert_eq!(old.wait(Duration::from_secs(30)).await, 0);
    let _ = std::fs::remove_dir_all(dir);
}
