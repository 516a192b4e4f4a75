//! Token buckets: a burst is allowed, then a steady rate; a refused caller is told how long
//! until it may try again. [`Keyed`] keeps one bucket per key in a bounded table.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate and a burst.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_sec: f64,
    pub burst: f64,
}

#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub fn full(rate: Rate, now: Instant) -> Self {
        Self {
            tokens: rate.burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate.per_sec).min(rate.burst);
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    pub fn take(&mut self, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.per_sec.max(1e-9),
            ))
        }
    }

    fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
        self.refill(rate, now);
        self.tokens >= rate.burst
    }
}

/// One bucket per key, at most `max_keys` of them. When the table is full, keys whose
/// bucket has refilled completely (idle ones) are forgotten; if none has, a new key is not
/// limited here (callers pair this with a global limit where that matters).
pub struct Keyed<K> {
    rate: Rate,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Copy> Keyed<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        Self {
            rate,
            max_keys: max_keys.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn take(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !b.contains_key(&key) && b.len() >= self.max_keys {
            let rate = self.rate;
            b.retain(|_, bucket| !bucket.is_full(rate, now));
            if b.len() >= self.max_keys {
                return Ok(());
            }
        }
        b.entry(key)
            .or_insert_with(|| Bucket::full(self.rate, now))
            .take(self.rate, now)
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: Rate = Rate {
        per_sec: 2.0,
        burst: 3.0,
    };

    #[test]
    fn a_burst_then_the_rate_with_a_retry_after() {
        let k = Keyed::new(RATE, 100);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(k.take(1, t0).is_ok());
        }
        let wait = k.take(1, t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(k.take(2, t0).is_ok(), "another key is not held back");
        assert!(
            k.take(1, t0 + Duration::from_millis(500)).is_ok(),
            "refilled at 2/s"
        );
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_keys() {
        let k = Keyed::new(RATE, 2);
        let t0 = Instant::now();
        assert!(k.take(1, t0).is_ok());
        assert!(k.take(2, t0).is_ok());
        // Full, nobody idle: a third key is let through untracked.
        assert!(k.take(3, t0).is_ok());
        assert_eq!(k.len(), 2);
        // Later both have refilled: they are forgotten to make room.
        assert!(k.take(3, t0 + Duration::from_secs(5)).is_ok());
        assert_eq!(k.len(), 1);
    }
}
