//! The rate limit layer through tower, with real limiters and the wall clock.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroUsize;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use portcullis_limit::clock::{Clock, FakeRelativeClock};
use portcullis_limit::{Key, KeyBy, LoadShedLayer, PeerAddr, RateLimitLayer};
use tower::{Layer, Service, ServiceExt, service_fn};

type Reply = Response<Full<Bytes>>;

async fn ok(_request: Request<()>) -> Result<Reply, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok\n"))))
}

fn request(peer: &str, path: &str) -> Request<()> {
    let peer: SocketAddr = format!("{peer}:40000").parse().expect("test address");
    let mut request = Request::get(path).body(()).expect("request");
    request.extensions_mut().insert(PeerAddr(peer));
    request
}

async fn call<C>(
    layer: &RateLimitLayer<C>,
    request: Request<()>,
) -> (StatusCode, http::HeaderMap, Bytes)
where
    C: Clock + Send + Sync + 'static,
{
    let response = layer
        .layer(service_fn(ok))
        .oneshot(request)
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    (parts.status, parts.headers, body)
}

#[tokio::test]
async fn refusal_carries_retry_after_and_the_ietf_fields() {
    let layer = RateLimitLayer::per_client("2/m burst 1".parse().expect("quota"))
        .name("api")
        .layer();
    let (status, _, _) = call(&layer, request("127.0.0.1", "/")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = call(&layer, request("127.0.0.1", "/")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // One request every 30 s: just under 30 s to wait, rounded up.
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(headers["ratelimit-policy"], "\"api\";q=2;w=60");
    assert_eq!(headers["ratelimit"], "\"api\";r=0;t=30");
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(body, "too many requests\n");
    // Another client address has its own bucket.
    let (status, _, _) = call(&layer, request("127.0.0.2", "/")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn every_clone_and_every_service_share_one_limit() {
    let layer = RateLimitLayer::per_client("1/m".parse().expect("quota")).layer();
    let mut route_a = layer.clone().layer(service_fn(ok));
    let mut route_b = layer.layer(service_fn(ok));
    let a = route_a
        .ready()
        .await
        .expect("ready")
        .call(request("127.0.0.1", "/a"))
        .await;
    assert_eq!(a.expect("infallible").status(), StatusCode::OK);
    let b = route_b
        .ready()
        .await
        .expect("ready")
        .call(request("127.0.0.1", "/b"))
        .await;
    assert_eq!(
        b.expect("infallible").status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let mut cloned = route_a.clone();
    let c = cloned
        .ready()
        .await
        .expect("ready")
        .call(request("127.0.0.1", "/a"))
        .await;
    assert_eq!(
        c.expect("infallible").status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// `(result, count)` of every `portcullis_limit_requests_total` series in `snapshotter`.
fn request_counts(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == portcullis_limit::metrics::REQUESTS_TOTAL)
        .filter_map(|(key, _, _, value)| {
            let result = key
                .key()
                .labels()
                .find(|l| l.key() == "result")?
                .value()
                .to_owned();
            match value {
                metrics_util::debugging::DebugValue::Counter(n) => Some((result, n)),
                _ => None,
            }
        })
        .collect();
    counts.sort();
    counts
}

#[tokio::test]
async fn dry_run_counts_but_lets_everything_through() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let layer = RateLimitLayer::per_client("1/m".parse().expect("quota"))
        .name("trial")
        .dry_run(true)
        .layer();
    for _ in 0..3 {
        let (status, headers, _) = call(&layer, request("127.0.0.1", "/")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("retry-after").is_none());
    }
    assert_eq!(
        request_counts(&snapshotter),
        [
            ("allowed".to_owned(), 1),
            ("dry_run_limited".to_owned(), 2),
            ("limited".to_owned(), 0),
        ]
    );
}

/// Metric handles are resolved on first use: a layer built before the recorder is installed
/// (as when a server is configured before the exporter starts) counts into it all the same.
#[tokio::test]
async fn a_layer_built_before_the_recorder_still_reports_to_it() {
    let built_before = RateLimitLayer::per_client("1/m".parse().expect("quota"))
        .name("early")
        .layer();
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    assert_eq!(
        call(&built_before, request("127.0.0.1", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&built_before, request("127.0.0.1", "/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    built_before.evict_idle();
    let built_after = RateLimitLayer::per_client("1/m".parse().expect("quota"))
        .name("late")
        .layer();
    assert_eq!(
        call(&built_after, request("127.0.0.1", "/")).await.0,
        StatusCode::OK
    );
    let series: Vec<String> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels: Vec<String> = key
                .key()
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            format!("{} {} {value:?}", key.key().name(), labels.join(","))
        })
        .collect();
    for expected in [
        "portcullis_limit_requests_total limiter=early,result=allowed Counter(1)",
        "portcullis_limit_requests_total limiter=early,result=limited Counter(1)",
        "portcullis_limit_keys limiter=early Gauge(1.0)",
        "portcullis_limit_requests_total limiter=late,result=allowed Counter(1)",
    ] {
        assert!(
            series.iter().any(|s| s == expected),
            "{expected} not in {series:#?}"
        );
    }
}

#[tokio::test]
async fn exempt_paths_and_clients_are_never_limited() {
    let layer = RateLimitLayer::per_client("1/m".parse().expect("quota"))
        .exempt_path("/healthz")
        .exempt_path("/internal/")
        .exempt_clients("127.0.9.0/24".parse().expect("range"))
        .layer();
    for _ in 0..3 {
        for path in ["/healthz", "/internal/x", "/internal/"] {
            assert_eq!(
                call(&layer, request("127.0.0.1", path)).await.0,
                StatusCode::OK
            );
        }
        assert_eq!(
            call(&layer, request("127.0.9.7", "/")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(
        call(&layer, request("127.0.0.1", "/")).await.0,
        StatusCode::OK
    );
    // Only an exact path or a prefix ending in `/` is exempt.
    for path in ["/healthz/x", "/healthzz", "/internal", "/"] {
        assert_eq!(
            call(&layer, request("127.0.0.1", path)).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}"
        );
    }
}

#[tokio::test]
async fn the_hook_rewrites_the_refusal() {
    let layer = RateLimitLayer::global("1/h".parse().expect("quota"))
        .on_limited(|rejection, mut response| {
            let body = format!(
                "{{\"retry_after\":{}}}",
                rejection.limited.retry_after_secs()
            );
            response
                .headers_mut()
                .insert("content-type", HeaderValue::from_static("application/json"));
            response.map(|_| Bytes::from(body))
        })
        .layer();
    assert_eq!(
        call(&layer, request("127.0.0.1", "/")).await.0,
        StatusCode::OK
    );
    // A global limit: another address is refused too.
    let (status, headers, body) = call(&layer, request("127.0.0.2", "/")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["retry-after"], "3600");
    assert_eq!(body, "{\"retry_after\":3600}");
}

#[tokio::test]
async fn header_keys_fall_back_to_the_client_address() {
    let layer = RateLimitLayer::keyed_by(
        "1/m".parse().expect("quota"),
        KeyBy::Header(http::HeaderName::from_static("x-api-key")),
    )
    .layer();
    let with_key = |key: &str| {
        let mut r = request("127.0.0.1", "/");
        r.headers_mut()
            .insert("x-api-key", HeaderValue::from_str(key).expect("value"));
        r
    };
    assert_eq!(call(&layer, with_key("alpha")).await.0, StatusCode::OK);
    assert_eq!(call(&layer, with_key("beta")).await.0, StatusCode::OK);
    assert_eq!(
        call(&layer, with_key("alpha")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // No header: the address is the key, with its own bucket, once.
    assert_eq!(
        call(&layer, request("127.0.0.1", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&layer, request("127.0.0.1", "/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // An over-long value cannot mint fresh keys: it is keyed by the (spent) address too.
    let long = "k".repeat(portcullis_limit::MAX_KEY_LEN + 1);
    assert_eq!(
        call(&layer, with_key(&long)).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn custom_keys_see_the_request_and_the_client() {
    let layer = RateLimitLayer::keyed_by(
        "1/m".parse().expect("quota"),
        KeyBy::custom(|info| {
            // One bucket per tenant (first path segment), per client.
            let tenant = info.uri.path().split('/').nth(1)?;
            Key::bytes(format!("{tenant}@{}", info.client).as_bytes())
        }),
    )
    .max_keys(NonZeroUsize::new(16).expect("non-zero"))
    .layer();
    assert_eq!(
        call(&layer, request("127.0.0.1", "/a/x")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&layer, request("127.0.0.1", "/b/x")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&layer, request("127.0.0.2", "/a/x")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&layer, request("127.0.0.1", "/a/y")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(layer.keys(), 3);
}

#[tokio::test]
async fn requests_without_a_peer_share_one_bucket() {
    let layer = RateLimitLayer::per_client("1/m".parse().expect("quota")).layer();
    let bare = || Request::get("/").body(()).expect("request");
    assert_eq!(call(&layer, bare()).await.0, StatusCode::OK);
    assert_eq!(call(&layer, bare()).await.0, StatusCode::TOO_MANY_REQUESTS);
}

/// 20 clients of a `1000/s burst 1` limit on a fake clock: idle 1 ms after their request.
async fn twenty_clients<C>(layer: &RateLimitLayer<C>)
where
    C: Clock + Send + Sync + 'static,
{
    for last in 1..=20u8 {
        let ip = IpAddr::from([127, 0, 1, last]);
        assert_eq!(
            call(layer, request(&ip.to_string(), "/")).await.0,
            StatusCode::OK
        );
    }
    assert_eq!(layer.keys(), 20);
}

fn housekeeping_layer(clock: &FakeRelativeClock) -> RateLimitLayer<FakeRelativeClock> {
    RateLimitLayer::per_client("1000/s burst 1".parse().expect("quota"))
        .name("hk")
        .clock(clock.clone())
        .layer()
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Lets the runtime run every task that is ready until `alive_tasks()` is `expected`, or gives
/// up after a bounded number of turns; returns the count. Paused time does not move while
/// tasks are ready, so this waits on the event, not on time.
async fn settle_to(expected: usize) -> usize {
    for _ in 0..100 {
        if alive_tasks() == expected {
            break;
        }
        tokio::task::yield_now().await;
    }
    alive_tasks()
}

#[tokio::test(start_paused = true)]
async fn housekeeping_starts_by_itself_and_evicts_idle_keys() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let clock = FakeRelativeClock::default();
    let layer = housekeeping_layer(&clock);
    assert_eq!(alive_tasks(), 0, "nothing runs before the first request");
    twenty_clients(&layer).await;
    assert_eq!(alive_tasks(), 1, "the first request started housekeeping");
    // Idle for far longer than their 1 ms interval; the first pass is due 10 s after the start.
    clock.advance(Duration::from_secs(1));
    tokio::time::sleep(portcullis_limit::DEFAULT_HOUSEKEEPING_INTERVAL / 2).await;
    assert_eq!(layer.keys(), 20, "no pass yet");
    tokio::time::sleep(portcullis_limit::DEFAULT_HOUSEKEEPING_INTERVAL).await;
    assert_eq!(layer.keys(), 0);
    let evicted = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            (key.key().name() == portcullis_limit::metrics::KEYS_EVICTED_TOTAL).then_some(value)
        });
    assert_eq!(
        evicted,
        Some(metrics_util::debugging::DebugValue::Counter(20))
    );
    assert_eq!(alive_tasks(), 1, "one task, however many requests");
}

#[tokio::test(start_paused = true)]
async fn the_automatic_task_ends_when_the_last_clone_is_dropped() {
    let clock = FakeRelativeClock::default();
    let layer = housekeeping_layer(&clock);
    let service = layer.clone().layer(service_fn(ok));
    twenty_clients(&layer).await;
    assert_eq!(alive_tasks(), 1);
    drop(layer);
    assert_eq!(settle_to(0).await, 1, "a service still holds the limiter");
    drop(service);
    // At once, not at the next tick: paused time has not moved.
    assert_eq!(settle_to(0).await, 0, "the task outlived the limiter");
}

#[tokio::test(start_paused = true)]
async fn a_global_limit_has_nothing_to_evict_and_starts_no_task() {
    let layer = RateLimitLayer::global("10/s".parse().expect("quota")).layer();
    assert_eq!(
        call(&layer, request("127.0.0.1", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(alive_tasks(), 0);
}

#[test]
fn housekeeping_moves_to_another_runtime_when_its_runtime_shuts_down() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime")
    };
    let clock = FakeRelativeClock::default();
    let layer = housekeeping_layer(&clock);
    let first = runtime();
    first.block_on(async {
        twenty_clients(&layer).await;
        assert_eq!(alive_tasks(), 1);
    });
    drop(first);
    let second = runtime();
    second.block_on(async {
        assert_eq!(alive_tasks(), 0);
        assert_eq!(
            call(&layer, request("127.0.0.9", "/")).await.0,
            StatusCode::OK
        );
        assert_eq!(alive_tasks(), 1, "started again on this runtime");
        clock.advance(Duration::from_secs(1));
        tokio::time::sleep(portcullis_limit::DEFAULT_HOUSEKEEPING_INTERVAL * 2).await;
        assert_eq!(layer.keys(), 0);
    });
}

/// A runtime without its time driver cannot run the task: housekeeping turns off once (with
/// an error logged) instead of a task that panics being spawned again on every request.
#[test]
fn without_a_time_driver_housekeeping_turns_off_once_and_requests_are_still_served() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let layer = housekeeping_layer(&FakeRelativeClock::default());
    runtime.block_on(async {
        for _ in 0..3 {
            twenty_clients_again(&layer).await;
            settle_to(0).await;
        }
        assert_eq!(alive_tasks(), 0);
    });
    let debug = format!("{layer:?}");
    assert!(debug.contains("housekeeping: off"), "{debug}");
}

/// [`twenty_clients`] without the key count (a later round finds the keys already there).
async fn twenty_clients_again<C>(layer: &RateLimitLayer<C>)
where
    C: Clock + Send + Sync + 'static,
{
    for last in 1..=20u8 {
        let ip = IpAddr::from([127, 0, 1, last]);
        let _ = call(layer, request(&ip.to_string(), "/")).await;
    }
}

#[tokio::test(start_paused = true)]
async fn explicit_housekeeping_turns_the_automatic_one_off_and_stops_with_its_token() {
    let clock = FakeRelativeClock::default();
    let layer = housekeeping_layer(&clock);
    let stop = tokio_util::sync::CancellationToken::new();
    let managed = layer.housekeeping(Duration::from_secs(60), stop.clone());
    twenty_clients(&layer).await;
    assert_eq!(
        alive_tasks(),
        0,
        "managed by the application: no automatic task"
    );
    let task = tokio::spawn(managed);
    clock.advance(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        layer.keys(),
        20,
        "the application's period, not the default"
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(layer.keys(), 0);
    stop.cancel();
    assert_eq!(
        settle_to(0).await,
        0,
        "housekeeping stops when its token is cancelled"
    );
    assert!(task.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn explicit_housekeeping_stops_an_automatic_task_already_running() {
    let clock = FakeRelativeClock::default();
    let layer = housekeeping_layer(&clock);
    twenty_clients(&layer).await;
    assert_eq!(alive_tasks(), 1);
    // Every key is idle: any pass would evict them all.
    clock.advance(Duration::from_secs(1));
    let _managed = layer.housekeeping(Duration::from_secs(60), Default::default());
    tokio::time::sleep(portcullis_limit::DEFAULT_HOUSEKEEPING_INTERVAL * 2).await;
    assert_eq!(settle_to(0).await, 0);
    assert_eq!(
        layer.keys(),
        20,
        "the automatic task made no pass after the hand-over"
    );
}

#[tokio::test]
async fn load_shedding_answers_503_while_the_limit_is_held_by_a_streaming_body() {
    let layer = LoadShedLayer::new(1);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let rx = std::sync::Arc::new(tokio::sync::Mutex::new(Some(rx)));
    let service = service_fn(move |_request: Request<()>| {
        let rx = std::sync::Arc::clone(&rx);
        async move {
            // The first response's body ends only when the test says so.
            let receiver = rx.lock().await.take();
            let stream = futures_like_body(receiver);
            Ok::<_, Infallible>(Response::new(stream))
        }
    });
    let mut service = layer.layer(service);
    let first = service
        .ready()
        .await
        .expect("ready")
        .call(Request::new(()))
        .await
        .expect("ok");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(layer.in_flight(), 1);
    let second = service
        .ready()
        .await
        .expect("ready")
        .call(Request::new(()))
        .await
        .expect("ok");
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(second.headers()["retry-after"], "1");
    // Finish the first body: the place is free again.
    let _ = tx.send(());
    let body = first.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "done");
    assert_eq!(layer.in_flight(), 0);
    let third = service
        .ready()
        .await
        .expect("ready")
        .call(Request::new(()))
        .await
        .expect("ok");
    assert_eq!(third.status(), StatusCode::OK);
}

type FrameStream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<http_body::Frame<Bytes>, Infallible>> + Send>,
>;

/// A body that sends `done` once `receiver` fires (or at once without one).
fn futures_like_body(
    receiver: Option<tokio::sync::oneshot::Receiver<()>>,
) -> http_body_util::StreamBody<FrameStream> {
    let stream: FrameStream = Box::pin(futures_util::stream::once(async move {
        if let Some(receiver) = receiver {
            let _ = receiver.await;
        }
        Ok(http_body::Frame::data(Bytes::from_static(b"done")))
    }));
    http_body_util::StreamBody::new(stream)
}

fn with_header(peer: &str, name: &'static str, value: &[u8]) -> Request<()> {
    let mut r = request(peer, "/");
    if let Ok(value) = HeaderValue::from_bytes(value) {
        r.headers_mut().append(name, value);
    }
    r
}

#[tokio::test]
async fn a_spoofed_forwarding_header_from_an_untrusted_peer_changes_nothing() {
    let layer = RateLimitLayer::per_client("1/m".parse().expect("quota"))
        .trusted_proxies(["127.0.0.10/32".parse().expect("range")])
        .layer();
    assert_eq!(
        call(&layer, request("127.0.0.1", "/")).await.0,
        StatusCode::OK
    );
    for spoof in ["1.2.3.4", "5.6.7.8, 9.9.9.9", "127.0.0.10"] {
        let r = with_header("127.0.0.1", "x-forwarded-for", spoof.as_bytes());
        assert_eq!(
            call(&layer, r).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{spoof}"
        );
        let r = with_header("127.0.0.1", "forwarded", format!("for={spoof}").as_bytes());
        assert_eq!(
            call(&layer, r).await.0,
            StatusCode::TOO_MANY_REQUESTS,
            "{spoof}"
        );
    }
    assert_eq!(layer.keys(), 1);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client() {
    let layer = RateLimitLayer::per_client("1/m".parse().expect("quota"))
        .trusted_proxies([
            "127.0.0.10/32".parse().expect("range"),
            "10.0.0.0/8".parse().expect("range"),
        ])
        .layer();
    let xff = |value: &str| with_header("127.0.0.10", "x-forwarded-for", value.as_bytes());
    assert_eq!(
        call(&layer, xff("203.0.113.5, 10.1.2.3")).await.0,
        StatusCode::OK
    );
    // A client prepending addresses of its own choosing is still 203.0.113.5.
    assert_eq!(
        call(&layer, xff("6.6.6.6, 203.0.113.5, 10.1.2.3")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(call(&layer, xff("203.0.113.6")).await.0, StatusCode::OK);
    // `Forwarded` is preferred over `X-Forwarded-For`.
    let mut both = with_header("127.0.0.10", "forwarded", b"for=203.0.113.7");
    both.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("203.0.113.5"));
    assert_eq!(call(&layer, both).await.0, StatusCode::OK);
    // No header from the proxy: the proxy itself is the client.
    assert_eq!(
        call(&layer, request("127.0.0.10", "/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        call(&layer, request("127.0.0.10", "/")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn hostile_forwarding_values_never_fail_and_never_mint_fresh_buckets() {
    let layer = RateLimitLayer::per_client("1/h".parse().expect("quota"))
        .trusted_proxies(["127.0.0.10/32".parse().expect("range")])
        .layer();
    let long: String = (0..1000)
        .map(|i| format!("198.18.{}.{}", i / 250, i % 250))
        .collect::<Vec<_>>()
        .join(", ");
    assert!(long.len() > 10_000);
    let mut hostile: Vec<Vec<u8>> = vec![
        b"unknown".to_vec(),
        Vec::new(),
        b" ".to_vec(),
        b",,,".to_vec(),
        b"garbage".to_vec(),
        b"for=_hidden".to_vec(),
        b"for=\"_x\"".to_vec(),
        b"for=\"[2001:db8::1".to_vec(),
        b"for=unknown;proto=https".to_vec(),
        b"999.1.1.1".to_vec(),
        b"[::1".to_vec(),
        b"\xff\xfe".to_vec(),
        long.clone().into_bytes(),
    ];
    for i in 0..200u32 {
        hostile.push(format!("{i}garbage{i}, for=_{i}").into_bytes());
    }
    let mut statuses = std::collections::HashMap::new();
    for value in &hostile {
        for name in ["x-forwarded-for", "forwarded", "x-real-ip"] {
            // Forwarded by the proxy as is: the proxy's own bucket.
            let status = call(&layer, with_header("127.0.0.10", name, value)).await.0;
            *statuses.entry(status).or_insert(0u32) += 1;
            // With the proxy's own addition on the right (the real client, after the junk the
            // client sent): always that client's bucket, whatever the junk.
            let mut appended = value.clone();
            appended.extend_from_slice(b", 198.51.100.7");
            if name != "x-real-ip" {
                let status = call(&layer, with_header("127.0.0.10", name, &appended))
                    .await
                    .0;
                *statuses.entry(status).or_insert(0u32) += 1;
            }
        }
    }
    assert!(
        statuses.keys().all(|s| !s.is_server_error()),
        "{statuses:?}"
    );
    // At most three buckets in all: the proxy's, 198.51.100.7's, and the 10 KB list's
    // nearest address (a well-formed list is believed as far as the hop limit).
    assert!(layer.keys() <= 3, "{} buckets", layer.keys());
    assert!(statuses[&StatusCode::OK] <= 3, "{statuses:?}");
}

/// The shed counter is resolved at the first shed request: a layer built before the recorder
/// is installed counts into it all the same.
#[tokio::test]
async fn a_load_shedder_built_before_the_recorder_still_reports_to_it() {
    let layer = LoadShedLayer::new(0);
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);
    let mut service = layer.layer(service_fn(ok));
    let response = service
        .ready()
        .await
        .expect("ready")
        .call(Request::new(()))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let shed = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(key, _, _, value)| {
            (key.key().name() == portcullis_limit::metrics::REQUESTS_SHED_TOTAL).then_some(value)
        });
    assert_eq!(shed, Some(metrics_util::debugging::DebugValue::Counter(1)));
}

#[tokio::test]
async fn the_inner_service_is_reachable_through_every_service() {
    let limited = RateLimitLayer::global("1/s".parse().expect("quota"))
        .layer()
        .layer(Counter(0));
    let mut shed = LoadShedLayer::new(1).layer(limited);
    shed.get_mut().get_mut().0 = 7;
    assert_eq!(shed.get_ref().get_ref().0, 7);
    assert_eq!(shed.into_inner().into_inner().0, 7);
}

/// A stand-in service with a field to reach.
#[derive(Clone, Debug)]
struct Counter(u32);
