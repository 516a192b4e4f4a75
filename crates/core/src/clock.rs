//! The server's time. In production it is the system's clocks; a test shares a clock with
//! the server it starts and moves it forward to pass a window — a recall's, a rate limit's,
//! a token's, a heartbeat's — at once, instead of sleeping through it and hoping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Wall-clock milliseconds (what messages and tokens carry) and a monotonic `Instant`
/// (what token buckets and deadlines measure), both shifted by the time skipped with
/// [`Clock::advance`]. Clones share one clock.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    skipped_ms: Arc<AtomicU64>,
}

impl Clock {
    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> u64 {
        crate::now_ms() + self.skipped()
    }

    /// A monotonic instant.
    pub fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.skipped())
    }

    /// Moves this clock (and every clone of it) forward by `by`. Time never goes back.
    pub fn advance(&self, by: Duration) {
        let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        self.skipped_ms.fetch_add(ms, Ordering::Relaxed);
    }

    fn skipped(&self) -> u64 {
        self.skipped_ms.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_moves_both_times_and_its_clones() {
        let clock = Clock::default();
        let other = clock.clone();
        let (ms, at) = (clock.now_ms(), clock.now());
        other.advance(Duration::from_secs(90));
        assert!(clock.now_ms() >= ms + 90_000);
        assert!(clock.now() >= at + Duration::from_secs(90));
        // A fresh clock is the system's.
        let system = Clock::default();
        assert!(system.now_ms() < ms + 60_000);
    }
}
