//! Offline push: real clients of the providers that reach a device while it is not
//! connected — Apple (APNs, token-based, HTTP/2), Firebase (FCM HTTP v1), Web Push
//! (RFC 8030 with VAPID and encrypted payloads) and the app's own push service (a signed
//! webhook).
//!
//! ```text
//! lib.rs      Notification, Outcome, Providers::send: the one entry point, its metrics
//! gate.rs     per provider: concurrency, rate, timeout, retries with back-off, the client
//! jwt.rs      ES256 and RS256 JSON Web Tokens with ring, keys from PEM
//! apns.rs     Apple: provider token, headers, payload, answers
//! fcm.rs      Firebase: OAuth2 access token from the service account, message, answers
//! webpush.rs  Web Push: VAPID, the request, answers
//! ece.rs      RFC 8291 / RFC 8188 aes128gcm payload encryption
//! webhook.rs  the app's own push service, signed as the other webhooks
//! ```
//!
//! Every send ends in an [`Outcome`]: sent, the registration is no longer valid (the
//! caller deletes it), or given up. Nothing here panics or blocks forever: each request has
//! a timeout and each notification a bounded number of attempts.

mod apns;
mod ece;
mod fcm;
mod gate;
mod jwt;
mod webhook;
mod webpush;

use gate::Step;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use xinge_core::config::NotifyConfig;
use xinge_proto::api::PushRegistration;

/// One notification to one device, as the providers are told it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notification {
    /// Unique and stable per (notification, device): a redelivered notification has the
    /// same id (APNs `apns-id` as a UUID derived from it by hashing, FCM/webhook pass it
    /// on).
    pub id: String,
    /// The same for every notification of one conversation: `apns-collapse-id`, FCM
    /// `android.collapse_key` and `android.notification.tag`, Web Push `Topic` header
    /// (base64url-safe, ≤32 chars: hashed if longer).
    pub collapse_id: String,
    pub title: Option<String>,
    pub body: String,
    /// The app icon badge (APNs `aps.badge`, FCM
    /// `android.notification.notification_count`), if known.
    pub badge: Option<u32>,
    /// How many events this one notification stands for (a collapsed burst).
    pub count: u32,
    /// Small app data passed to the app (conversation id, seq…): string → string.
    pub data: BTreeMap<String, String>,
}

/// How a send ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Sent,
    /// The token/subscription is no longer valid: the caller deletes the registration.
    Invalid(String),
    /// Given up (attempts spent, 4xx other than invalid, misconfiguration).
    Failed(String),
}

/// The configured providers, each with its own client, limits and credentials.
pub struct Providers {
    apns: Option<apns::Apns>,
    fcm: Option<fcm::Fcm>,
    webpush: Option<webpush::WebPush>,
    webhook: Option<webhook::Webhook>,
}

impl std::fmt::Debug for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Providers")
            .field("apns", &self.apns.is_some())
            .field("fcm", &self.fcm.is_some())
            .field("webpush", &self.webpush.is_some())
            .field("webhook", &self.webhook.is_some())
            .finish()
    }
}

impl Providers {
    /// Reads the key files; `Err` with a clear message if a configured provider's key is
    /// unreadable or invalid (said at start, not at the first notification).
    /// `webhook_secrets` sign the notification webhook as they sign the other webhooks.
    pub fn new(cfg: &NotifyConfig, webhook_secrets: &[String]) -> Result<Self, String> {
        Ok(Self {
            apns: cfg
                .apns
                .as_ref()
                .map(apns::Apns::new)
                .transpose()
                .map_err(|e| format!("notify.apns: {e}"))?,
            fcm: cfg
                .fcm
                .as_ref()
                .map(fcm::Fcm::new)
                .transpose()
                .map_err(|e| format!("notify.fcm: {e}"))?,
            webpush: cfg
                .webpush
                .as_ref()
                .map(webpush::WebPush::new)
                .transpose()
                .map_err(|e| format!("notify.webpush: {e}"))?,
            webhook: cfg
                .webhook
                .as_ref()
                .map(|c| webhook::Webhook::new(c, webhook_secrets))
                .transpose()
                .map_err(|e| format!("notify.webhook: {e}"))?,
        })
    }

