//! Fleet limits (`portcullis_limit::fleet`) as a tower layer against a real `redis-server` on
//! loopback: the same 429 as a local limit, the burst and a wait rounded up, one shared
//! connection and one round trip per check, fail-closed, and a three-node Redis Cluster.

#[path = "../../examples/hardened/tests/common/redis.rs"]
mod redis;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use portcullis_limit::fleet::{Redis, RedisConfig};
use portcullis_limit::{PeerAddr, RateLimitLayer};
use redis::RedisServer;
use tower::{Layer, Service, ServiceExt, service_fn};

type App = tower::util::ServiceFn<
    fn(Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>>,
>;

fn app() -> App {
    fn hello(_: Request<()>) -> std::future::Ready<Result<Response<String>, Infallible>> {
        std::future::ready(Ok(Response::new(String::from("hello\n"))))
    }
    service_fn(hello as fn(_) -> _)
}

fn request(client: &str) -> Request<()> {
    let mut request = Request::get("/").body(()).expect("a request");
    let peer: SocketAddr = format!("{client}:40000").parse().expect("an address");
    request.extensions_mut().insert(PeerAddr(peer));
    request
}

/// The status and the limit's fields of one call.
async fn call<S, B>(service: &S, client: &str) -> (StatusCode, Vec<(String, String)>)
where
    S: Service<Request<()>, Response = Response<B>, Error = Infallible> + Clone,
{
    let response = service
        .clone()
        .oneshot(request(client))
        .await
        .expect("infallible");
    let fields = [
        "retry-after",
        "ratelimit-policy",
        "ratelimit",
        "content-type",
    ]
    .into_iter()
    .filter_map(|name| {
        let value = response.headers().get(name)?.to_str().ok()?;
        Some((name.to_owned(), value.to_owned()))
    })
    .collect();
    (response.status(), fields)
}

async fn connected(url: &str) -> Redis {
    let redis = RedisConfig::new(url)
        .expect("a URL")
        .timeout(Duration::from_millis(200))
        .build();
    redis.connect().await.expect("Redis answers");
    redis
}

#[tokio::test]
async fn a_refusal_carries_the_same_fields_as_a_local_limits() {
    let server = RedisServer::start();
    let redis = connected(&server.url()).await;
    let quota = "2/m".parse().expect("a quota");
    let fleet = RateLimitLayer::per_client(quota)
        .name("api")
        .fleet(&redis)
        .layer()
        .layer(app());
    let local = RateLimitLayer::per_client(quota)
        .name("api")
        .layer()
        .layer(app());
    let before = server.calls("evalsha");
    let mut fleet_got = Vec::new();
    let mut local_got = Vec::new();
    for _ in 0..3 {
        fleet_got.push(call(&fleet, "203.0.113.7").await);
        local_got.push(call(&local, "203.0.113.7").await);
    }
    assert_eq!(fleet_got, local_got);
    assert_eq!(fleet_got[2].0, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        fleet_got[2]
            .1
            .contains(&("retry-after".to_owned(), "30".to_owned())),
        "{fleet_got:?}"
    );
    // Hash-tagged on the client, expiring once the key is fresh again (2 requests at 30 s).
    let key = server.key_of("203.0.113.7");
    assert_eq!(key, "portcullis:api:30000000000n2b:{ip:203.0.113.7}");
    // Three checks, each decided in Redis (one EVALSHA each, no fallback): the fields above
    // came from the script.
    assert_eq!(server.calls("evalsha") - before, 3);
    let ttl: u64 = server.cli(&["PTTL", &key]).parse().expect("a number");
    assert!(ttl > 0 && ttl <= 60_000, "PTTL {ttl}");
}

#[tokio::test]
async fn the_burst_is_kept_and_the_wait_rounded_up() {
    let server = RedisServer::start();
    let redis = connected(&server.url()).await;
    let waits = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&waits);
    let service = RateLimitLayer::per_client("3/s burst 5".parse().expect("a quota"))
        .on_limited(move |rejection, response| {
            seen.lock()
                .expect("not poisoned")
                .push(rejection.limited.wait());
            response
        })
        .fleet(&redis)
        .layer()
        .layer(app());
    let before = server.calls("evalsha");
    let started = Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(&service, "198.51.100.1").await.0);
    }
    let elapsed = started.elapsed();
    assert_eq!(statuses[..5], [StatusCode::OK; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
    let wait = waits.lock().expect("not poisoned")[0];
    // One more request is allowed 1/3 s after the burst began: the wait Redis reports is at
    // least what is left of that (rounded up to the millisecond), and at most all of it.
    let interval = Duration::from_nanos(333_333_333);
    assert!(
        wait + elapsed >= interval,
        "wait {wait:?} after {elapsed:?}"
    );
    assert!(wait <= Duration::from_millis(334), "wait {wait:?}");
    // Redis decided every check, and its wait is whole milliseconds (rounded up in the
    // script); a local decision would be to the nanosecond.
    assert_eq!(server.calls("evalsha") - before, 6);
    assert_eq!(wait.subsec_nanos() % 1_000_000, 0, "wait {wait:?}");
}

#[tokio::test]
async fn a_global_limit_is_one_state_whatever_the_client() {
    let server = RedisServer::start();
    let redis = connected(&server.url()).await;
    // Exempt clients make the layer resolve each client; the quota stays one for all.
    let service = RateLimitLayer::global("2/m".parse().expect("a quota"))
        .name("all")
        .exempt_clients("192.0.2.0/24".parse().expect("a range"))
        .fleet(&redis)
        .layer()
        .layer(app());
    let mut got = Vec::new();
    for client in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        got.push(call(&service, client).await.0);
    }
    assert_eq!(
        got,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert_eq!(
        call(&service, "192.0.2.9").await.0,
        StatusCode::OK,
        "exempt"
    );
    let keys = server.cli(&["KEYS", "portcullis:all:*"]);
    assert_eq!(keys, "portcullis:all:30000000000n2b:{global}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_share_one_connection_and_cost_one_round_trip_each() {
    let server = RedisServer::start();
    let redis = connected(&server.url()).await;
    let service = RateLimitLayer::per_client("1/s".parse().expect("a quota"))
        .fleet(&redis)
        .layer()
        .layer(app());
    let before = server.calls("evalsha");
    let checks = (0..200).map(|i| {
        let service = service.clone();
        async move {
            call(&service, &format!("10.0.{}.{}", i / 100, i % 100))
                .await
                .0
        }
    });
    let statuses = futures_util::future::join_all(checks).await;
    assert!(
        statuses.iter().all(|status| *status == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(server.calls("evalsha") - before, 200);
    // Our one multiplexed connection, and the redis-cli asking.
    let clients = server.cli(&["CLIENT", "LIST"]);
    assert_eq!(clients.lines().count(), 2, "{clients}");
}

#[tokio::test]
async fn while_redis_cannot_decide_a_limit_is_local_or_fails_closed() {
    let mut server = RedisServer::start();
    let url = server.url();
    server.kill();
    let redis = RedisConfig::new(&url).expect("a URL").build();
    assert!(redis.connect().await.is_err());
    let quota = "4/m".parse().expect("a quota");
    let two = NonZeroU32::new(2).expect("not zero");
    let local = RateLimitLayer::per_client(quota)
        .fleet(&redis)
        .fleet_size(two)
        .layer();
    assert_eq!(local.local_quota().to_string(), "2/m");
    let local = local.layer(app());
    let closed = RateLimitLayer::per_client(quota)
        .fleet(&redis)
        .fail_closed(true)
        .layer()
        .layer(app());
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(call(&local, "192.0.2.1").await.0);
    }
    assert_eq!(
        got,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (status, fields) = call(&closed, "192.0.2.2").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        fields.contains(&("retry-after".to_owned(), "1".to_owned())),
        "{fields:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_spreads_the_clients_over_its_nodes_and_keeps_each_quota() {
    let nodes = RedisServer::cluster();
    let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
    let redis = connected(&urls.join(",")).await;
    let service = RateLimitLayer::per_client("2/m".parse().expect("a quota"))
        .name("api")
        .fleet(&redis)
        .layer()
        .layer(app());
    for i in 0..30 {
        let client = format!("10.1.0.{i}");
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(call(&service, &client).await.0);
        }
        assert_eq!(
            got,
            [
                StatusCode::OK,
                StatusCode::OK,
                StatusCode::TOO_MANY_REQUESTS
            ],
            "{client}"
        );
    }
    // Each key's slot is its client part's (the hash tag), and 30 clients land on every node.
    for i in [0, 7, 29] {
        let client = format!("ip:10.1.0.{i}");
        let full = format!("portcullis:api:30000000000n2b:{{{client}}}");
        assert_eq!(
            nodes[0].cli(&["CLUSTER", "KEYSLOT", &full]),
            nodes[0].cli(&["CLUSTER", "KEYSLOT", &client])
        );
    }
    for node in &nodes {
        let keys: u64 = node.cli(&["DBSIZE"]).parse().expect("a number");
        assert!(
            keys > 0,
            "a node without keys: the keys are not spread over the slots"
        );
    }
    assert!(redis.available());
}
