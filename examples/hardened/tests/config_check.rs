//! `--config FILE` and `--check-config`: the example file of docs/configuration.md passes, each
//! dangerous combination is one `warning: ` line (exit 0), each start-up error one `error: `
//! line (exit 2); usage errors name the flag; `0s` turns a timeout off.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{BIN, Hardened, run_to_exit};
use portcullis::config::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/hardened.example.toml"
);
const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");

/// A fresh directory under the system temp dir, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("hardened-check-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("temp dir");
        Dir(path)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write");
        path.to_str().expect("utf8").to_owned()
    }

    /// A self-signed certificate and its key, the key with `mode`.
    fn tls(&self, mode: u32) -> (String, String) {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let cert = self.write("cert.pem", &certified.cert.pem());
        let key = self.write("key.pem", &certified.signing_key.serialize_pem());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).expect("chmod");
        (cert, key)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `hardened` under `sh -c SCRIPT` (which must `exec "$0" "$@"`) to exit: (code, stdout, stderr).
async fn run_via_shell(script: &str, args: &[&str]) -> (i32, String, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output(),
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

/// The soft descriptor limit raised to the hard one, so that the default caps fit.
const RAISED: &str = "ulimit -Sn \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" \"$@\"";

fn hard_nofile_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

/// The one line of stderr, which begins with `prefix`.
fn one_line<'a>(stderr: &'a str, prefix: &str) -> &'a str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got {stderr:?}");
    assert!(lines[0].starts_with(prefix), "{stderr:?}");
    lines[0]
}

#[tokio::test]
async fn the_example_file_passes_with_no_warning() {
    let dir = Dir::new("example");
    let (cert, key) = dir.tls(0o600);
    // The example's TLS paths are a deployment's; flags override them with real files.
    let args = [
        "--config",
        EXAMPLE,
        "--check-config",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let (code, stdout, stderr) = run_via_shell(RAISED, &args).await;
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(code, 0, "{stderr}");
    let example = ServerConfig::from_file(EXAMPLE).expect("the example parses");
    if hard_nofile_limit().is_some_and(|hard| hard / 2 < example.max_conns.get() as u64) {
        // A machine whose hard limit is below what the example asks for.
        assert!(one_line(&stderr, "warning: '--max-conns' ").contains("RLIMIT_NOFILE"));
    } else {
        assert!(stderr.is_empty(), "no warnings: {stderr}");
    }
}

#[tokio::test]
async fn the_example_and_the_doc_cover_every_key() {
    let example = std::fs::read_to_string(EXAMPLE).expect("example");
    let doc = std::fs::read_to_string(DOC).expect("doc");
    for key in ServerConfig::KEYS {
        assert!(
            example
                .lines()
                .any(|line| line.starts_with(&format!("{key} = "))),
            "the example sets {key}"
        );
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "the doc's table has {key}"
        );
    }
    assert!(
        doc.contains(&format!("```toml\n{example}```")),
        "the doc includes the example as it is"
    );
    for unit in ["N/s", "N/m", "N/h", "`sec`", "`minute`", "`hour`", "burst"] {
        assert!(doc.contains(unit), "the doc names the rate unit {unit}");
    }
}

#[tokio::test]
async fn a_clean_configuration_prints_nothing() {
    let (code, stdout, stderr) = run_to_exit(&[
        "--check-config",
        "--listen",
        "127.0.0.1:0",
        "--max-conns",
        "100",
    ])
    .await;
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, "", ""));
}

