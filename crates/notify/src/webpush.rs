//! Web Push (RFC 8030): the notification, encrypted for the browser (RFC 8291, see
//! `ece.rs`), POSTed to the subscription's endpoint with a VAPID token (RFC 8292) that
//! tells the push service who we are.
//!
//! A VAPID token names its audience (the endpoint's origin) and lives 12 hours; one per
//! push service is kept and used until an hour before it expires, so a send signs nothing
//! but its payload's key agreement.

use crate::ece::{self, EceError, Keys};
use crate::gate::{self, Gate, Step};
use crate::{Notification, jwt};
use ring::signature::{EcdsaKeyPair, KeyPair};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xinge_core::config::WebPushConfig;

/// A VAPID token's lifetime (RFC 8292: at most 24 hours) and how long before its end it is
/// replaced.
const VAPID_LIFE: Duration = Duration::from_secs(12 * 3600);
const VAPID_MARGIN: Duration = Duration::from_secs(3600);
/// VAPID tokens kept at most: one per push service in practice, but endpoints are given by
/// browsers, so by anyone.
const MAX_AUDIENCES: usize = 1024;
/// Push services take bodies of at most 4096 bytes.
const MAX_BODY: usize = 4096;
/// `Topic` is at most 32 characters of the base64url alphabet.
const MAX_TOPIC: usize = 32;

pub(crate) struct WebPush {
    client: reqwest::Client,
    gate: Gate,
    key: EcdsaKeyPair,
    /// The public key as the `k=` parameter: base64url of the uncompressed point.
    public: String,
    subject: String,
    ttl_secs: u64,
    tokens: Mutex<HashMap<String, Vapid>>,
}

struct Vapid {
    jwt: String,
    until: Instant,
}

/// What the browser's service worker receives.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    title: Option<&'a str>,
    body: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    badge: Option<u32>,
    count: u32,
    data: &'a BTreeMap<String, String>,
}

impl WebPush {
    /// The VAPID public key, base64url (as `applicationServerKey` takes it).
    pub(crate) fn public_key(&self) -> &str {
        &self.public
    }

    pub(crate) fn new(cfg: &WebPushConfig) -> Result<Self, String> {
        let pem = jwt::read(&cfg.vapid_key_file)?;
        let key =
            jwt::p256_key(&pem).map_err(|e| format!("{}: {e}", cfg.vapid_key_file.display()))?;
        if !(cfg.subject.starts_with("mailto:") || cfg.subject.starts_with("https:")) {
            return Err(format!(
                "subject must be a mailto: or https: contact, not {:?}",
                cfg.subject
            ));
        }
        Ok(Self {
            client: gate::client(&cfg.limits, false)?,
            gate: Gate::new("webpush", &cfg.limits),
            public: jwt::b64(key.public_key().as_ref()),
            key,
            subject: cfg.subject.clone(),
            ttl_secs: cfg.ttl_secs,
            tokens: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) async fn send(
        &self,
        endpoint: &str,
        p256dh: &str,
        auth: &str,
        n: &Notification,
    ) -> Step {
        let audience = match audience(endpoint) {
            Ok(a) => a,
            Err(e) => return Step::Invalid(e),
        };
        let keys = match Keys::parse(p256dh, auth) {
            Ok(k) => k,
            Err(e) => return Step::Invalid(e),
        };
        let body = match encrypted(&keys, n) {
            Ok(b) => b,
            Err(step) => return step,
        };
        let topic = topic(&n.collapse_id);
        self.gate
            .run(|| self.attempt(endpoint, &audience, topic.as_deref(), &body))
            .await
    }

    async fn attempt(
        &self,
        endpoint: &str,
        audience: &str,
        topic: Option<&str>,
        body: &[u8],
    ) -> Step {
        let vapid = match self.vapid(audience) {
            Ok(v) => v,
            Err(e) => return Step::Failed("error", e),
        };
        let mut request = self
            .client
            .post(endpoint)
            .timeout(self.gate.timeout)
            .header("ttl", self.ttl_secs.to_string())
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .header("urgency", "high");
        if let Some(topic) = topic {
            request = request.header("topic", topic);
        }
        let sent = request
            .header(
                "authorization",
                format!("vapid t={vapid}, k={}", self.public),
            )
            .body(body.to_vec())
            .send()
            .await;
        let (status, after, text) = match gate::answer(sent).await {
            Ok(a) => a,
            Err(step) => return step,
        };
        judge(status, &String::from_utf8_lossy(&text), after)
    }

    /// The VAPID token for a push service, made if there is none fresh enough.
    fn vapid(&self, audience: &str) -> Result<String, String> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(v) = tokens.get(audience).filter(|v| now < v.until) {
            return Ok(v.jwt.clone());
        }
        if tokens.len() >= MAX_AUDIENCES {
            tokens.retain(|_, v| now < v.until);
            if tokens.len() >= MAX_AUDIENCES {
                tokens.clear();
            }
        }
        let jwt = jwt::es256(
            &self.key,
            &serde_json::json!({"typ": "JWT", "alg": "ES256"}),
            &serde_json::json!({
                "aud": audience,
                "exp": crate::now_secs() + VAPID_LIFE.as_secs(),
                "sub": self.subject,
            }),
        )?;
        tokens.insert(
            audience.to_owned(),
            Vapid {
                jwt: jwt.clone(),
                until: now + VAPID_LIFE.saturating_sub(VAPID_MARGIN),
            },
        );
        Ok(jwt)
    }
}

/// The endpoint's origin, `https://host[:port]`: the VAPID audience. Push services are
/// HTTPS only (RFC 8030), so an endpoint that is not is no subscription.
fn audience(endpoint: &str) -> Result<String, String> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| format!("endpoint is not a URL: {e}"))?;
    if url.scheme() != "https" || url.host_str().is_none() {
        return Err("endpoint is not an https:// URL".into());
    }
    Ok(url.origin().ascii_serialization())
}

