//! The command-line contract: listener lines, flags, the config file, start-up failures.

mod common;

use common::{Hardened, get, run_to_exit};

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stderr, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr:?}");
    lines[0]
}

#[tokio::test]
async fn prints_one_line_per_listen_address_with_real_ports() {
    let server = Hardened::start(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"], 2).await;
    assert!(server.lines[0].starts_with("listening on http://127.0.0.1:"));
    assert!(
        server.lines[1].starts_with("listening on http://[::1]:"),
        "{:?}",
        server.lines
    );
    for addr in &server.addrs {
        assert_ne!(addr.port(), 0);
        let response = get(*addr, "/").await;
        assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
        assert!(response.ends_with("hello\n"), "{response}");
    }
}

#[tokio::test]
async fn bad_flag_is_one_clear_error_and_status_2() {
    let (code, stdout, stderr) = run_to_exit(&["--no-such-flag"]).await;
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        one_error_line(&stderr).contains("--no-such-flag"),
        "{stderr}"
    );

    let (code, _, stderr) = run_to_exit(&["--header-timeout", "soon"]).await;
    assert_eq!(code, 2);
    assert!(one_error_line(&stderr).contains("soon"), "{stderr}");
}

#[tokio::test]
async fn port_in_use_is_one_clear_error_and_status_2() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    // Several acceptors (SO_REUSEPORT among themselves) still refuse a port in use.
    let (code, stdout, stderr) = run_to_exit(&["--listen", &addr, "--acceptors", "2"]).await;
    assert_eq!(code, 2);
    assert!(stdout.is_empty(), "nothing is announced: {stdout}");
    let line = one_error_line(&stderr);
    assert!(line.contains(&addr), "names the address: {line}");
    assert!(
        line.to_lowercase().contains("in use"),
        "names the reason: {line}"
    );
}

#[tokio::test]
async fn unreadable_or_invalid_config_file_is_one_clear_error() {
    let (code, _, stderr) = run_to_exit(&["--config", "/nonexistent/portcullis.toml"]).await;
    assert_eq!(code, 2);
    assert!(
        one_error_line(&stderr).contains("/nonexistent/portcullis.toml"),
        "{stderr}"
    );

    let dir = std::env::temp_dir().join(format!("portcullis-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "listen = [\"127.0.0.1:0\"]\nno-such-key = 1\n").expect("write");
    let (code, _, stderr) = run_to_exit(&["--config", bad.to_str().expect("utf8")]).await;
    assert_eq!(code, 2);
    let line = one_error_line(&stderr);
    assert!(
        line.contains("bad.toml") && line.contains("no-such-key"),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn config_file_settings_apply_and_flags_override_them() {
    let dir = std::env::temp_dir().join(format!("portcullis-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("portcullis.toml");
    std::fs::write(
        &file,
        "listen = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\nheader-timeout = \"300ms\"\nidle-timeout = \"30s\"\nacceptors = 1\n",
    )
    .expect("write");
    let path = file.to_str().expect("utf8");

    // Both listeners come from the file; its header timeout applies: a silent connection is
    // closed long before the 10 s default.
    let server = Hardened::start(&["--config", path], 2).await;
    let started = std::time::Instant::now();
    let response = common::exchange(server.addr(), b"").await;
    assert!(response.is_empty());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(server);

    // A flag overrides the file: the silent connection now lasts the flag's 2 s.
    let server = Hardened::start(&["--config", path, "--header-timeout", "2s"], 2).await;
    let started = std::time::Instant::now();
    let response = common::exchange(server.addr(), b"").await;
    assert!(response.is_empty());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= std::time::Duration::from_millis(1900)
            && elapsed < std::time::Duration::from_secs(15),
        "{elapsed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn help_exits_zero() {
    let (code, stdout, _) = run_to_exit(&["--help"]).await;
    assert_eq!(code, 0);
    assert!(stdout.contains("--listen"));
}

#[tokio::test]
async fn bad_limit_flags_are_one_clear_error_each() {
    for (args, expected) in [
        (&["--rate", "0/s"][..], "the rate must be at least 1"),
        (&["--rate", "100"][..], "the rate has no unit"),
        (&["--rate", "10/s", "--burst", "0"][..], "--burst"),
        (&["--burst", "5"][..], "'--burst' needs '--rate'"),
        (&["--max-conns", "0"][..], "--max-conns"),
        (&["--max-conns-per-ip", "0"][..], "--max-conns-per-ip"),
        (&["--trusted-proxy", "10.0.0.0/33"][..], "10.0.0.0/33"),
        (&["--proxy-protocol"][..], "'--proxy-protocol' needs"),
    ] {
        let (code, stdout, stderr) = run_to_exit(args).await;
        assert_eq!(code, 2, "{args:?}");
        assert!(stdout.is_empty(), "{args:?}");
        assert!(
            one_error_line(&stderr).contains(expected),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test]
async fn limit_settings_come_from_the_config_file_too() {
    let dir = std::env::temp_dir().join(format!("portcullis-limits-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("portcullis.toml");
    std::fs::write(
        &file,
        "listen = [\"127.0.0.1:0\"]\nrate = \"1/m\"\nmax-conns-per-ip = 5\ntrusted-proxy = [\"10.0.0.0/8\"]\n",
    )
    .expect("write config");
    let server = Hardened::start(&["--config", file.to_str().expect("utf8")], 1).await;
    assert!(get(server.addr(), "/").await.starts_with("HTTP/1.1 200"));
    let limited = get(server.addr(), "/").await;
    assert!(limited.starts_with("HTTP/1.1 429"), "{limited}");
    let _ = std::fs::remove_dir_all(&dir);
}
