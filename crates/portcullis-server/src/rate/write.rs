//! The response rate on a connection's writes: a write the socket does not take at once must
//! be taken within its allowance, or the connection closes.

use crate::state::ConnState;

/// The bytes of a stalled write the socket has not taken yet, kept by the connection's I/O.
///
/// Nothing is timed while writes go through at once, which is every write of a client that
/// reads: the clock is read only when the socket pushes back.
#[derive(Debug, Default)]
pub(crate) struct WriteStall {
    /// Bytes presented and not taken since the socket pushed back; 0 when nothing is timed.
    owed: u64,
}

impl WriteStall {
    /// Whether a stalled write is being timed.
    pub(crate) fn is_timing(&self) -> bool {
        self.owed > 0
    }

    /// A write of `presented` bytes returned: `taken` bytes went out, or none (`None`: the
    /// socket is full).
    pub(crate) fn wrote(&mut self, state: &ConnState, presented: u64, taken: Option<u64>) {
        match taken {
            // The common case, with nothing owed: one comparison.
            Some(_) if self.owed == 0 => {}
            Some(taken) => {
                self.join(state, presented);
                self.owed = self.owed.saturating_sub(taken);
                if self.owed == 0 {
                    state.clear_write_deadline();
                } else if taken > 0 {
                    let rate = state.write_rate();
                    state.cap_write_deadline(state.now().saturating_add(rate.allowance(self.owed)));
                }
            }
            None if self.owed == 0 => {
                let rate = state.write_rate();
                if rate.is_off() {
                    return;
                }
                // A write of nothing cannot stall, but a flush can: it owes at least a byte.
                self.owed = presented.max(1);
                state.set_write_deadline(state.now().saturating_add(rate.allowance(presented)));
            }
            None => self.join(state, presented),
        }
    }

    /// A flush returned: `done` when everything buffered below went out.
    pub(crate) fn flushed(&mut self, state: &ConnState, done: bool) {
        if done {
            if self.owed > 0 {
                self.owed = 0;
                state.clear_write_deadline();
            }
        } else {
            self.wrote(state, 0, None);
        }
    }

    /// Bytes beyond those already owed joined the stalled write: they extend its deadline at
    /// the rate, without a second grace period.
    fn join(&mut self, state: &ConnState, presented: u64) {
        if presented > self.owed {
            let rate = state.write_rate();
            state.extend_write_deadline(rate.at_rate(presented - self.owed));
            self.owed = presented;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::rate::MinRate;
    use crate::state::{Deadline, nanos};

    const RATE: MinRate = MinRate::new(100, Duration::from_secs(2));

    fn write_deadline(state: &std::sync::Arc<ConnState>) -> Option<Deadline> {
        let _request = state.request_started();
        state.deadline(u64::MAX, u64::MAX)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_gets_the_grace_or_its_size_at_the_rate_and_joins_extend_it() {
        let state = ConnState::with_response_rate(Instant::now(), RATE);
        let mut stall = WriteStall::default();
        stall.wrote(&state, 50, Some(50));
        assert_eq!(write_deadline(&state), None, "taken at once: nothing timed");

        stall.wrote(&state, 1000, None);
        let at = write_deadline(&state).expect("stalled").at;
        assert_eq!(at, nanos(Duration::from_secs(10)), "1000 B at 100 B/s");
        // Half taken at 3 s: the bytes taken earn nothing, what is left gets its own
        // allowance from now (3 s + 5 s).
        tokio::time::advance(Duration::from_secs(3)).await;
        stall.wrote(&state, 1000, Some(500));
        assert_eq!(
            write_deadline(&state).map(|d| d.at),
            Some(nanos(Duration::from_secs(8)))
        );
        // 500 more bytes join: 5 s more, no second grace.
        stall.wrote(&state, 1000, None);
        assert_eq!(
            write_deadline(&state).map(|d| d.at),
            Some(nanos(Duration::from_secs(13)))
        );
        stall.wrote(&state, 1000, Some(1000));
        assert_eq!(write_deadline(&state), None, "all taken: nothing owed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_flush_owes_the_grace_and_an_override_applies() {
        let state = ConnState::with_response_rate(Instant::now(), RATE);
        let mut stall = WriteStall::default();
        stall.flushed(&state, false);
        assert_eq!(
            write_deadline(&state).map(|d| d.at),
            Some(nanos(Duration::from_secs(2)))
        );
        stall.flushed(&state, true);
        assert_eq!(write_deadline(&state), None);

        state.override_write_rate(MinRate::OFF);
        stall.wrote(&state, 1000, None);
        assert_eq!(write_deadline(&state), None, "off for this response");
    }
}