/// The `Topic` header: the collapse id if it is base64url-safe and short enough, else a
/// hash of it in that alphabet; none without a collapse id (nothing to replace).
fn topic(collapse_id: &str) -> Option<String> {
    if collapse_id.is_empty() {
        return None;
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if collapse_id.len() <= MAX_TOPIC && collapse_id.chars().all(safe) {
        return Some(collapse_id.to_owned());
    }
    use sha2::Digest;
    let hash = jwt::b64(&sha2::Sha256::digest(collapse_id.as_bytes()));
    Some(hash.get(..MAX_TOPIC).unwrap_or(&hash).to_owned())
}

/// The payload, encrypted, at most [`MAX_BODY`] bytes (the text cut to fit).
fn encrypted(keys: &Keys, n: &Notification) -> Result<Vec<u8>, Step> {
    let plain = crate::fit(&n.body, MAX_BODY - ece::OVERHEAD, |body| {
        serde_json::to_vec(&Payload {
            title: n.title.as_deref(),
            body,
            badge: n.badge,
            count: n.count,
            data: &n.data,
        })
        .map_err(|e| e.to_string())
    })
    .map_err(|e| Step::Failed("error", e))?;
    ece::encrypt(keys, &plain).map_err(|e| match e {
        EceError::BadKey => Step::Invalid("p256dh is not a point of P-256".into()),
        EceError::Crypto => Step::Failed("error", "the payload could not be encrypted".into()),
    })
}

/// What the push service's answer means.
fn judge(status: u16, text: &str, after: Option<Duration>) -> Step {
    let described = || {
        let text = text.trim();
        match text.is_empty() {
            true => format!("status {status}"),
            false => format!(
                "status {status}: {}",
                text.get(..crate::char_floor(text, 200)).unwrap_or("")
            ),
        }
    };
    match status {
        200..=299 => Step::Sent,
        // The subscription expired or was unsubscribed.
        404 | 410 => Step::Invalid(described()),
        429 | 500..=599 => Step::Again {
            reason: described(),
            after,
        },
        _ => Step::Failed("rejected", described()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audience_is_the_endpoints_origin() {
        assert_eq!(
            audience("https://push.example.net/wpush/v2/abc?x=1").unwrap(),
            "https://push.example.net"
        );
        assert_eq!(
            audience("https://127.0.0.1:8443/p/1").unwrap(),
            "https://127.0.0.1:8443"
        );
        assert_eq!(
            audience("https://push.example.net:443/a").unwrap(),
            "https://push.example.net"
        );
        assert!(audience("http://push.example.net/a").is_err());
        assert!(audience("not a url").is_err());
    }

    #[test]
    fn the_topic_is_base64url_safe_and_at_most_32_characters() {
        assert_eq!(topic("conv_12-a").as_deref(), Some("conv_12-a"));
        assert_eq!(topic(""), None);
        for id in ["d:1:2", &"c".repeat(40)] {
            let t = topic(id).unwrap();
            assert_eq!(t.len(), 32, "{id}");
            assert!(
                t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
            assert_eq!(Some(t), topic(id));
        }
    }

    #[test]
    fn push_service_answers_are_judged() {
        assert_eq!(judge(201, "", None), Step::Sent);
        assert!(matches!(judge(410, "gone", None), Step::Invalid(_)));
        assert!(matches!(judge(404, "", None), Step::Invalid(_)));
        assert!(matches!(
            judge(413, "too big", None),
            Step::Failed("rejected", _)
        ));
        assert!(matches!(
            judge(429, "", Some(Duration::from_secs(1))),
            Step::Again { after: Some(_), .. }
        ));
        assert!(matches!(judge(502, "", None), Step::Again { .. }));
    }
}
