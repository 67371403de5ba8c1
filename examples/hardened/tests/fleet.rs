//! `--redis`, `--fleet-size` and `--redis-timeout` against a real `redis-server` on loopback:
//! two servers hold one quota, and each fault (`kill -9` and a restart, `SIGSTOP`/`SIGCONT`,
//! `CLIENT PAUSE`, `SCRIPT FLUSH`) costs no 5xx and no request stalled past the deadline,
//! limiting goes on locally at rate / fleet size, and the shared quota is back afterwards.
//! 127.0.0.x addresses act as distinct clients.

mod common;
#[path = "common/redis.rs"]
mod redis;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Hardened, run_to_exit};
use redis::RedisServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The longest a request may take while Redis fails: the deadline (`--redis-timeout 20ms`)
/// plus room for a loaded machine, and half the 1 s the `redis` crate itself would wait. A
/// server waiting on Redis (a stopped process, a paused client) would take a second, many
/// seconds or forever. The call durations in the scrape are checked against the deadline
/// itself (`no_call_past_the_deadline`).
const NO_STALL: Duration = Duration::from_millis(500);

/// `GET /` from `client` on a new connection: the status and how long the exchange took.
async fn get_from(addr: SocketAddr, client: &str) -> (u16, Duration) {
    let client: IpAddr = client.parse().expect("a client address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(client, 0))
        .expect("bind the client address");
    let started = Instant::now();
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response))
        .await
        .expect("an answer within 20 s")
        .expect("read");
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    (status, elapsed)
}

/// `n` requests from `client`: their statuses, each checked for no 5xx and no stall.
async fn statuses(addr: SocketAddr, client: &str, n: usize) -> Vec<u16> {
    let mut statuses = Vec::with_capacity(n);
    for _ in 0..n {
        let (status, elapsed) = get_from(addr, client).await;
        assert!(status < 500, "{client} got {status}");
        assert!(
            elapsed < NO_STALL,
            "{client} waited {elapsed:?} for a {status}"
        );
        statuses.push(status);
    }
    statuses
}

/// The value of the metric line starting with `series` (name and labels as rendered).
async fn metric(server: &Hardened, series: &str) -> f64 {
    let scrape = common::get(server.admin(), "/metrics").await;
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in the scrape:\n{scrape}"))
}

/// A counter's value, 0 before its series exists (a limiter's series appear with its first
/// check).
async fn counter(server: &Hardened, series: &str) -> f64 {
    let scrape = common::get(server.admin(), "/metrics").await;
    scrape
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().expect("a number"))
}

/// Polls the scrape (bounded: 15 s) until `series` has `value`.
async fn await_metric(server: &Hardened, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = metric(server, series).await;
        if now == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} is still {now}, not {value}, after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const FALLBACK: &str = "portcullis_limit_fleet_fallback_active";
const LOCAL: &str = "portcullis_limit_fleet_checks_total{limiter=\"per-client\",decided=\"local\"}";
const SHARED: &str =
    "portcullis_limit_fleet_checks_total{limiter=\"per-client\",decided=\"redis\"}";
const NOSCRIPT: &str = "portcullis_limit_redis_script_loads_total{reason=\"noscript\"}";

/// A server limiting `rate` across a fleet of `fleet` in `redis`, with its admin listener.
async fn fleet_server(redis: &RedisServer, rate: &str, fleet: &str) -> Hardened {
    let url = redis.url();
    Hardened::start(
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--rate",
            rate,
            "--redis",
            &url,
            "--fleet-size",
            fleet,
            "--redis-timeout",
            "20ms",
        ],
        1,
    )
    .await
}

fn allowed(statuses: &[u16]) -> usize {
    statuses.iter().filter(|status| **status == 200).count()
}

