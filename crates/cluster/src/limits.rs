//! Per-user rate limits shared by every api process, as counters in Redis.

use crate::{Names, Redis};
use std::time::Duration;
use xinge_core::UserId;
use xinge_core::config::LimitsConfig;
use xinge_logic::limits::{Limited, Limiter};

/// The limit is on every send's path: a Redis that is slow or failing over must not hold
/// sends up for longer than this.
const ANSWER_WITHIN: Duration = Duration::from_millis(50);

const LIMIT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n";

/// The window a call at `now` counts in: `burst / per_sec` long (at least 1 ms), and its
/// number since the epoch. Every api process agrees on it by the clock alone.
fn window_of(burst: f64, per_sec: f64, now: u64) -> (u64, u64) {
    let window_ms = ((burst / per_sec) * 1000.0).max(1.0) as u64;
    (window_ms, now / window_ms)
}

/// Per-user limits shared by every api process: a counter per user, kind and window in
/// Redis. The window is `burst / rate` long and allows `burst` calls, so the long-run rate
/// and the largest burst match the one-process token buckets. If Redis cannot answer, the
/// call is allowed (and counted): a limit must not take the service down with it, nor
/// wait for a failover.
pub struct SharedLimiter {
    redis: Redis,
    names: Names,
    cfg: LimitsConfig,
    script: redis::Script,
}

impl SharedLimiter {
    pub fn new(redis: Redis, names: Names, cfg: LimitsConfig) -> Self {
        Self {
            redis,
            names,
            cfg,
            script: redis::Script::new(LIMIT),
        }
    }

    /// Counts one call of `what` in `key`'s counter (named by `name(window)`): `Ok`, or how
    /// long until the next window.
    async fn count(&self, what: Limited, name: impl Fn(u64) -> String) -> Result<(), Duration> {
        let rate = what.rate(&self.cfg);
        let now = xinge_core::now_ms();
        let (window_ms, window) = window_of(rate.burst, rate.per_sec, now);
        let mut conn = self.redis.clone();
        let n = tokio::time::timeout(
            ANSWER_WITHIN,
            self.script
                .key(name(window))
                .arg(window_ms * 2)
                .invoke_async::<u64>(&mut conn),
        )
        .await
        .unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "no answer in time",
            )))
        });
        match n {
            Ok(n) if n as f64 > rate.burst => {
                Err(Duration::from_millis((window + 1) * window_ms - now))
            }
            Ok(_) => Ok(()),
            Err(e) => {
                metrics::counter!("xinge_registry_errors_total").increment(1);
                tracing::warn!(error = %e, "rate limit unknown: allowed");
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl Limiter for SharedLimiter {
    async fn check(&self, user: UserId, what: Limited) -> Result<(), Duration> {
        self.count(what, |window| {
            self.names.limit_key(user, what.as_str(), window)
        })
        .await
    }

    async fn check_key(&self, key: &str, what: Limited) -> Result<(), Duration> {
        self.count(what, |window| {
            self.names.key_limit_key(key, what.as_str(), window)
        })
        .await
    }

    async fn peek_key(&self, key: &str, what: Limited) -> Result<(), Duration> {
        let rate = what.rate(&self.cfg);
        let now = xinge_core::now_ms();
        let (window_ms, window) = window_of(rate.burst, rate.per_sec, now);
        let name = self.names.key_limit_key(key, what.as_str(), window);
        let mut conn = self.redis.clone();
        let n = tokio::time::timeout(
            ANSWER_WITHIN,
            redis::cmd("GET")
                .arg(name)
                .query_async::<Option<u64>>(&mut conn),
        )
        .await;
        match n {
            Ok(Ok(n)) if n.unwrap_or(0) as f64 >= rate.burst => {
                Err(Duration::from_millis((window + 1) * window_ms - now))
            }
            Ok(Ok(_)) => Ok(()),
            _ => {
                metrics::counter!("xinge_registry_errors_total").increment(1);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_allows_the_burst_at_the_long_run_rate() {
        // 5 calls a window at 1 a second: a 5 s window.
        assert_eq!(window_of(5.0, 1.0, 12_345), (5_000, 2));
        assert_eq!(window_of(5.0, 1.0, 14_999).1, 2);
        assert_eq!(
            window_of(5.0, 1.0, 15_000).1,
            3,
            "the next window starts on time"
        );
        assert_eq!(window_of(10.0, 20.0, 1_000), (500, 2));
        assert_eq!(window_of(1.0, 1e9, 7).0, 1, "never shorter than 1 ms");
    }
}
