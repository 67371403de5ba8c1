//! Fuzz target: the HTTP/2 frame scanner that follows the connection window
//! (`portcullis_server::internal::H2FrameScanner`) never panics on what a client sends, and
//! reports the same frames however the bytes are cut into reads.
//!
//! `cargo +nightly fuzz run h2_frames -- -max_total_time=60` from the repository root.
//!
//! The first byte of the input picks the cut: the rest is fed whole once, and once in pieces
//! of that many bytes (at least one).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_server::internal::{H2Event, H2FrameScanner};

fn events(bytes: &[u8], piece: usize) -> Vec<H2Event> {
    let mut scanner = H2FrameScanner::default();
    let mut seen = Vec::new();
    for chunk in bytes.chunks(piece) {
        scanner.feed(chunk, |event| seen.push(event));
    }
    seen
}

fuzz_target!(|input: &[u8]| {
    let Some((&cut, bytes)) = input.split_first() else {
        return;
    };
    let whole = events(bytes, bytes.len().max(1));
    let cut = events(bytes, usize::from(cut).max(1));
    assert_eq!(whole, cut);
    // At most one event per frame header read.
    assert!(whole.len() <= bytes.len() / 9);
});
