//! The exporter's memory stays flat across many requests and scrapes with nothing run
//! between them: each histogram sample is folded into its bucket as it is recorded, never
//! buffered. Measured with a counting global allocator (this test binary only).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicIsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use portcullis_metrics::{HttpMetricsLayer, PrometheusExporter, Route};
use tower::{Layer, Service, ServiceExt};

/// Bytes allocated and not yet freed, by anyone in this process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is only
// arithmetic on the sizes the caller passes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const REQUESTS_PER_ROUND: usize = 20_000;

#[tokio::test]
async fn memory_stays_flat_across_requests_and_scrapes() {
    let recorder = PrometheusExporter::builder().build_recorder();
    let exporter = PrometheusExporter::for_recorder(&recorder);
    let _local = metrics::set_default_local_recorder(&recorder);
    portcullis_metrics::describe();

    let mut app = HttpMetricsLayer::new().layer(tower::service_fn(|_: Request<()>| async {
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        response.extensions_mut().insert(Route::new("/"));
        Ok::<_, Infallible>(response)
    }));
    let mut round = async |scrape: bool| {
        for _ in 0..REQUESTS_PER_ROUND {
            let response = app
                .ready()
                .await
                .expect("ready")
                .call(Request::new(()))
                .await
                .expect("ok");
            response.into_body().collect().await.expect("body");
        }
        if scrape {
            assert!(
                exporter
                    .render()
                    .contains("http_server_request_duration_seconds")
            );
        }
    };

    // Warm up: every series exists, every buffer has reached its working size.
    for _ in 0..3 {
        round(true).await;
    }
    let before = LIVE.load(Ordering::Relaxed);
    // Nobody scrapes for a while, then scrapes resume.
    let mut grown = 0;
    for scrape in [false, false, false, false, true, true, true, true] {
        round(scrape).await;
        grown = grown.max(LIVE.load(Ordering::Relaxed) - before);
    }
    // 160 000 requests: buffered, their samples alone would hold over 1 MiB.
    assert!(
        grown < 64 * 1024,
        "live heap grew by up to {grown} bytes over {} requests",
        8 * REQUESTS_PER_ROUND
    );
}
