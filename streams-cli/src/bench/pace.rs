//! Publishing at a steady rate: how many messages go in one write and when each write
//! is due.

use std::time::{Duration, Instant};

/// The schedule of a bench's writes: batches of `batch` messages, each due when the
/// rate says its first message is (or at once, without a rate).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    rate: Option<u64>,
    batch: usize,
}

impl Pace {
    /// `batch` messages per write; with a `rate` (messages per second), at most a
    /// millisecond's worth per write, so that the pace is steady and the latency
    /// measured is the platform's rather than that of a burst queueing.
    pub(crate) fn new(rate: Option<u64>, batch: usize) -> Self {
        let batch = match rate {
            Some(rate) => batch.clamp(1, usize::try_from(rate / 1000).unwrap_or(1).max(1)),
            None => batch.max(1),
        };
        Pace { rate, batch }
    }

    /// Messages per write.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// When the write starting with message `first` is due, `start` being when the
    /// first write was; `None` without a rate (as soon as possible).
    pub(crate) fn due(&self, start: Instant, first: usize) -> Option<Instant> {
        let rate = self.rate?;
        // Integer nanoseconds: no drift from adding up rounded intervals.
        let nanos = (first as u128 * 1_000_000_000) / u128::from(rate.max(1));
        Some(start + Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX)))
    }

    /// Sleeps until the write starting with message `first` is due.
    pub(crate) async fn wait(&self, start: Instant, first: usize) {
        if let Some(due) = self.due(start, first) {
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_at_most_a_millisecond_at_a_rate() {
        assert_eq!(Pace::new(None, 1000).batch(), 1000);
        assert_eq!(Pace::new(None, 0).batch(), 1);
        assert_eq!(Pace::new(Some(100_000), 1000).batch(), 100);
        assert_eq!(Pace::new(Some(10_000_000), 1000).batch(), 1000);
        assert_eq!(Pace::new(Some(500), 1000).batch(), 1);
    }

    #[test]
    fn writes_are_due_at_the_rate_without_drift() {
        let start = Instant::now();
        let pace = Pace::new(Some(1000), 1000);
        assert_eq!(pace.due(start, 0), Some(start));
        assert_eq!(pace.due(start, 1), Some(start + Duration::from_millis(1)));
        assert_eq!(
            pace.due(start, 1_000_000),
            Some(start + Duration::from_secs(1000))
        );
        let pace = Pace::new(Some(3), 1);
        assert_eq!(
            pace.due(start, 3_000_000),
            Some(start + Duration::from_secs(1_000_000))
        );
        assert_eq!(Pace::new(None, 10).due(start, 5), None);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_follows_the_schedule() {
        let start = Instant::now();
        let pace = Pace::new(Some(10_000), 1000);
        let clock = tokio::time::Instant::now();
        for first in (0..1000).step_by(pace.batch()) {
            pace.wait(start, first).await;
        }
        // The last batch (message 990) is due 99 ms after the start.
        let waited = clock.elapsed();
        assert!(waited >= Duration::from_millis(98), "{waited:?}");
        assert!(waited < Duration::from_millis(120), "{waited:?}");
    }
}