#[tokio::test]
async fn each_dangerous_combination_is_one_warning_naming_the_setting() {
    let dir = Dir::new("warnings");
    let (cert, key) = dir.tls(0o644);
    let cases: [(&[&str], &str, &str); 8] = [
        (
            &["--header-timeout", "0s"],
            "'--header-timeout' is off",
            "10s",
        ),
        (&["--idle-timeout", "0s"], "'--idle-timeout' is off", "60s"),
        (
            &["--trusted-proxy", "0.0.0.0/0"],
            "'--trusted-proxy' 0.0.0.0/0",
            "list only",
        ),
        (
            &["--trusted-proxy", "::/0"],
            "'--trusted-proxy' ::/0",
            "list only",
        ),
        (
            &["--drain-delay", "10s", "--drain-timeout", "25s"],
            "'--drain-delay' + '--drain-timeout' is 35s",
            "shorten",
        ),
        (
            &["--tls-cert", &cert, "--tls-key", &key],
            "'--tls-key' ",
            "chmod 600",
        ),
        (
            &["--admin", "0.0.0.0:9090"],
            "'--admin' 0.0.0.0:9090 is not a loopback",
            "127.0.0.1",
        ),
        (
            &["--admin", "[::]:9090"],
            "'--admin' [::]:9090 is not a loopback",
            "127.0.0.1",
        ),
    ];
    for (extra, start, fix) in cases {
        let mut args = vec!["--check-config", "--max-conns", "100"];
        args.extend_from_slice(extra);
        let (code, stdout, stderr) = run_to_exit(&args).await;
        assert_eq!(code, 0, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        let line = one_line(&stderr, &format!("warning: {start}"));
        assert!(line.contains(fix), "{args:?}: says what to change: {line}");
    }
    // The same key readable by its owner only: no warning.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let args = [
        "--check-config",
        "--max-conns",
        "100",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let (code, _, stderr) = run_to_exit(&args).await;
    assert_eq!((code, stderr.as_str()), (0, ""));

    // max-conns above half of the soft descriptor limit.
    let args = ["--check-config", "--max-conns", "600"];
    let (code, _, stderr) = run_via_shell("ulimit -n 1024 && exec \"$0\" \"$@\"", &args).await;
    assert_eq!(code, 0, "{stderr}");
    let line = one_line(&stderr, "warning: '--max-conns' is 600");
    assert!(
        line.contains("RLIMIT_NOFILE 1024") && line.contains("lower it to 512"),
        "{line}"
    );
    let (code, _, stderr) = run_via_shell(
        "ulimit -n 1024 && exec \"$0\" \"$@\"",
        &["--check-config", "--max-conns", "512"],
    )
    .await;
    assert_eq!((code, stderr.as_str()), (0, ""));
}

#[tokio::test]
async fn warnings_come_from_the_file_too_and_errors_exit_2() {
    let dir = Dir::new("file-warnings");
    let file = dir.write("warn.toml", "idle-timeout = \"0s\"\nmax-conns = 100\n");
    let (code, _, stderr) = run_to_exit(&["--config", &file, "--check-config"]).await;
    assert_eq!(code, 0, "{stderr}");
    one_line(&stderr, "warning: '--idle-timeout' is off");

    // A flag overrides the file's dangerous value.
    let (code, _, stderr) =
        run_to_exit(&["--config", &file, "--check-config", "--idle-timeout", "30s"]).await;
    assert_eq!((code, stderr.as_str()), (0, ""));

    // Errors and warnings together: every one printed, exit 2.
    let (code, _, stderr) =
        run_to_exit(&["--config", &file, "--check-config", "--burst", "5"]).await;
    assert_eq!(code, 2, "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines,
        ["error: '--burst' needs '--rate'", lines[1]],
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("warning: '--idle-timeout'"),
        "{stderr}"
    );
}

#[tokio::test]
async fn each_start_up_error_is_one_error_line_and_exit_2() {
    let dir = Dir::new("errors");
    let unknown = dir.write("unknown.toml", "listen = [\"127.0.0.1:0\"]\nmax-con = 10\n");
    let duration = dir.write("duration.toml", "\nheader-timeout = \"5\"\n");
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (
            vec!["--config", &unknown],
            vec![
                "unknown.toml",
                "line 2",
                "`max-con`",
                "did you mean `max-conns`",
            ],
        ),
        (
            vec!["--config", &duration],
            vec!["duration.toml", "line 2", "`header-timeout`", "\"5\""],
        ),
        (
            vec!["--config", "/nonexistent/hardened.toml"],
            vec!["cannot read config file /nonexistent/hardened.toml"],
        ),
        (
            vec!["--header-timeout", "5"],
            vec!["'--header-timeout <DUR>'", "\"5\""],
        ),
        (
            vec!["--tls-cert", "cert.pem"],
            vec!["'--tls-cert' needs '--tls-key'"],
        ),
        (
            vec!["--tls-key", "key.pem"],
            vec!["'--tls-key' needs '--tls-cert'"],
        ),
        (
            vec![
                "--tls-cert",
                "/nonexistent/cert.pem",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            vec!["/nonexistent/cert.pem"],
        ),
        (vec!["--listen"], vec!["'--listen <ADDR>'"]),
        (
            vec!["--acceptors", "0"],
            vec!["'--acceptors <N>'", "at least 1"],
        ),
        (vec!["--rate", "5/d"], vec!["'--rate <N/s>'", "5/d"]),
    ];
    for (args, expected) in cases {
        // Both with --check-config and when starting for real.
        for check in [true, false] {
            let mut args = args.clone();
            if check {
                args.push("--check-config");
            }
            let (code, stdout, stderr) = run_to_exit(&args).await;
            assert_eq!(code, 2, "{args:?}: {stderr}");
            assert!(stdout.is_empty(), "{args:?}: {stdout}");
            let line = one_line(&stderr, "error: ");
            for part in &expected {
                assert!(line.contains(part), "{args:?}: {part} in {line}");
            }
        }
    }
}

#[tokio::test]
async fn help_documents_every_rate_unit_and_check_config() {
    let (code, stdout, _) = run_to_exit(&["--help"]).await;
    assert_eq!(code, 0);
    for text in [
        "N/s",
        "N/m",
        "N/h",
        "N/sec",
        "N/minute",
        "N/hour",
        "burst B",
        "--check-config",
        "0s",
    ] {
        assert!(stdout.contains(text), "--help mentions {text}");
    }
}

#[tokio::test]
async fn zero_turns_the_header_and_idle_timeouts_off() {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--header-timeout",
        "0s",
        "--idle-timeout",
        "0s",
    ];
    let server = Hardened::start(&args, 1).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    // A zero deadline would close the connection at once; off, it waits for the request.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..2 {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        let mut answer = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello\n"),
            "{answer}"
        );
        // Idle between requests: still open.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
