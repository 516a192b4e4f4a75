//! Sends and pulls per user: the api's own limit, so that one user cannot take a server's
//! capacity. In one process the buckets are in memory ([`LocalLimiter`]); the distributed
//! api processes share counters in Redis (crate `cluster`), so a user cannot multiply the
//! limit by spreading over them.

use async_trait::async_trait;
use std::time::Duration;
use xinge_core::UserId;
use xinge_core::clock::Clock;
use xinge_core::config::LimitsConfig;
use xinge_core::ratelimit::{Keyed, Rate};

/// What is being limited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    Send,
    Pull,
}

impl Limited {
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Send => "send",
            Limited::Pull => "pull",
        }
    }

    /// This kind's rate in `cfg`.
    pub fn rate(self, cfg: &LimitsConfig) -> Rate {
        match self {
            Limited::Send => Rate {
                per_sec: cfg.sends_per_sec,
                burst: cfg.sends_burst,
            },
            Limited::Pull => Rate {
                per_sec: cfg.pulls_per_sec,
                burst: cfg.pulls_burst,
            },
        }
    }
}

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// `Ok`, or how long until `user` may do `what` again.
    async fn check(&self, user: UserId, what: Limited) -> Result<(), Duration>;
}

/// Token buckets per user in this process, at most `limits.max_users` of each kind
/// (idle users are forgotten first).
pub struct LocalLimiter {
    sends: Keyed<UserId>,
    pulls: Keyed<UserId>,
    clock: Clock,
}

impl LocalLimiter {
    pub fn new(cfg: &LimitsConfig, clock: Clock) -> Self {
        Self {
            sends: Keyed::new(Limited::Send.rate(cfg), cfg.max_users),
            pulls: Keyed::new(Limited::Pull.rate(cfg), cfg.max_users),
            clock,
        }
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn check(&self, user: UserId, what: Limited) -> Result<(), Duration> {
        let keyed = match what {
            Limited::Send => &self.sends,
            Limited::Pull => &self.pulls,
        };
        keyed.take(user, self.clock.now())
    }
}

impl crate::Logic {
    /// Refuses `user` with `rate_limited` when over the limit for `what`.
    pub(crate) async fn limit(&self, user: UserId, what: Limited) -> crate::Result<()> {
        self.limiter.check(user, what).await.map_err(|wait| {
            metrics::counter!("xinge_rate_limited_total", "what" => what.as_str()).increment(1);
            xinge_core::error::ApiError::rate_limited(
                format!(
                    "too many {}s: retry in {} ms",
                    what.as_str(),
                    wait.as_millis().max(1)
                ),
                wait,
            )
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_over_the_burst_waits_one_token_and_others_not_at_all() {
        let cfg = LimitsConfig::default();
        let clock = Clock::default();
        let limiter = LocalLimiter::new(&cfg, clock.clone());
        let (alice, bob) = (UserId(1), UserId(2));
        for _ in 0..cfg.sends_burst as usize {
            assert!(limiter.check(alice, Limited::Send).await.is_ok());
        }
        let wait = limiter.check(alice, Limited::Send).await.unwrap_err();
        let token = Duration::from_secs_f64(1.0 / cfg.sends_per_sec);
        assert!(wait > Duration::ZERO && wait <= token, "{wait:?}");
        assert!(limiter.check(bob, Limited::Send).await.is_ok());
        assert!(
            limiter.check(alice, Limited::Pull).await.is_ok(),
            "pulls have their own"
        );
        // One token's time later (on the limiter's clock, not the test's), one more send.
        clock.advance(token);
        assert!(limiter.check(alice, Limited::Send).await.is_ok());
        assert!(limiter.check(alice, Limited::Send).await.is_err());
    }
}
