//! Connection admission (seed 000 Q7): how many clients may ask for a gateway, per source
//! IP and in all, as token buckets — a burst is allowed, then a steady rate. A client that
//! is refused is told when to try again.
//!
//! The per-IP table is bounded: when it is full, buckets that have refilled completely
//! (idle IPs) are forgotten; if none has, a new IP is judged by the global bucket alone.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct AdmissionConfig {
    pub per_ip_per_sec: f64,
    pub per_ip_burst: f64,
    pub global_per_sec: f64,
    pub global_burst: f64,
    /// Source IPs tracked at once.
    pub max_ips: usize,
}

impl From<&xinge_core::config::RouteConfig> for AdmissionConfig {
    fn from(c: &xinge_core::config::RouteConfig) -> Self {
        Self {
            per_ip_per_sec: c.per_ip_per_sec,
            per_ip_burst: c.per_ip_burst,
            global_per_sec: c.global_per_sec,
            global_burst: c.global_burst,
            max_ips: c.max_ips,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, rate: f64, burst: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / rate.max(1e-9),
            ))
        }
    }
}

pub struct Admission {
    cfg: AdmissionConfig,
    global: Mutex<Bucket>,
    ips: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        let now = Instant::now();
        Self {
            global: Mutex::new(Bucket::full(cfg.global_burst, now)),
            ips: Mutex::new(HashMap::new()),
            cfg,
        }
    }

    /// `Ok` admits one client from `ip`; `Err(retry_after)` refuses it.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let c = &self.cfg;
        {
            let mut ips = self.ips.lock().unwrap_or_else(|p| p.into_inner());
            if !ips.contains_key(&ip) && ips.len() >= c.max_ips {
                ips.retain(|_, b| {
                    b.refill(c.per_ip_per_sec, c.per_ip_burst, now);
                    b.tokens < c.per_ip_burst
                });
            }
            if ips.len() < c.max_ips || ips.contains_key(&ip) {
                ips.entry(ip)
                    .or_insert_with(|| Bucket::full(c.per_ip_burst, now))
                    .take(c.per_ip_per_sec, c.per_ip_burst, now)?;
            }
        }
        self.global.lock().unwrap_or_else(|p| p.into_inner()).take(
            c.global_per_sec,
            c.global_burst,
            now,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_ips: usize) -> AdmissionConfig {
        AdmissionConfig {
            per_ip_per_sec: 2.0,
            per_ip_burst: 3.0,
            global_per_sec: 10.0,
            global_burst: 5.0,
            max_ips,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, n])
    }

    #[test]
    fn a_burst_per_ip_then_its_rate_with_a_retry_after() {
        let a = Admission::new(cfg(100));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(a.admit(ip(1), t0).is_ok());
        }
        let wait = a.admit(ip(1), t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert!(a.admit(ip(2), t0).is_ok(), "another IP is not held back");
        assert!(
            a.admit(ip(1), t0 + Duration::from_millis(500)).is_ok(),
            "refilled at 2/s"
        );
    }

    #[test]
    fn the_global_bucket_caps_everyone() {
        let a = Admission::new(cfg(100));
        let t0 = Instant::now();
        let admitted = (1..=20).filter(|n| a.admit(ip(*n), t0).is_ok()).count();
        assert_eq!(admitted, 5);
    }

    #[test]
    fn the_ip_table_is_bounded_and_forgets_idle_ips() {
        let a = Admission::new(AdmissionConfig {
            global_burst: 1e9,
            global_per_sec: 1e9,
            ..cfg(2)
        });
        let t0 = Instant::now();
        assert!(a.admit(ip(1), t0).is_ok());
        assert!(a.admit(ip(2), t0).is_ok());
        // Full, nobody idle: a third IP is judged by the global bucket only.
        assert!(a.admit(ip(3), t0).is_ok());
        assert_eq!(a.ips.lock().unwrap().len(), 2);
        // Later both have refilled: they are forgotten to make room.
        assert!(a.admit(ip(3), t0 + Duration::from_secs(5)).is_ok());
        assert_eq!(a.ips.lock().unwrap().len(), 1);
    }
}
