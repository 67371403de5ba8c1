//! A server with an admin listener runs the admin service's upkeep (for a recorder of the
//! application's that buffers samples between scrapes) every `UPKEEP_INTERVAL` while it
//! serves, with no task spawned by the test; and with portcullis's own recorder, which
//! needs none, the live heap stays flat over 400 000 requests and no scrape. Measured with
//! a counting global allocator (this test binary only), on one thread so that the exporter
//! can be this test's local recorder.

#![allow(unsafe_code)]

mod common;
mod counting;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use portcullis::listen::Listener;
use portcullis::metrics::{Admin, HttpMetricsLayer, PrometheusExporter, UPKEEP_INTERVAL};
use portcullis::server::HttpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceBuilder;

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

const ROUNDS: usize = 4;
const REQUESTS_PER_ROUND: usize = 100_000;
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n";

async fn hello(
    _: Request<portcullis::server::RequestBody>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"hello\n"))))
}

/// Sends `count` requests on `stream`, one after the other, reading each whole response.
async fn requests(stream: &mut TcpStream, count: usize) {
    let mut buf = [0u8; 1024];
    for _ in 0..count {
        stream.write_all(REQUEST).await.expect("write");
        let mut seen = 0;
        // The answer is small and ends with the body: read until it is all there.
        while !buf[..seen].ends_with(b"hello\n") {
            let n = stream.read(&mut buf[seen..]).await.expect("read");
            assert!(n > 0, "closed mid-response");
            seen += n;
        }
    }
}

// Paused time: the waits below move the clock past the server's upkeep ticks at once.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_server_runs_the_admin_upkeep_and_the_recorder_holds_no_samples() {
    let recorder = PrometheusExporter::builder().build_recorder();
    let exporter = PrometheusExporter::for_recorder(&recorder);
    // One thread: every task of the server records into this recorder.
    let _local = metrics::set_default_local_recorder(&recorder);
    let admin = Listener::bind("127.0.0.1:0".parse().expect("addr")).expect("bind admin");
    let service = ServiceBuilder::new()
        .layer(HttpMetricsLayer::new())
        .service_fn(hello);
    let upkeeps = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&upkeeps);
    // Deadlines far away: paused time must not close the keep-alive connection.
    let http = HttpConfig::default()
        .header_timeout(Duration::from_secs(86_400))
        .idle_timeout(Duration::from_secs(86_400));
    let server = common::Running::start(
        move |b| {
            b.http(http).admin_listener(
                admin,
                Admin::new().prometheus(&exporter).upkeep(move || {
                    counted.fetch_add(1, Ordering::Relaxed);
                }),
            )
        },
        service,
    );
    let mut stream = TcpStream::connect(server.addr()).await.expect("connect");
    let mut live = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        requests(&mut stream, REQUESTS_PER_ROUND).await;
        // Past the next upkeep tick of the server's own task.
        tokio::time::sleep(UPKEEP_INTERVAL + Duration::from_millis(1)).await;
        live.push(counting::live());
    }
    assert!(
        upkeeps.load(Ordering::Relaxed) >= ROUNDS,
        "the upkeep ran {} times over {ROUNDS} intervals",
        upkeeps.load(Ordering::Relaxed)
    );
    // The first round grows every buffer of the server to its working size; from then on,
    // flat: each sample is folded into its bucket as it is recorded. A recorder that kept
    // samples until an upkeep (8 bytes each) would grow by 800 KiB a round.
    let grown = live[ROUNDS - 1] - live[0];
    assert!(
        grown < 64 * 1024,
        "live heap grew by {grown} bytes over {} requests with nobody scraping: {live:?}",
        (ROUNDS - 1) * REQUESTS_PER_ROUND
    );
    drop(stream);
    server.stop().await;
}
