//! Connection admission (seed 000 Q7): how many clients may ask for a gateway, per source
//! IP and in all, as token buckets — a burst is allowed, then a steady rate. A client that
//! is refused is told when to try again.
//!
//! The per-IP table is bounded (`max_ips`): when it is full, idle IPs are forgotten; if
//! none is idle, a new IP is judged by the global bucket alone.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xinge_core::config::RouteConfig;
use xinge_core::ratelimit::{Bucket, Keyed, Rate};

pub struct Admission {
    global_rate: Rate,
    global: Mutex<Bucket>,
    per_ip: Keyed<IpAddr>,
}

impl Admission {
    pub fn new(c: &RouteConfig) -> Self {
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

    #[test]
    fn per_ip_then_global() {
        let a = Admission::new(&RouteConfig {
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
