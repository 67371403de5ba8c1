//! The clocks a limiter can read time from, re-exported from governor on purpose: the
//! limiters are generic over governor's [`Clock`] so that tests can use a fake one
//! ([`FakeRelativeClock`]); [`DefaultClock`] (quanta's TSC-based clock) is what they use
//! otherwise.

pub use governor::clock::{Clock, DefaultClock, FakeRelativeClock, Reference};