    /// The providers configured, by the name a registration gives (`apns`, `fcm`,
    /// `webpush`, `webhook`).
    pub fn names(&self) -> Vec<&'static str> {
        [
            ("apns", self.apns.is_some()),
            ("fcm", self.fcm.is_some()),
            ("webpush", self.webpush.is_some()),
            ("webhook", self.webhook.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, on)| on.then_some(name))
        .collect()
    }

    /// The VAPID public key (base64url of the uncompressed P-256 point), which a browser
    /// needs to subscribe (`applicationServerKey`), if Web Push is configured.
    pub fn vapid_public_key(&self) -> Option<&str> {
        self.webpush.as_ref().map(|w| w.public_key())
    }

    /// Whether a registration of this provider can be served (its provider configured).
    pub fn serves(&self, r: &PushRegistration) -> bool {
        match r {
            PushRegistration::Apns { .. } => self.apns.is_some(),
            PushRegistration::Fcm { .. } => self.fcm.is_some(),
            PushRegistration::Webpush { .. } => self.webpush.is_some(),
            PushRegistration::Webhook { .. } => self.webhook.is_some(),
        }
    }

    /// Sends one notification to one device, with retries on 429, 5xx and transport
    /// failures (bounded by the provider's `max_attempts`); never panics.
    pub async fn send(
        &self,
        user: u64,
        device: &str,
        r: &PushRegistration,
        n: &Notification,
    ) -> Outcome {
        let (provider, step) = match r {
            PushRegistration::Apns {
                token,
                topic,
                sandbox,
            } => (
                "apns",
                match &self.apns {
                    Some(p) => p.send(token, topic, *sandbox, n).await,
                    None => unserved(),
                },
            ),
            PushRegistration::Fcm { token } => (
                "fcm",
                match &self.fcm {
                    Some(p) => p.send(token, n).await,
                    None => unserved(),
                },
            ),
            PushRegistration::Webpush {
                endpoint,
                p256dh,
                auth,
            } => (
                "webpush",
                match &self.webpush {
                    Some(p) => p.send(endpoint, p256dh, auth, n).await,
                    None => unserved(),
                },
            ),
            PushRegistration::Webhook { token } => (
                "webhook",
                match &self.webhook {
                    Some(p) => p.send(user, device, token.as_deref(), n).await,
                    None => unserved(),
                },
            ),
        };
        finish(provider, user, device, step)
    }
}

fn unserved() -> Step {
    Step::Failed("unserved", "its provider is not configured".into())
}

/// The outcome of a finished send, counted and logged.
fn finish(provider: &'static str, user: u64, device: &str, step: Step) -> Outcome {
    match step {
        Step::Sent => {
            metrics::counter!("xinge_notify_sent_total", "provider" => provider).increment(1);
            Outcome::Sent
        }
        Step::Invalid(reason) => {
            metrics::counter!("xinge_notify_invalid_total", "provider" => provider).increment(1);
            metrics::counter!("xinge_notify_failed_total", "provider" => provider, "reason" => "invalid")
                .increment(1);
            tracing::info!(provider, user, device, %reason, "push registration no longer valid");
            Outcome::Invalid(reason)
        }
        Step::Failed(why, reason) => {
            metrics::counter!("xinge_notify_failed_total", "provider" => provider, "reason" => why)
                .increment(1);
            tracing::warn!(provider, user, device, why, %reason, "notification not sent");
            Outcome::Failed(reason)
        }
        // The retry loop never ends on `Again`; counted as given up if it ever did.
        Step::Again { reason, .. } => {
            metrics::counter!("xinge_notify_failed_total", "provider" => provider, "reason" => "given_up")
                .increment(1);
            Outcome::Failed(reason)
        }
    }
}

