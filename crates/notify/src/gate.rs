//! What every provider client shares: how hard it presses the provider (requests in
//! flight, requests per second, a timeout per request), how it retries (429, 5xx and
//! transport failures: exponential back-off with jitter, or the provider's `Retry-After`),
//! and its HTTP client (public roots plus the configured extra root).

use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use xinge_core::config::ProviderLimits;
use xinge_core::ratelimit::{Bucket, Rate};

/// What one request's answer means for the notification.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    Sent,
    /// The token or subscription is no longer valid.
    Invalid(String),
    /// Refused for good; the first part is the metrics label (`rejected`: a 4xx other than
    /// an invalid token; `auth`: the provider refused our credentials; `error`: the
    /// notification could not be made; `given_up`: attempts spent; `unserved`).
    Failed(&'static str, String),
    /// Worth another try (429, 5xx, a dropped connection, a timeout), after `after` if the
    /// provider said so.
    Again {
        reason: String,
        after: Option<Duration>,
    },
}

/// The first wait between attempts; it doubles each time up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The longest `Retry-After` waited out: a provider that asks for more is not going to
/// take this notification while it still matters, so it is given up on at once (the
/// worker moves on instead of holding it).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The most of an answer's body read: enough for any provider's error JSON, and a
/// subscription endpoint (given by a browser, so by anyone) cannot make us read more.
pub(crate) const MAX_ANSWER: usize = 16 * 1024;

/// One provider's limits.
pub(crate) struct Gate {
    provider: &'static str,
    in_flight: Semaphore,
    rate: Option<Rate>,
    bucket: Mutex<Bucket>,
    pub(crate) timeout: Duration,
    max_attempts: u32,
}

impl Gate {
    pub(crate) fn new(provider: &'static str, limits: &ProviderLimits) -> Self {
        // A rate that is not a positive number means no rate limit (rather than none ever).
        let rate = (limits.per_sec.is_finite() && limits.per_sec > 0.0).then(|| Rate {
            per_sec: limits.per_sec,
            burst: limits.per_sec.max(1.0),
        });
        let full = Rate {
            per_sec: 1.0,
            burst: 1.0,
        };
        Self {
            provider,
            in_flight: Semaphore::new(limits.concurrency.clamp(1, Semaphore::MAX_PERMITS)),
            bucket: Mutex::new(Bucket::full(rate.unwrap_or(full), Instant::now())),
            rate,
            timeout: Duration::from_millis(limits.timeout_ms.max(1)),
            max_attempts: limits.max_attempts.max(1),
        }
    }

