//! An installed exporter runs its own upkeep: with no task or thread started by the caller
//! and nobody scraping, the histogram samples recorded into it are folded into their buckets
//! and their buffer freed within an upkeep interval or two. Measured with a counting global
//! allocator (this test binary only, which installs the process's recorder).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_metrics::{PrometheusExporter, UPKEEP_INTERVAL};

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

const SAMPLES: usize = 200_000;

#[test]
fn an_installed_exporter_folds_its_samples_with_nobody_scraping_and_nothing_spawned() {
    let exporter = PrometheusExporter::install().expect("the only recorder of this process");
    assert!(exporter.upkeeps_itself());
    let histogram = metrics::histogram!("portcullis_test_duration_seconds");
    histogram.record(0.1); // the series exists before the baseline
    let before = LIVE.load(Ordering::Relaxed);
    for _ in 0..SAMPLES {
        histogram.record(0.1);
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    // Each waiting sample is an f64 in the exporter's buffer.
    assert!(
        held > (SAMPLES * 4) as isize,
        "{held} bytes for {SAMPLES} waiting samples"
    );
    // No scrape, no task, no thread of ours: the exporter's thread must fold them. The
    // buffer's blocks are freed through crossbeam's epochs, which a recording thread
    // advances: keep recording a trickle (without an upkeep it only adds to the buffer).
    let mut recorded = SAMPLES + 1;
    let deadline = Instant::now() + 3 * UPKEEP_INTERVAL;
    loop {
        for _ in 0..256 {
            histogram.record(0.1);
        }
        recorded += 256;
        let now_held = LIVE.load(Ordering::Relaxed) - before;
        if now_held < held / 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {now_held} of {held} bytes held after {:?}: no upkeep ran",
            3 * UPKEEP_INTERVAL
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The samples went into the buckets, not away.
    let rendered = exporter.render();
    assert!(
        rendered.contains(&format!(
            "portcullis_test_duration_seconds_count {recorded}"
        )),
        "{rendered}"
    );
}
