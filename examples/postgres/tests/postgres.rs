//! The example against a real PostgreSQL server, started here from Debian's `postgresql`
//! package (`initdb` into a temporary directory, run as the `postgres` user when the tests
//! run as root): readiness follows the database down and back, requests in flight at SIGTERM
//! finish, and a query past its deadline is answered, never left hanging.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_postgres-example");

/// The directory of PostgreSQL's server programs: `PG_BIN`, or the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout).
fn pg_bin() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server programs in /usr/lib/postgresql (Debian package postgresql; scripts/test.sh installs it)")
        .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
        .filter(|bin| bin.join("postgres").exists())
        .collect();
    versions.sort_by_key(|bin| {
        bin.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
    });
    versions
        .pop()
        .expect("a PostgreSQL server under /usr/lib/postgresql")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                line.strip_prefix("Uid:")?
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            })
        })
        .is_some_and(|uid| uid == "0")
}

/// `program` from PostgreSQL's bin directory, as the `postgres` user when we are root
/// (PostgreSQL refuses to run as root).
fn pg_command(program: &str) -> std::process::Command {
    let path = pg_bin().join(program);
    if is_root() {
        let mut command = std::process::Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        std::process::Command::new(path)
    }
}

/// A PostgreSQL server of this test's own, on a free loopback port.
struct Postgres {
    dir: PathBuf,
    port: u16,
    server: Option<std::process::Child>,
}

impl Postgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-pg-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).expect("make the data directory's parent");
        if is_root() {
            let status = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(status.success(), "chown the data directory to postgres");
        }
        let output = pg_command("initdb")
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut postgres = Self {
            dir,
            port,
            server: None,
        };
        postgres.run();
        postgres
    }

    /// Starts the server on its data directory and waits until it accepts connections.
    fn run(&mut self) {
        let server = pg_command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "fsync=off",
            ])
            .arg("-k")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let ready = pg_command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "1"])
                .stdout(Stdio::null())
                .status()
                .expect("pg_isready");
            if ready.success() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "PostgreSQL not accepting after 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The postmaster's process id, from its pid file.
    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("data/postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned))
    }

    /// Stops the server (fast shutdown: sessions are closed) and waits for it.
    fn stop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid])
                .status();
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.wait();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while self.pid().is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-QUIT", &pid])
                .status();
        }
        if let Some(mut server) = self.server.take() {
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The example, running.
struct App {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
}

impl App {
    async fn start(postgres: &Postgres, extra: &[&str]) -> Self {
        let url = postgres.url();
        let mut child = Command::new(BIN)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--database-url",
                &url,
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the example");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut next = async || {
            tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("a line within 60 s")
                .expect("read")
                .expect("the example exited")
        };
        let addr = next()
            .await
            .strip_prefix("listening on http://")
            .expect("listening line")
            .parse()
            .expect("addr");
        let admin = next()
            .await
            .strip_prefix("admin on http://")
            .expect("admin line")
            .parse()
            .expect("addr");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Self { child, addr, admin }
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    async fn exit_code(mut self) -> i32 {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exits within 30 s")
            .expect("wait")
            .code()
            .expect("an exit code")
    }
}

/// One request with `Connection: close`; returns (status, headers and body as text, how long
/// the answer took).
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String, Duration) {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("an answer within 30 s: never a hang")
        .expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not HTTP: {text:?}"));
    (status, text, started.elapsed())
}