    /// Waits for a token of the rate limit (the caller is a background worker: waiting is
    /// how it is slowed down).
    async fn pace(&self) {
        let Some(rate) = self.rate else {
            return;
        };
        loop {
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(rate, Instant::now());
            match taken {
                Ok(()) => return,
                Err(wait) => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Tries `attempt` until it ends (sent, invalid, refused) or the attempts are spent,
    /// waiting between tries as the provider asked or backing off. Each try holds a place
    /// among the requests in flight and a token of the rate, but not while waiting.
    pub(crate) async fn run<F, Fut>(&self, mut attempt: F) -> Step
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Step>,
    {
        let provider = self.provider;
        let mut tries = 0;
        loop {
            tries += 1;
            let step = {
                // Never closed; without a permit the request still goes (bounded anyway).
                let _permit = self.in_flight.acquire().await.ok();
                self.pace().await;
                let started = Instant::now();
                let step = attempt().await;
                metrics::histogram!("xinge_notify_latency_seconds", "provider" => provider)
                    .record(started.elapsed().as_secs_f64());
                step
            };
            let Step::Again { reason, after } = step else {
                return step;
            };
            if tries >= self.max_attempts {
                return Step::Failed(
                    "given_up",
                    format!("given up after {tries} attempts: {reason}"),
                );
            }
            let wait = match after {
                Some(after) if after > MAX_RETRY_AFTER => {
                    return Step::Failed(
                        "given_up",
                        format!("{reason}: asked to retry after {}s", after.as_secs()),
                    );
                }
                Some(after) => after,
                None => backoff(tries),
            };
            metrics::counter!("xinge_notify_retries_total", "provider" => provider).increment(1);
            tracing::debug!(provider, %reason, attempt = tries, wait_ms = wait.as_millis() as u64, "retrying a notification");
            tokio::time::sleep(wait).await;
        }
    }
}

/// The wait after attempt `attempt` failed: [`BACKOFF_BASE`] · 2^(attempt-1), at most
/// [`BACKOFF_MAX`], less a random part of up to half (so that many workers' retries do
/// not come back at once).
pub(crate) fn backoff(attempt: u32) -> Duration {
    let full = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(BACKOFF_MAX);
    let full_ms = full.as_millis() as u64;
    let jitter = rand::random::<u64>() % (full_ms / 2 + 1);
    Duration::from_millis(full_ms - jitter)
}

/// `Retry-After` in seconds (the HTTP-date form is not used by these providers; it is
/// ignored, and the back-off applies).
pub(crate) fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A request that got no answer: a timeout, a refused or dropped connection, a GOAWAY
/// before the answer — tried again; a request that could not even be made is not.
pub(crate) fn transport(e: &reqwest::Error) -> Step {
    if e.is_builder() {
        return Step::Failed("error", format!("the request could not be made: {e}"));
    }
    Step::Again {
        reason: format!("no answer: {}", chain(e)),
        after: None,
    }
}

/// An error with its causes, which reqwest keeps apart (the useful part is often inside).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// At most [`MAX_ANSWER`] bytes of an answer's body (the rest is not read).
/// A provider's answer as every client reads it: its status, its `Retry-After`, and (at
/// most [`MAX_ANSWER`] of) its body; a request that got no answer as the step it makes.
pub(crate) async fn answer(
    sent: reqwest::Result<reqwest::Response>,
) -> Result<(u16, Option<Duration>, Vec<u8>), Step> {
    let resp = sent.map_err(|e| transport(&e))?;
    let status = resp.status().as_u16();
    let after = retry_after(&resp);
    Ok((status, after, body(resp).await))
}

pub(crate) async fn body(mut resp: reqwest::Response) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = MAX_ANSWER - out.len();
        out.extend_from_slice(chunk.get(..room.min(chunk.len())).unwrap_or(&[]));
        if out.len() >= MAX_ANSWER {
            break;
        }
    }
    out
}

/// A client for one provider: public roots (a provider's certificate is a public one),
/// plus the extra root `ca_file` names (a local stand-in in tests). No redirects: a
/// provider does not redirect a push, and an endpoint that does could point us anywhere.
/// `h2` for a provider that speaks only HTTP/2 (APNs): ALPN offers `h2` alone.
pub(crate) fn client(limits: &ProviderLimits, h2: bool) -> Result<reqwest::Client, String> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_millis(limits.timeout_ms.max(1)))
        .pool_max_idle_per_host(limits.concurrency.max(1));
    if let Some(path) = &limits.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("ca_file {}: no CERTIFICATE block", path.display()));
        }
        for cert in certs {
            b = b.add_root_certificate(cert);
        }
    }
    if h2 {
        // One long-lived connection, as Apple asks; pings find a dead one before a
        // notification does.
        b = b
            .http2_prior_knowledge()
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true);
    }
    b.build().map_err(|e| format!("the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn the_back_off_doubles_up_to_its_ceiling_with_jitter_below() {
        for attempt in 1..=40u32 {
            let full = (250u64 << (attempt - 1).min(20)).min(30_000);
            for _ in 0..20 {
                let w = backoff(attempt).as_millis() as u64;
                assert!(w <= full && w >= full - full / 2, "attempt {attempt}: {w}");
            }
        }
    }

    fn limits(max_attempts: u32) -> ProviderLimits {
        ProviderLimits {
            max_attempts,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn retries_end_when_the_attempts_are_spent() {
        let gate = Gate::new("test", &limits(3));
        let tries = AtomicU32::new(0);
        let step = gate
            .run(|| async {
                tries.fetch_add(1, Ordering::Relaxed);
                Step::Again {
                    reason: "503".into(),
                    after: Some(Duration::ZERO),
                }
            })
            .await;
        assert_eq!(tries.load(Ordering::Relaxed), 3);
        assert!(
            matches!(step, Step::Failed("given_up", ref r) if r.contains("503")),
            "{step:?}"
        );
    }

    #[tokio::test]
    async fn a_retry_after_too_long_gives_up_at_once() {
        let gate = Gate::new("test", &limits(5));
        let tries = AtomicU32::new(0);
        let step = gate
            .run(|| async {
                tries.fetch_add(1, Ordering::Relaxed);
                Step::Again {
                    reason: "429".into(),
                    after: Some(Duration::from_secs(3600)),
                }
            })
            .await;
        assert_eq!(tries.load(Ordering::Relaxed), 1);
        assert!(matches!(step, Step::Failed("given_up", _)), "{step:?}");
    }

    #[tokio::test]
    async fn the_rate_limit_spaces_requests_out() {
        let gate = Gate::new(
            "test",
            &ProviderLimits {
                per_sec: 20.0,
                ..Default::default()
            },
        );
        let started = Instant::now();
        for _ in 0..30 {
            assert_eq!(gate.run(|| async { Step::Sent }).await, Step::Sent);
        }
        // A burst of 20, then 10 more at 20 a second.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
}