#[tokio::test]
async fn two_servers_sharing_a_redis_hold_one_quota_per_client() {
    let redis = RedisServer::start();
    // Each server probes Redis once at start-up, before its listener lines: a server that
    // says it listens has tried Redis already.
    let one = fleet_server(&redis, "4/m", "2").await;
    assert_eq!(redis.calls("evalsha"), 1);
    let two = fleet_server(&redis, "4/m", "2").await;
    assert_eq!(redis.calls("evalsha"), 2);
    // Count the checks from here.
    let before = redis.calls("evalsha");
    let (one_before, two_before) = (Decisions::of(&one).await, Decisions::of(&two).await);
    // Alternating between the two, a client gets the fleet's 4, not 4 from each.
    let mut got = Vec::new();
    for round in 0..4 {
        got.extend(statuses(one.addr(), "127.0.0.2", 1).await);
        got.extend(statuses(two.addr(), "127.0.0.2", 1).await);
        assert_eq!(allowed(&got), (round * 2 + 2).min(4), "{got:?}");
    }
    assert_eq!(got, [200, 200, 200, 200, 429, 429, 429, 429]);
    // Another client has its own quota, on either server.
    assert_eq!(statuses(two.addr(), "127.0.0.3", 1).await, [200]);
    // The state is in Redis, one key per client, expiring when it would be fresh again.
    let key = redis.key_of("127.0.0.2");
    assert_eq!(key, "portcullis:per-client:15000000000n4b:{ip:127.0.0.2}");
    let ttl: i64 = redis.cli(&["PTTL", &key]).parse().expect("a number");
    assert!(ttl > 0 && ttl <= 120_000, "PTTL {key} = {ttl}");
    // Every check was decided in Redis, in one round trip each.
    Decisions::assert_shared_since(one_before, &one, 4.0).await;
    Decisions::assert_shared_since(two_before, &two, 5.0).await;
    assert_eq!(redis.calls("evalsha") - before, 9);
}

/// Every Redis call the server made, timed-out ones included, ended within 50 ms (the bucket
/// above the 20 ms deadline): none waited on Redis past the deadline.
async fn no_call_past_the_deadline(server: &Hardened) {
    // (No call at all, with Redis down from the start, is none past the deadline either.)
    let count = counter(server, "portcullis_limit_redis_call_duration_seconds_count").await;
    let within = counter(
        server,
        "portcullis_limit_redis_call_duration_seconds_bucket{le=\"0.05\"}",
    )
    .await;
    assert_eq!(within, count, "calls that took longer than 50 ms");
}

/// With Redis failing, a fresh client gets exactly the local share (6/m over a fleet of 2:
/// 3), with no 5xx and no stall.
async fn drill(server: &Hardened, client: &str) {
    let local_before = counter(server, LOCAL).await;
    assert_eq!(
        statuses(server.addr(), client, 5).await,
        [200, 200, 200, 429, 429],
        "rate / fleet size while Redis fails"
    );
    assert_eq!(metric(server, LOCAL).await - local_before, 5.0);
    no_call_past_the_deadline(server).await;
}

/// How a server's checks were decided so far: in Redis, locally, and how many Redis calls
/// failed (timed out or errored).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Decisions {
    shared: f64,
    local: f64,
    failed: f64,
}

impl Decisions {
    async fn of(server: &Hardened) -> Self {
        let calls =
            |outcome| format!("portcullis_limit_redis_calls_total{{outcome=\"{outcome}\"}}");
        Self {
            shared: counter(server, SHARED).await,
            local: counter(server, LOCAL).await,
            failed: counter(server, &calls("timeout")).await
                + counter(server, &calls("error")).await,
        }
    }

    /// Asserts that the `checks` made since `before` were each decided in Redis, except any
    /// whose call failed: a call past the 20 ms deadline on a loaded machine is decided
    /// locally by design (and may still have counted in Redis), but a check decided locally
    /// without a failed call would be a stale fallback.
    async fn assert_shared_since(before: Self, server: &Hardened, checks: f64) {
        let now = Self::of(server).await;
        let (shared, local, failed) = (
            now.shared - before.shared,
            now.local - before.local,
            now.failed - before.failed,
        );
        assert_eq!(shared + local, checks, "{before:?} -> {now:?}");
        assert_eq!(
            local, failed,
            "checks decided locally without a failed call: {before:?} -> {now:?}"
        );
    }
}

/// Once Redis is healed and the server says it is shared again (polled), another fresh client
/// gets the fleet's 6, decided in Redis.
async fn shared_again(redis: &RedisServer, server: &Hardened, client: &str) {
    await_metric(server, FALLBACK, 0.0).await;
    let before = Decisions::of(server).await;
    assert_eq!(
        statuses(server.addr(), client, 7).await,
        [200, 200, 200, 200, 200, 200, 429],
        "the fleet's quota once Redis answers"
    );
    Decisions::assert_shared_since(before, server, 7.0).await;
    assert!(!redis.cli(&["GET", &redis.key_of(client)]).is_empty());
}

