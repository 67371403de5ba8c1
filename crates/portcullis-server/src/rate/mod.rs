//! Minimum data rates after the request head (Kestrel's model): once a grace period has
//! passed, a request body must arrive, and a response be taken by the client, at a minimum
//! rate. hyper has neither, and a timer on a body never fires against a slow reader: hyper
//! stops polling the body while the socket is full.
//!
//! | direction | measured on | time that counts | below the rate |
//! |---|---|---|---|
//! | request body | [`RequestBody`](crate::RequestBody), per request | while the application awaits a frame, at most one [`RATE_TICK`] per tick, not while the HTTP/2 connection window we advertised is used up | 408 if no response has started; then HTTP/1 closes, HTTP/2 resets the stream |
//! | response | the connection's writes (`io.rs`) | from a write the socket does not take at once until it has taken everything | the connection closes |
//! | response, HTTP/2 stream | its body (`stream.rs`) | from a frame the stream hands on until the stream asks for the next one | the stream is reset |
//!
//! The rules, each for a reason:
//!
//! 1. A body's time counts only while the application waits for it: an application busy
//!    elsewhere (backpressure) is not the client's fault.
//! 2. It counts by at most one tick per tick, so a server whose runtime stalled for ten
//!    seconds does not blame its clients for them.
//! 3. An HTTP/2 stream's body is not timed while the connection-level window the server
//!    advertised is used up (other streams' applications are not reading): the client may not
//!    send. The window is read off the frames themselves (`h2_window.rs`): DATA the client
//!    sent, WINDOW_UPDATE on stream 0 the server sent.
//! 4. A write gets at least the grace period, and longer at the rate for its size; bytes that
//!    join a stalled write extend its deadline at the rate. A slow reader is closed once it
//!    falls behind by more than that, wherever the response is produced.
//! 5. Upgraded connections (`101 Switching Protocols`) leave HTTP and these rules with it.
//!
//! Per route, [`MinRateLayer`] changes the rates of one route's requests (an upload route, a
//! long poll, a download for slow links).

mod h2_window;
mod layer;
mod request;
mod stream;
mod write;

use std::fmt;
use std::time::Duration;

use crate::state::{Nanos, nanos};

pub use layer::{MinRateFuture, MinRateLayer, MinRateService};
pub use request::{BodyError, RequestBody};

pub(crate) use h2_window::INITIAL_WINDOW as H2_INITIAL_WINDOW;
pub use h2_window::{Event as H2Event, FrameScanner};
pub(crate) use layer::{BodyRate, ResponseRate};
pub(crate) use request::BodyShared;
pub(crate) use stream::{StreamTask, StreamWatch};
pub(crate) use write::WriteStall;

/// How often a waiting request body is checked, and the most time one check can add to the
/// time its client is held to (Kestrel's heartbeat).
pub const RATE_TICK: Duration = Duration::from_secs(1);

/// The default of [`HttpConfig::min_body_rate`](crate::HttpConfig::min_body_rate) and
/// [`HttpConfig::min_response_rate`](crate::HttpConfig::min_response_rate): 240 bytes per
/// second after 5 seconds, Kestrel's default. The slowest legitimate links (2G mobile, about
/// 5 KB/s) pass twenty times over; a trickle of a few bytes per second holds a connection for
/// about six seconds instead of forever.
pub const DEFAULT_MIN_RATE: MinRate = MinRate::new(240, Duration::from_secs(5));

/// A minimum data rate: bytes per second, enforced once a grace period has passed.
///
/// ```
/// use std::time::Duration;
/// use portcullis_server::MinRate;
///
/// let upload = MinRate::new(1024, Duration::from_secs(10));
/// assert_eq!(upload.bytes_per_second(), 1024);
/// assert!(MinRate::OFF.is_off());
/// assert_eq!(upload.to_string(), "1024 B/s after 10s");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MinRate {
    bytes_per_second: u32,
    grace: Duration,
}

/// `MinRate` packed in a `u64` for atomics: the rate in the high half, the grace in whole
/// milliseconds (saturating) in the low half. `NO_RATE` (all ones) is "not set".
pub(crate) const NO_RATE: u64 = u64::MAX;

impl MinRate {
    /// No minimum: the direction is not checked.
    pub const OFF: MinRate = MinRate {
        bytes_per_second: 0,
        grace: Duration::ZERO,
    };

    /// At least `bytes_per_second` once `grace` has passed; a rate of 0 is [`OFF`](Self::OFF).
    #[must_use]
    pub const fn new(bytes_per_second: u32, grace: Duration) -> Self {
        if bytes_per_second == 0 {
            return Self::OFF;
        }
        Self {
            bytes_per_second,
            grace,
        }
    }

