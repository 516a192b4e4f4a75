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
}

#[async_trait::async_trait]
impl Limiter for SharedLimiter {
    async fn check(&self, user: UserId, what: Limited) -> Result<(), Duration> {
        let rate = what.rate(&self.cfg);
        let window_ms = ((rate.burst / rate.per_sec) * 1000.0).max(1.0) as u64;
        let now = xinge_core::now_ms();
        let window = now / window_ms;
        let key = self.names.limit_key(user, what.as_str(), window);
        let mut conn = self.redis.clone();
        let n = tokio::time::timeout(
            ANSWER_WITHIN,
            self.script
                .key(key)
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
