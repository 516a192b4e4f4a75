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

/// What is being limited (its number is its table in [`LocalLimiter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limited {
    /// A user's sends.
    Send,
    /// A user's inbox syncs and history pages.
    Pull,
    /// Failed logins for one account (keyed by the username asked for).
    LoginAccount,
    /// Failed logins from one address.
    LoginIp,
    /// New accounts from one address.
    Register,
    /// A user's new uploads.
    Upload,
}

impl Limited {
    pub fn as_str(self) -> &'static str {
        match self {
            Limited::Send => "send",
            Limited::Pull => "pull",
            Limited::LoginAccount => "login_account",
            Limited::LoginIp => "login_ip",
            Limited::Register => "register",
            Limited::Upload => "upload",
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
            Limited::LoginAccount => Rate {
                per_sec: cfg.login_failures_per_account_per_sec,
                burst: cfg.login_failures_per_account_burst,
            },
            Limited::LoginIp => Rate {
                per_sec: cfg.login_failures_per_ip_per_sec,
                burst: cfg.login_failures_per_ip_burst,
            },
            Limited::Register => Rate {
                per_sec: cfg.registrations_per_ip_per_sec,
                burst: cfg.registrations_per_ip_burst,
            },
            Limited::Upload => Rate {
                per_sec: cfg.uploads_per_sec,
                burst: cfg.uploads_burst,
            },
        }
    }
}

#[async_trait]
pub trait Limiter: Send + Sync + 'static {
    /// `Ok`, or how long until `user` may do `what` again.
    async fn check(&self, user: UserId, what: Limited) -> Result<(), Duration>;
    /// The same for a key that is not a user: an account's name, an address.
    async fn check_key(&self, key: &str, what: Limited) -> Result<(), Duration>;
    /// Whether `check_key` would let a call through now, counting nothing: for limits on
    /// some outcomes only (failed logins), which `check_key` counts once they are known.
    async fn peek_key(&self, key: &str, what: Limited) -> Result<(), Duration>;
}

/// Token buckets in this process, one table per kind, each of at most `limits.max_users`
/// keys (idle ones are forgotten first). Users are keyed by id; other keys (names,
/// addresses) by a hash seeded per process, so the tables hold no names.
pub struct LocalLimiter {
    tables: [Keyed<u64>; 6],
    hasher: std::collections::hash_map::RandomState,
    clock: Clock,
}

impl LocalLimiter {
    pub fn new(cfg: &LimitsConfig, clock: Clock) -> Self {
        let keyed = |what: Limited| Keyed::new(what.rate(cfg), cfg.max_users);
        Self {
            tables: [
                Limited::Send,
                Limited::Pull,
                Limited::LoginAccount,
                Limited::LoginIp,
                Limited::Register,
                Limited::Upload,
            ]
            .map(keyed),
            hasher: Default::default(),
            clock,
        }
    }

    fn table(&self, what: Limited) -> &Keyed<u64> {
        &self.tables[what as usize]
    }

    fn hash(&self, key: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(key)
    }
}

#[async_trait]
impl Limiter for LocalLimiter {
    async fn check(&self, user: UserId, what: Limited) -> Result<(), Duration> {
        self.table(what).take(user.0, self.clock.now())
    }

    async fn check_key(&self, key: &str, what: Limited) -> Result<(), Duration> {
        self.table(what).take(self.hash(key), self.clock.now())
    }

    async fn peek_key(&self, key: &str, what: Limited) -> Result<(), Duration> {
        self.table(what).peek(self.hash(key), self.clock.now())
    }
}

/// The `rate_limited` answer to a caller over the limit for `what`, counted.
fn limited(what: Limited, wait: Duration) -> crate::error::Error {
    metrics::counter!("xinge_rate_limited_total", "what" => what.as_str()).increment(1);
    let message = match what {
        Limited::Send | Limited::Pull | Limited::Upload => format!("too many {}s", what.as_str()),
        Limited::LoginAccount => "too many failed logins for this account".to_owned(),
        Limited::LoginIp => "too many failed logins from this address".to_owned(),
        Limited::Register => "too many new accounts from this address".to_owned(),
    };
    let mut e = xinge_core::error::ApiError::rate_limited(message, wait);
    e.message = format!(
        "{}: retry in {} ms",
        e.message,
        e.retry_after_ms.unwrap_or(1)
    );
    e.into()
}

impl crate::Logic {
    /// Refuses `user` with `rate_limited` when over the limit for `what`.
    pub(crate) async fn limit(&self, user: UserId, what: Limited) -> crate::Result<()> {
        self.limiter
            .check(user, what)
            .await
            .map_err(|wait| limited(what, wait))
    }

    /// Takes a token of each of `keys`' buckets; refuses with `rate_limited` if one is
    /// empty (the tokens of the others are spent all the same: the call was made).
    pub(crate) async fn limit_keys(&self, keys: &[(&str, Limited)]) -> crate::Result<()> {
        let mut refused = None;
        for (key, what) in keys {
            if let Err(wait) = self.limiter.check_key(key, *what).await {
                refused.get_or_insert((*what, wait));
            }
        }
        refused.map_or(Ok(()), |(what, wait)| Err(limited(what, wait)))
    }

    /// Refuses with `rate_limited` if one of `keys`' buckets is empty, taking nothing.
    pub(crate) async fn limits_allow(&self, keys: &[(&str, Limited)]) -> crate::Result<()> {
        for (key, what) in keys {
            if let Err(wait) = self.limiter.peek_key(key, *what).await {
                return Err(limited(*what, wait));
            }
        }
        Ok(())
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
