//! The HTTP/2 connection-level flow-control window as the client sees it, read off the frames
//! that cross the connection (RFC 9113 §6.9): each DATA frame the client sends uses up its
//! payload length, each WINDOW_UPDATE on stream 0 the server sends gives its increment back.
//! The connection window always starts at 65 535 bytes; SETTINGS do not change it.
//!
//! Only frame headers are read (and the four-byte payload of a WINDOW_UPDATE on stream 0);
//! every other payload is skipped by length. The bytes come from the client (reads) or are the
//! server's own (writes), in pieces of any size.

/// The connection window before any WINDOW_UPDATE (RFC 9113 §6.9.2).
pub(crate) const INITIAL_WINDOW: i64 = 65_535;

const HEADER_LEN: usize = 9;
const DATA: u8 = 0x0;
const WINDOW_UPDATE: u8 = 0x8;

/// A frame that moves the connection window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A DATA frame (on any stream) with this flow-controlled length, padding included.
    Data(u32),
    /// A WINDOW_UPDATE on stream 0 with this increment.
    ConnWindowUpdate(u32),
}

/// Walks a stream of HTTP/2 frames fed in arbitrary pieces.
#[derive(Clone, Debug, Default)]
pub struct FrameScanner {
    header: [u8; HEADER_LEN],
    /// Header bytes collected of the next frame.
    have: usize,
    /// Payload bytes of the current frame still to pass.
    remaining: u32,
    /// Collecting the increment of a WINDOW_UPDATE on stream 0: its bytes so far.
    update: Option<([u8; 4], usize)>,
}

impl FrameScanner {
    /// Passes `bytes`, the next piece of the frame stream, calling `on` for each frame that
    /// moves the connection window.
    pub fn feed(&mut self, mut bytes: &[u8], mut on: impl FnMut(Event)) {
        while !bytes.is_empty() {
            if self.remaining > 0 {
                let take = bytes.len().min(self.remaining as usize);
                if let Some((increment, got)) = &mut self.update {
                    let copy = take.min(4 - *got);
                    increment[*got..*got + copy].copy_from_slice(&bytes[..copy]);
                    *got += copy;
                    if *got == 4 {
                        let value = u32::from_be_bytes(*increment) & 0x7fff_ffff;
                        self.update = None;
                        on(Event::ConnWindowUpdate(value));
                    }
                }
                // `take` fits in u32: it is at most `remaining`.
                self.remaining -= take as u32;
                bytes = &bytes[take..];
                if self.remaining == 0 {
                    self.update = None;
                }
                continue;
            }
            let take = bytes.len().min(HEADER_LEN - self.have);
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            bytes = &bytes[take..];
            if self.have < HEADER_LEN {
                break;
            }
            self.have = 0;
            let h = &self.header;
            let length = u32::from_be_bytes([0, h[0], h[1], h[2]]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            self.remaining = length;
            match h[3] {
                DATA => on(Event::Data(length)),
                WINDOW_UPDATE if stream == 0 && length > 0 => self.update = Some(([0; 4], 0)),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        out.push(kind);
        out.push(0);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn events(stream: &[u8], cuts: &[usize]) -> Vec<Event> {
        let mut scanner = FrameScanner::default();
        let mut seen = Vec::new();
        let mut rest = stream;
        for &cut in cuts.iter().chain(std::iter::repeat(&7)) {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(cut.clamp(1, rest.len()));
            scanner.feed(piece, |e| seen.push(e));
            rest = tail;
        }
        seen
    }

    #[test]
    fn data_and_connection_updates_are_reported_other_frames_skipped() {
        let mut stream = frame(0x4, 0, &[0; 12]); // SETTINGS
        stream.extend(frame(DATA, 1, &[7; 300]));
        stream.extend(frame(WINDOW_UPDATE, 3, &1000u32.to_be_bytes())); // a stream's
        stream.extend(frame(WINDOW_UPDATE, 0, &0x8000_0400u32.to_be_bytes())); // reserved bit
        stream.extend(frame(DATA, 3, &[]));
        assert_eq!(
            events(&stream, &[1, 2, 3, 300, 5]),
            vec![
                Event::Data(300),
                Event::ConnWindowUpdate(1024),
                Event::Data(0)
            ]
        );
    }

    proptest::proptest! {
        /// However the stream is cut, the same frames are reported, in order.
        #[test]
        fn pieces_do_not_matter(
            frames in proptest::collection::vec(
                (proptest::sample::select(vec![DATA, WINDOW_UPDATE, 0x1, 0x4, 0x6]),
                 0u32..4,
                 proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
                0..12),
            cuts in proptest::collection::vec(1usize..50, 0..40),
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (kind, id, payload) in &frames {
                let mut payload = payload.clone();
                if *kind == WINDOW_UPDATE {
                    payload.resize(4, 1);
                }
                stream.extend(frame(*kind, *id, &payload));
                match *kind {
                    DATA => expected.push(Event::Data(payload.len() as u32)),
                    WINDOW_UPDATE if *id == 0 => {
                        let raw = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
                        expected.push(Event::ConnWindowUpdate(raw & 0x7fff_ffff));
                    }
                    _ => {}
                }
            }
            proptest::prop_assert_eq!(events(&stream, &cuts), expected);
        }
    }
}