async fn until_status(addr: SocketAddr, path: &str, want: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, text, _) = request(addr, "GET", path, "").await;
        if status == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} still {text:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn body(text: &str) -> &str {
    text.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

#[tokio::test]
async fn readiness_follows_the_database_down_and_back_and_failures_are_answered_at_once() {
    let mut postgres = Postgres::start();
    let app = App::start(&postgres, &[]).await;
    until_status(app.admin, "/readyz", 200, Duration::from_secs(20)).await;

    let (status, text, _) = request(app.addr, "POST", "/items", r#"{"name":"lamp"}"#).await;
    assert_eq!(status, 201, "{text}");
    assert!(body(&text).contains(r#""name":"lamp""#), "{text}");
    let (status, text, _) = request(app.addr, "GET", "/items/1", "").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("server-timing: db;dur="),
        "{text}"
    );
    let (status, _, _) = request(app.addr, "GET", "/items/999", "").await;
    assert_eq!(status, 404);
    let (_, scrape, _) = request(app.admin, "GET", "/metrics", "").await;
    assert!(
        scrape.contains(r#"http_route="/items/{id}""#),
        "route templates in the metrics"
    );
    assert!(
        scrape.contains(r#"postgres_query_duration_seconds_count{query="get_item"} 2"#),
        "{scrape}"
    );

    // The database goes away: readiness follows (after 3 failed checks), liveness does not,
    // and a request that needs it is answered at once with 503, never left waiting.
    postgres.stop();
    until_status(app.admin, "/readyz", 503, Duration::from_secs(20)).await;
    let (_, verbose, _) = request(app.admin, "GET", "/readyz?verbose", "").await;
    assert!(body(&verbose).contains("check postgres: down"), "{verbose}");
    assert_eq!(request(app.admin, "GET", "/livez", "").await.0, 200);
    let (status, text, took) = request(app.addr, "GET", "/items/1", "").await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
    // Routes without the database still serve.
    assert_eq!(request(app.addr, "GET", "/", "").await.0, 200);

    // Back: ready again after 2 good checks, and the data is still there.
    postgres.run();
    until_status(app.admin, "/readyz", 200, Duration::from_secs(20)).await;
    let (status, text, _) = request(app.addr, "GET", "/items/1", "").await;
    assert_eq!(status, 200, "{text}");
    assert!(body(&text).contains("lamp"));
    let (_, scrape, _) = request(app.admin, "GET", "/metrics", "").await;
    assert!(
        scrape
            .contains(r#"portcullis_health_check_transitions_total{check="postgres",to="down"} 1"#),
        "{scrape}"
    );
    app.signal("TERM");
    assert_eq!(app.exit_code().await, 0);
}

#[tokio::test]
async fn requests_in_flight_at_sigterm_finish_before_the_pool_closes() {
    let postgres = Postgres::start();
    let app = App::start(&postgres, &[]).await;
    until_status(app.admin, "/readyz", 200, Duration::from_secs(20)).await;
    let addr = app.addr;
    let slow = tokio::spawn(async move { request(addr, "GET", "/slow?ms=1500", "").await });
    // Wait until the request is in the application (the active-requests gauge), then stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, scrape, _) = request(app.admin, "GET", "/metrics", "").await;
        let active = scrape
            .lines()
            .filter(|line| line.starts_with("http_server_active_requests{"))
            .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>();
        if active >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the slow request never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.signal("TERM");
    let (status, text, _) = slow.await.expect("request task");
    assert_eq!(status, 200, "the request in flight finished: {text}");
    assert_eq!(body(&text), "ok\n");
    assert_eq!(app.exit_code().await, 0, "a clean drain");
}

#[tokio::test]
async fn a_query_past_its_deadline_is_answered_with_504_and_the_pool_keeps_serving() {
    let postgres = Postgres::start();
    let app = App::start(&postgres, &["--query-timeout", "300ms"]).await;
    until_status(app.admin, "/readyz", 200, Duration::from_secs(20)).await;
    let (status, text, took) = request(app.addr, "GET", "/slow?ms=5000", "").await;
    assert_eq!(status, 504, "{text}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The connection it used is fine (the server cancelled the query too): more queries work.
    for _ in 0..20 {
        let (status, text, _) = request(app.addr, "GET", "/slow?ms=1", "").await;
        assert_eq!(status, 200, "{text}");
    }
    let (_, scrape, _) = request(app.admin, "GET", "/metrics", "").await;
    assert!(
        scrape.contains(r#"postgres_query_errors_total{query="slow",error="timeout"} 1"#),
        "{scrape}"
    );
    app.signal("TERM");
    assert_eq!(app.exit_code().await, 0);
}
