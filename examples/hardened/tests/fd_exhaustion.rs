//! File-descriptor exhaustion: under a lowered RLIMIT_NOFILE and more connections than it
//! has descriptors, the server stays alive, stays cheap on CPU, sheds the backlog instead of
//! leaving clients hanging, and serves again as soon as descriptors free up.

mod common;

use std::time::{Duration, Instant};

use common::Hardened;
use tokio::io::AsyncReadExt;

use tokio::net::TcpStream;

/// `GET /` that reports failure instead of panicking: the server may still be shedding.
async fn try_get(addr: std::net::SocketAddr) -> Option<String> {
    common::try_get(addr, Duration::from_secs(3)).await
}

/// User + system CPU time of a process so far, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

fn clock_ticks_per_second() -> u64 {
    let output = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .expect("getconf");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_descriptor_exhaustion_and_recovers() {
    const LIMIT: u32 = 64;
    const CLIENTS: usize = 200;
    let mut server = Hardened::start_via_shell(
        &format!("ulimit -n {LIMIT} && exec \"$0\" \"$@\""),
        // Long header timeout: the silent clients keep their descriptors for the whole test.
        &[
            "--listen",
            "127.0.0.1:0",
            "--acceptors",
            "1",
            "--header-timeout",
            "120s",
        ],
        1,
    )
    .await;
    let addr = server.addr();
    let pid = server.pid();

    // Three times more connections than the server has descriptors.
    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        // The backlog may be full for a moment; that is fine, the point is the overload.
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await
        {
            clients.push(stream);
        }
    }
    assert!(
        clients.len() > LIMIT as usize,
        "only {} clients connected",
        clients.len()
    );

    // The overflow is shed: some of the connections beyond the limit are closed by the
    // server (accept-and-close with the reserve descriptor) instead of hanging in the backlog.
    let mut shed = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for client in clients.iter_mut().rev().take(CLIENTS - LIMIT as usize) {
        let mut buf = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout_at(deadline, client.read(&mut buf)).await {
            shed += 1;
        }
    }
    assert!(
        shed > 0,
        "no queued connection was shed while descriptors were exhausted"
    );

    // Alive, and cheap on CPU while still exhausted: no busy accept loop.
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "server exited"
    );
    let ticks_before = cpu_ticks(pid);
    let window_start = Instant::now();
    // Keep knocking during the window so the accept loop has work to fail at.
    let mut knocks = Vec::new();
    while window_start.elapsed() < Duration::from_secs(2) {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            knocks.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let used = cpu_ticks(pid) - ticks_before;
    let window = window_start.elapsed().as_secs_f64();
    let cpu_share = used as f64 / clock_ticks_per_second() as f64 / window;
    assert!(
        cpu_share < 0.5,
        "server used {:.0}% of a core while exhausted",
        cpu_share * 100.0
    );
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "server exited"
    );

    // Descriptors free up: the server serves again.
    drop(knocks);
    drop(clients);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if try_get(addr).await.is_some_and(|r| r.ends_with("hello\n")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not serving 15 s after descriptors were freed"
        );
    }

    server.signal("TERM");
    let code = server.wait(Duration::from_secs(30)).await;
    assert_eq!(code, 0);
}
