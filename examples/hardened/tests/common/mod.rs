//! Runs the `hardened` binary as a child process and talks to it over loopback.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The binary under test, built by cargo for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_hardened");

/// A running `hardened` child process.
pub struct Hardened {
    pub child: Child,
    /// The addresses from its `listening on` lines, in order.
    pub addrs: Vec<SocketAddr>,
    /// The `listening on` lines as printed.
    pub lines: Vec<String>,
    /// The address of the `admin on` line (printed after the listener lines) with `--admin`.
    pub admin: Option<SocketAddr>,
    /// The stdout lines after those (of this process, and of those it started).
    later: tokio::sync::mpsc::UnboundedReceiver<String>,
    /// Its stderr lines (passed on to this process's stderr as well).
    errors: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Hardened {
    /// Starts `hardened` with `args` and waits for `listeners` lines of `listening on`.
    pub async fn start(args: &[&str], listeners: usize) -> Self {
        Self::start_command(Command::new(BIN), args, listeners).await
    }

    /// Starts it through `sh -c SCRIPT` with `stdin` (the script moves it where it wants).
    pub async fn start_via_shell_with_stdin(
        script: &str,
        args: &[&str],
        stdin: Stdio,
        listeners: usize,
    ) -> Self {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg(BIN);
        Self::start_with_stdin(command, args, stdin, listeners).await
    }

    /// Starts it through `sh -c SCRIPT` (the script must `exec "$0" "$@"`).
    pub async fn start_via_shell(script: &str, args: &[&str], listeners: usize) -> Self {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).arg(BIN);
        Self::start_command(command, args, listeners).await
    }

    /// Starts `hardened` with extra environment variables.
    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)], listeners: usize) -> Self {
        let mut command = Command::new(BIN);
        command.envs(env.iter().copied());
        Self::start_command(command, args, listeners).await
    }

    async fn start_command(command: Command, args: &[&str], listeners: usize) -> Self {
        Self::start_with_stdin(command, args, Stdio::null(), listeners).await
    }

    async fn start_with_stdin(
        mut command: Command,
        args: &[&str],
        stdin: Stdio,
        listeners: usize,
    ) -> Self {
        command
            .args(args)
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn hardened");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, errors) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                let _ = tx.send(line);
            }
        });
        let stdout = child.stdout.take().expect("stdout");
        let mut lines_in = BufReader::new(stdout).lines();
        let mut addrs = Vec::new();
        let mut lines = Vec::new();
        while addrs.len() < listeners {
            let line = tokio::time::timeout(Duration::from_secs(60), lines_in.next_line())
                .await
                .expect("listening line within 60 s")
                .expect("read stdout")
                .expect("hardened exited before listening");
            let addr = line
                .strip_prefix("listening on http://")
                .or_else(|| line.strip_prefix("listening on https://"))
                .unwrap_or_else(|| panic!("unexpected stdout line {line:?}"));
            addrs.push(addr.parse().expect("a socket address"));
            lines.push(line);
        }
        let mut admin = None;
        if args.contains(&"--admin") {
            let line = tokio::time::timeout(Duration::from_secs(60), lines_in.next_line())
                .await
                .expect("admin line within 60 s")
                .expect("read stdout")
                .expect("hardened exited before the admin line");
            let addr = line
                .strip_prefix("admin on http://")
                .unwrap_or_else(|| panic!("expected the admin line, got {line:?}"));
            admin = Some(addr.parse().expect("a socket address"));
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        let (tx, later) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines_in.next_line().await {
                let _ = tx.send(line);
            }
        });
        Self {
            child,
            addrs,
            lines,
            admin,
            later,
            errors,
        }
    }

    /// The next stderr line that starts with `prefix`, within `limit`.
    pub async fn error_starting(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.errors.recv())
                .await
                .unwrap_or_else(|_| panic!("no stderr line {prefix:?} within {limit:?}"))
                .unwrap_or_else(|| panic!("stderr closed before a line {prefix:?}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    /// The stderr lines not read yet, up to its end (the process and every process it
    /// started closed it), within `limit`.
    pub async fn errors_to_the_end(&mut self, limit: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut lines = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.errors.recv()).await {
                Ok(Some(line)) => lines.push(line),
                Ok(None) => return lines,
                Err(_) => panic!("stderr still open after {limit:?}: {lines:?}"),
            }
        }
    }

    /// The next stdout line after the start-up lines (from this process or one it started,
    /// which share its stdout) that starts with `prefix`, within `limit`.
    pub async fn line_starting(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.later.recv())
                .await
                .unwrap_or_else(|_| panic!("no stdout line {prefix:?} within {limit:?}"))
                .unwrap_or_else(|| panic!("stdout closed before a line {prefix:?}"));
            if line.starts_with(prefix) {
                return line;
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("started with --admin")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("child still running")
    }

    /// Sends a signal by name (`TERM`, `INT`) with the `kill` utility.
    pub fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(mut self, limit: Duration) -> i32 {
        self.exited(limit).await
    }

    /// [`wait`](Self::wait) keeping the handle (its later stdout lines).
    pub async fn exited(&mut self, limit: Duration) -> i32 {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("hardened still running after {limit:?}"))
            .expect("wait");
        status.code().expect("exited with a code, not a signal")
    }
}

/// Runs `hardened` to completion (for start-up failures) and returns (code, stdout, stderr).
pub async fn run_to_exit(args: &[&str]) -> (i32, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new(BIN).args(args).stdin(Stdio::null()).output(),
    )
    .await
    .expect("exits within 60 s")
    .expect("run hardened");
    (
        output.status.code().expect("exit code"),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Sends raw bytes on a new connection and reads the whole answer until the server closes.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("answer within 20 s")
        .expect("read");
    String::from_utf8_lossy(&response).into_owned()
}

/// `GET /` with `Connection: close` that reports failure instead of panicking (the server
/// may be shedding or out of descriptors): the raw response, or `None` if connecting,
/// writing or reading failed or took longer than `limit`.
pub async fn try_get(addr: SocketAddr, limit: Duration) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}

/// `GET path` with `Connection: close`; returns the raw response.
pub async fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
}

/// The value of the series `name{labels}` (exactly as exported) on `/metrics`, 0 if absent.
pub async fn metric(admin: SocketAddr, series: &str) -> f64 {
    let scrape = get(admin, "/metrics").await;
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// Scrapes until `series` reaches `at_least`: for what the server records after the client
/// saw the connection close. Bounded by a 20 s deadline.
pub async fn metric_reaches(admin: SocketAddr, series: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let value = metric(admin, series).await;
        if value >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{series} is {value}, still below {at_least} after 20 s"
        );
        tokio::task::yield_now().await;
    }
}

/// A systemd notify socket in a fresh directory (`name` keeps tests apart), reading with a
/// 10 s timeout: the directory to remove, the socket's path, the socket.
pub fn notify_socket(
    name: &str,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::os::unix::net::UnixDatagram,
) {
    let dir = std::env::temp_dir().join(format!("portcullis-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("notify.sock");
    let _ = std::fs::remove_file(&path);
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    (dir, path, socket)
}