    /// The rate, in bytes per second; 0 when off.
    #[must_use]
    pub const fn bytes_per_second(self) -> u32 {
        self.bytes_per_second
    }

    /// The grace period before the rate applies.
    #[must_use]
    pub const fn grace(self) -> Duration {
        self.grace
    }

    /// Whether there is no minimum.
    #[must_use]
    pub const fn is_off(self) -> bool {
        self.bytes_per_second == 0
    }

    /// How long `bytes` may take at this rate, without the grace period.
    pub(crate) fn at_rate(self, bytes: u64) -> Nanos {
        let rate = u128::from(self.bytes_per_second.max(1));
        u64::try_from(u128::from(bytes) * 1_000_000_000 / rate).unwrap_or(u64::MAX)
    }

    /// How long a write of `bytes` may take: the grace period, or longer at the rate, and
    /// never under one [`RATE_TICK`] (a grace of zero does not cut a socket that pushes back
    /// for a moment).
    pub(crate) fn allowance(self, bytes: u64) -> Nanos {
        self.at_rate(bytes)
            .max(nanos(self.grace))
            .max(nanos(RATE_TICK))
    }

    /// Whether `bytes` over `waited` is below the rate, once `waited` is past the grace.
    pub(crate) fn is_below(self, bytes: u64, waited: Nanos) -> bool {
        !self.is_off()
            && waited > nanos(self.grace)
            && u128::from(bytes) * 1_000_000_000
                < u128::from(self.bytes_per_second) * u128::from(waited)
    }

    pub(crate) fn pack(self) -> u64 {
        let millis = u32::try_from(self.grace.as_millis()).unwrap_or(u32::MAX - 1);
        // All ones is `NO_RATE`: the grace of a rate of u32::MAX B/s stops just short.
        let millis = if self.bytes_per_second == u32::MAX {
            millis.min(u32::MAX - 1)
        } else {
            millis
        };
        (u64::from(self.bytes_per_second) << 32) | u64::from(millis)
    }

    pub(crate) fn unpack(packed: u64) -> Option<Self> {
        (packed != NO_RATE).then(|| {
            let rate = (packed >> 32) as u32;
            let millis = packed as u32;
            MinRate::new(rate, Duration::from_millis(u64::from(millis)))
        })
    }
}

impl fmt::Display for MinRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_off() {
            return f.write_str("off");
        }
        write!(f, "{} B/s after {:?}", self.bytes_per_second, self.grace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_is_the_grace_or_longer_at_the_rate() {
        let rate = MinRate::new(240, Duration::from_secs(5));
        assert_eq!(rate.allowance(10), nanos(Duration::from_secs(5)));
        assert_eq!(rate.allowance(2400), nanos(Duration::from_secs(10)));
        assert_eq!(MinRate::OFF.at_rate(u64::MAX), u64::MAX, "saturates");
    }

    #[test]
    fn below_only_after_the_grace() {
        let rate = MinRate::new(100, Duration::from_secs(2));
        let second = nanos(Duration::from_secs(1));
        assert!(!rate.is_below(0, 2 * second), "still in the grace");
        assert!(rate.is_below(299, 3 * second));
        assert!(!rate.is_below(300, 3 * second));
        assert!(!MinRate::OFF.is_below(0, u64::MAX));
    }

    proptest::proptest! {
        /// Packing keeps the rate and the grace to the millisecond, and never makes "not set".
        #[test]
        fn packing_round_trips(rate: u32, millis in 0u64..(u64::from(u32::MAX) - 1)) {
            let min = MinRate::new(rate, Duration::from_millis(millis));
            let packed = min.pack();
            proptest::prop_assert_ne!(packed, NO_RATE);
            proptest::prop_assert_eq!(MinRate::unpack(packed), Some(min));
        }

        /// The rate check agrees with the division it stands for.
        #[test]
        fn below_is_bytes_per_second_under_the_rate(
            rate in 1u32..1_000_000,
            bytes in 0u64..1_000_000_000,
            waited_ms in 5_001u64..1_000_000,
        ) {
            let min = MinRate::new(rate, Duration::from_secs(5));
            let waited = nanos(Duration::from_millis(waited_ms));
            let per_second = bytes as f64 / (waited_ms as f64 / 1000.0);
            let below = min.is_below(bytes, waited);
            // Away from the boundary, where float rounding cannot decide.
            if (per_second - f64::from(rate)).abs() > 1e-6 * f64::from(rate) {
                proptest::prop_assert_eq!(below, per_second < f64::from(rate));
            }
        }
    }
}
