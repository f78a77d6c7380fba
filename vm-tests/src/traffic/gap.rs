//! Measuring the pause clients see: the longest wait for reply data while
//! something was outstanding.

use std::time::{Duration, Instant};

/// Tracks the longest interval between two successive arrivals of reply data
/// while something was outstanding (sent, not yet answered).
///
/// The clock of the current gap starts when data arrives, or when something is
/// sent while nothing was outstanding; idle time with nothing outstanding is
/// therefore never counted, and in a healthy run the gaps are round trips.
#[derive(Debug, Clone)]
pub struct GapTracker {
    since: Instant,
    max_gap: Duration,
    max_gap_end: Option<Instant>,
}

impl GapTracker {
    /// A tracker whose clock starts at `now` (when the conversation starts).
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            max_gap: Duration::ZERO,
            max_gap_end: None,
        }
    }

    /// Something is sent at `now`; `outstanding_before` says whether anything
    /// was outstanding just before.
    pub fn on_send(&mut self, now: Instant, outstanding_before: bool) {
        if !outstanding_before {
            self.since = now;
        }
    }

    /// Reply data arrived at `now`; `outstanding_before` says whether anything
    /// was outstanding just before it.
    pub fn on_data(&mut self, now: Instant, outstanding_before: bool) {
        if outstanding_before {
            let gap = now.saturating_duration_since(self.since);
            if gap > self.max_gap || self.max_gap_end.is_none() {
                self.max_gap = gap;
                self.max_gap_end = Some(now);
            }
        }
        self.since = now;
    }

    /// The gap in progress at `now` (zero when nothing is outstanding).
    pub fn current_gap(&self, now: Instant, outstanding: bool) -> Duration {
        if outstanding {
            now.saturating_duration_since(self.since)
        } else {
            Duration::ZERO
        }
    }

    /// The longest completed gap so far.
    pub fn max_gap(&self) -> Duration {
        self.max_gap
    }

    /// When the longest completed gap ended (`None` before the first one).
    pub fn max_gap_end(&self) -> Option<Instant> {
        self.max_gap_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn idle_time_is_not_a_gap_but_a_stall_is() {
        let t0 = Instant::now();
        let mut g = GapTracker::new(t0);
        assert_eq!(g.max_gap_end(), None);
        // Send at 50 ms with nothing outstanding, reply 1 ms later.
        g.on_send(t0 + ms(50), false);
        g.on_data(t0 + ms(51), true);
        assert_eq!(g.max_gap(), ms(1));
        // Idle for 1 s, then a send whose reply stalls for 2 s.
        g.on_send(t0 + ms(1051), false);
        assert_eq!(g.current_gap(t0 + ms(2051), true), ms(1000));
        assert_eq!(g.current_gap(t0 + ms(2051), false), Duration::ZERO);
        // More sends while outstanding do not restart the clock.
        g.on_send(t0 + ms(1101), true);
        g.on_data(t0 + ms(3051), true);
        assert_eq!(g.max_gap(), ms(2000));
        assert_eq!(g.max_gap_end(), Some(t0 + ms(3051)));
        // Data between two replies of the same burst: measured from the last data.
        g.on_data(t0 + ms(3060), true);
        assert_eq!(g.max_gap(), ms(2000));
        // Data when nothing was outstanding does not count.
        g.on_data(t0 + ms(9000), false);
        assert_eq!(g.max_gap(), ms(2000));
    }
}
