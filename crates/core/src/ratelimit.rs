//! Token buckets: a burst is allowed, then a steady rate; a refused caller is told how long
//! until it may try again. [`Keyed`] keeps one bucket per key in a bounded table;
//! [`Admission`] limits new connections per source IP and in all (route and gateways).

use crate::config::AdmissionConfig;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
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

    /// Takes as many whole tokens as are there, up to `n`; returns how many.
    pub fn take_up_to(&mut self, rate: Rate, now: Instant, n: usize) -> usize {
        self.refill(rate, now);
        let took = (self.tokens.max(0.0).floor() as usize).min(n);
        self.tokens -= took as f64;
        took
    }

    /// Refilled to the burst: the bucket remembers nothing a fresh one would not.
    pub fn is_full(&mut self, rate: Rate, now: Instant) -> bool {
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

    /// Whether a `take` for `key` now would succeed (or how long until it would), taking
    /// nothing: for limits that count only some outcomes (failed logins), checked before
    /// the call and taken after it if it counts.
    pub fn peek(&self, key: K, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match b.get_mut(&key) {
            Some(bucket) => {
                let mut probe = *bucket;
                probe.take(self.rate, now)
            }
            None => Ok(()),
        }
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Connection admission, so a reconnect storm or one abusive address cannot swamp a
/// process: how many clients may connect, per source IP and in all. The per-IP table is bounded (`max_ips`): when it is full, idle IPs are forgotten;
/// if none is idle, a new IP is judged by the global bucket alone.
pub struct Admission {
    global_rate: Rate,
    global: Mutex<Bucket>,
    per_ip: Keyed<IpAddr>,
}

impl Admission {
    pub fn new(c: &AdmissionConfig) -> Self {
        let global_rate = Rate {
            per_sec: c.global_per_sec,
            burst: c.global_burst,
        };
        let ip_rate = Rate {
            per_sec: c.per_ip_per_sec,
            burst: c.per_ip_burst,
        };
        Self {
            global: Mutex::new(Bucket::full(global_rate, Instant::now())),
            global_rate,
            per_ip: Keyed::new(ip_rate, c.max_ips),
        }
    }

    /// `Ok` admits one client from `ip`; `Err(retry_after)` refuses it.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.per_ip.take(ip, now)?;
        self.global
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take(self.global_rate, now)
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
        assert_eq!(
            k.peek(1, t0),
            k.take(1, t0),
            "a peek says what a take would"
        );
        assert!(
            k.peek(2, t0).is_ok() && k.peek(3, t0).is_ok(),
            "a new key has its burst"
        );
        for _ in 0..10 {
            assert!(k.peek(2, t0).is_ok(), "a peek takes nothing");
        }
        assert_eq!(k.len(), 2, "and remembers no new key");
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

    #[test]
    fn admission_per_ip_then_global() {
        let a = Admission::new(&AdmissionConfig {
            per_ip_per_sec: 1.0,
            per_ip_burst: 2.0,
            global_per_sec: 1.0,
            global_burst: 5.0,
            max_ips: 100,
        });
        let t0 = Instant::now();
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        assert!(a.admit(ip(1), t0).is_ok());
        assert!(a.admit(ip(1), t0).is_ok());
        assert!(a.admit(ip(1), t0).is_err(), "this IP's burst is spent");
        let others = (2..=20).filter(|n| a.admit(ip(*n), t0).is_ok()).count();
        assert_eq!(others, 3, "the global burst of 5 is shared by everyone");
    }
}