#[tokio::test]
async fn redis_killed_and_restarted() {
    let mut redis = RedisServer::start();
    let server = fleet_server(&redis, "6/m", "2").await;
    assert_eq!(statuses(server.addr(), "127.0.0.2", 1).await, [200]);
    redis.kill();
    drill(&server, "127.0.0.3").await;
    assert_eq!(metric(&server, FALLBACK).await, 1.0);
    redis.restart();
    shared_again(&redis, &server, "127.0.0.4").await;
}

#[tokio::test]
async fn redis_stopped_and_continued() {
    let redis = RedisServer::start();
    let server = fleet_server(&redis, "6/m", "2").await;
    assert_eq!(statuses(server.addr(), "127.0.0.2", 1).await, [200]);
    redis.stop();
    drill(&server, "127.0.0.3").await;
    // The late calls opened the breaker: further checks do not even wait for the deadline.
    assert_eq!(metric(&server, FALLBACK).await, 1.0);
    assert!(
        metric(
            &server,
            "portcullis_limit_redis_calls_total{outcome=\"timeout\"}"
        )
        .await
            >= 1.0
    );
    redis.resume();
    shared_again(&redis, &server, "127.0.0.4").await;
}

#[tokio::test]
async fn redis_clients_paused() {
    let redis = RedisServer::start();
    let server = fleet_server(&redis, "6/m", "2").await;
    assert_eq!(statuses(server.addr(), "127.0.0.2", 1).await, [200]);
    // Every client of Redis waits 8 s (a new redis-cli too, so no UNPAUSE: the pause ends by
    // itself, long after the five requests below).
    redis.cli(&["CLIENT", "PAUSE", "8000"]);
    drill(&server, "127.0.0.3").await;
    shared_again(&redis, &server, "127.0.0.4").await;
}

#[tokio::test]
async fn redis_scripts_flushed() {
    let redis = RedisServer::start();
    let server = fleet_server(&redis, "6/m", "2").await;
    assert_eq!(statuses(server.addr(), "127.0.0.2", 1).await, [200]);
    redis.cli(&["SCRIPT", "FLUSH"]);
    // The script is reloaded within the first check's call: nothing falls back, the quota is
    // the fleet's throughout.
    let before = Decisions::of(&server).await;
    assert_eq!(
        statuses(server.addr(), "127.0.0.3", 7).await,
        [200, 200, 200, 200, 200, 200, 429]
    );
    Decisions::assert_shared_since(before, &server, 7.0).await;
    assert_eq!(metric(&server, NOSCRIPT).await, 1.0);
    assert_eq!(metric(&server, FALLBACK).await, 0.0);
}

#[tokio::test]
async fn a_server_started_while_redis_is_down_serves_and_shares_once_it_is_up() {
    let mut redis = RedisServer::start();
    redis.kill();
    let server = fleet_server(&redis, "6/m", "2").await;
    drill(&server, "127.0.0.3").await;
    redis.restart();
    shared_again(&redis, &server, "127.0.0.4").await;
}

#[tokio::test]
async fn redis_needs_a_rate_and_a_url_that_parses() {
    let (code, _, stderr) = run_to_exit(&["--redis", "redis://127.0.0.1:6379/"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("'--redis' needs '--rate'"), "{stderr}");
    let (code, _, stderr) = run_to_exit(&["--rate", "1/s", "--redis", "mysql://db/"]).await;
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("invalid Redis URL mysql://db/"), "{stderr}");
    let (code, _, stderr) = run_to_exit(&[
        "--rate",
        "1/s",
        "--redis",
        "redis://:hunter2@[::1/",
        "--check-config",
    ])
    .await;
    assert_eq!(code, 2, "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the password is never printed: {stderr}"
    );
    // Fleet settings without --redis do nothing, and say so.
    let (code, _, stderr) =
        run_to_exit(&["--rate", "1/s", "--fleet-size", "3", "--check-config"]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("'--fleet-size' is set without '--redis'"),
        "{stderr}"
    );
}