/// `v1=<hex>` for each secret, comma-separated: HMAC-SHA256 over `"<timestamp>.<body>"`.
pub fn sign(secrets: &[Vec<u8>], timestamp: u64, body: &[u8]) -> String {
    secrets
        .iter()
        .filter_map(|secret| {
            let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
            mac.update(timestamp.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Some(format!("v1={hex}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// What a cut text ends with, so that the reader sees it was cut.
const ELLIPSIS: &str = "…";

/// `make(body)` for the longest start of `body` whose result is at most `max` bytes: the
/// whole body if it fits, else cut at a character boundary with an ellipsis. `Err` if even
/// an empty body does not fit (the rest of the payload is too large).
pub(crate) fn fit(
    body: &str,
    max: usize,
    make: impl Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<Vec<u8>, String> {
    let full = make(body)?;
    if full.len() <= max {
        return Ok(full);
    }
    let cut = |keep: usize| -> Result<Vec<u8>, String> {
        make(&format!("{}{ELLIPSIS}", body.get(..keep).unwrap_or("")))
    };
    let mut best = cut(0)?;
    if best.len() > max {
        return Err(format!(
            "the payload is {} bytes even without its text (at most {max})",
            best.len()
        ));
    }
    // A binary search over the character boundaries: escaping makes a byte of text cost
    // one to six bytes of payload, so no single estimate is right. The text never gets
    // shorter in the payload, so a start longer than `max` cannot fit.
    let ends: Vec<usize> = body
        .get(..char_floor(body, max))
        .unwrap_or("")
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .collect();
    let (mut lo, mut hi) = (0, ends.len());
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        let out = cut(ends.get(mid - 1).copied().unwrap_or(0))?;
        if out.len() <= max {
            lo = mid;
            best = out;
        } else {
            hi = mid - 1;
        }
    }
    Ok(best)
}

/// The largest character boundary of `s` at or below `i`.
pub(crate) fn char_floor(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The lowercase hex of SHA-256 of `s`: what a too-long id is replaced by.
pub(crate) fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A collapse id of at most `max` bytes: the id itself if short enough, else a hash of it
/// (the same conversation always gets the same one).
pub(crate) fn short_id(id: &str, max: usize) -> String {
    if id.len() <= max {
        id.to_owned()
    } else {
        let hex = sha256_hex(id);
        hex.get(..max.min(hex.len())).unwrap_or(&hex).to_owned()
    }
}

/// Unix seconds now.
pub(crate) fn now_secs() -> u64 {
    xinge_core::now_ms() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_the_timestamp_and_the_exact_body_once_per_secret() {
        let secrets = vec![
            b"first secret, long".to_vec(),
            b"second secret, long".to_vec(),
        ];
        let sig = sign(&secrets, 1_700_000_000, b"{\"a\":1}");
        let parts: Vec<_> = sig.split(',').collect();
        assert_eq!(parts.len(), 2);
        assert!(
            parts
                .iter()
                .all(|p| p.starts_with("v1=") && p.len() == 3 + 64)
        );
        assert_ne!(parts[0], parts[1]);
        assert_eq!(sig, sign(&secrets, 1_700_000_000, b"{\"a\":1}"));
        assert_ne!(sig, sign(&secrets, 1_700_000_001, b"{\"a\":1}"));
        assert_ne!(sig, sign(&secrets, 1_700_000_000, b"{\"a\": 1}"));
        assert_eq!(sign(&secrets[1..], 1_700_000_000, b"{\"a\":1}"), parts[1]);
    }

    #[test]
    fn a_long_body_is_cut_at_a_character_boundary_to_fit() {
        let make = |b: &str| {
            serde_json::to_vec(&serde_json::json!({ "body": b })).map_err(|e| e.to_string())
        };
        let short = fit("hello", 100, make).unwrap();
        assert_eq!(short, br#"{"body":"hello"}"#);
        for body in ["é".repeat(500), "\"".repeat(500), "a\u{1}".repeat(300)] {
            let out = fit(&body, 200, make).unwrap();
            assert!(out.len() <= 200 && out.len() > 150, "{}", out.len());
            let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
            let text = v["body"].as_str().unwrap();
            assert!(text.ends_with(ELLIPSIS));
            assert!(body.starts_with(text.trim_end_matches(ELLIPSIS)));
        }
        assert!(fit("x", 5, make).is_err(), "the rest alone is too large");
    }

    #[test]
    fn a_long_id_is_replaced_by_its_hash() {
        assert_eq!(short_id("conv-1", 64), "conv-1");
        let long = "c".repeat(100);
        assert_eq!(short_id(&long, 64).len(), 64);
        assert_eq!(short_id(&long, 64), short_id(&long, 64));
        assert_ne!(short_id(&long, 64), short_id(&"d".repeat(100), 64));
    }
}
