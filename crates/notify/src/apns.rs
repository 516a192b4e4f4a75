//! Apple Push Notification service, token-based: `POST /3/device/<token>` over HTTP/2
//! with an ES256 provider token signed by the team's `.p8` key.
//!
//! One provider token is shared by every request and made again after
//! [`TOKEN_LIFE`]: Apple refuses tokens older than an hour, and answers
//! `TooManyProviderTokenUpdates` to a provider that makes them more often than every 20
//! minutes — so never one per request. A 403 `ExpiredProviderToken` replaces it at once
//! and the request is tried again once.

use crate::gate::{self, Gate, Step};
use crate::{Notification, jwt};
use ring::signature::EcdsaKeyPair;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use xinge_core::config::ApnsConfig;

/// How long one provider token is used (Apple: at most an hour, at least 20 minutes).
const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);
/// The largest payload Apple takes for an alert.
const MAX_PAYLOAD: usize = 4096;
/// `apns-collapse-id` is at most 64 bytes.
const MAX_COLLAPSE_ID: usize = 64;
/// How long Apple keeps trying a device that is off (`apns-expiration`): a message
/// notification a day late is still worth showing; later it is noise.
const EXPIRATION: Duration = Duration::from_secs(24 * 3600);

pub(crate) struct Apns {
    client: reqwest::Client,
    gate: Gate,
    key: EcdsaKeyPair,
    key_id: String,
    team_id: String,
    url: String,
    sandbox_url: String,
    token: Mutex<Option<ProviderToken>>,
}

/// The shared provider token and when it was made.
struct ProviderToken {
    jwt: String,
    made: Instant,
}

/// Apple's error body.
#[derive(Deserialize, Default)]
struct Reason {
    #[serde(default)]
    reason: String,
}

impl Apns {
    pub(crate) fn new(cfg: &ApnsConfig) -> Result<Self, String> {
        let pem = jwt::read(&cfg.key_file)?;
        let key = jwt::p256_key(&pem).map_err(|e| format!("{}: {e}", cfg.key_file.display()))?;
        if cfg.key_id.is_empty() || cfg.team_id.is_empty() {
            return Err("key_id and team_id are required".into());
        }
        Ok(Self {
            client: gate::client(&cfg.limits, true)?,
            gate: Gate::new("apns", &cfg.limits),
            key,
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            url: cfg.url.trim_end_matches('/').to_owned(),
            sandbox_url: cfg.sandbox_url.trim_end_matches('/').to_owned(),
            token: Mutex::new(None),
        })
    }

    /// The provider token: the current one, or a new one once it is [`TOKEN_LIFE`] old.
    fn provider_token(&self) -> Result<String, String> {
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = slot.as_ref().filter(|t| t.made.elapsed() < TOKEN_LIFE) {
            return Ok(t.jwt.clone());
        }
        let jwt = jwt::es256(
            &self.key,
            &json!({"alg": "ES256", "kid": self.key_id}),
            &json!({"iss": self.team_id, "iat": crate::now_secs()}),
        )?;
        *slot = Some(ProviderToken {
            jwt: jwt.clone(),
            made: Instant::now(),
        });
        Ok(jwt)
    }

    /// Apple said `used` expired: the next request makes a new one — unless another
    /// request already did (many in flight may hear it for the same token).
    fn expire(&self, used: &str) {
        let mut slot = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|t| t.jwt == used) {
            *slot = None;
        }
    }

    pub(crate) async fn send(
        &self,
        device_token: &str,
        topic: &str,
        sandbox: bool,
        n: &Notification,
    ) -> Step {
        // A device token is hex; anything else would also change the request's path.
        if device_token.is_empty() || !device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Step::Invalid("BadDeviceToken: not a hex device token".into());
        }
        if topic.is_empty() || reqwest::header::HeaderValue::from_str(topic).is_err() {
            return Step::Invalid("BadTopic: not a bundle id".into());
        }
        let payload = match payload(n) {
            Ok(p) => p,
            Err(e) => return Step::Failed("error", e),
        };
        let base = if sandbox {
            &self.sandbox_url
        } else {
            &self.url
        };
        let request = Request {
            url: format!("{base}/3/device/{device_token}"),
            topic,
            collapse_id: crate::short_id(&n.collapse_id, MAX_COLLAPSE_ID),
            apns_id: apns_id(&n.id),
            payload,
        };
        self.gate.run(|| self.attempt(&request)).await
    }

    /// One try; a 403 `ExpiredProviderToken` makes a new token and tries once more.
    async fn attempt(&self, request: &Request<'_>) -> Step {
        let token = match self.provider_token() {
            Ok(t) => t,
            Err(e) => return Step::Failed("error", e),
        };
        match self.post(request, &token).await {
            Answer::Expired => {
                self.expire(&token);
                let fresh = match self.provider_token() {
                    Ok(t) => t,
                    Err(e) => return Step::Failed("error", e),
                };
                match self.post(request, &fresh).await {
                    Answer::Expired => Step::Failed(
                        "auth",
                        "ExpiredProviderToken: refused a fresh provider token (is the clock right?)"
                            .into(),
                    ),
                    Answer::Step(step) => step,
                }
            }
            Answer::Step(step) => step,
        }
    }

    async fn post(&self, r: &Request<'_>, token: &str) -> Answer {
        let expiration = crate::now_secs() + EXPIRATION.as_secs();
        let sent = self
            .client
            .post(&r.url)
            .timeout(self.gate.timeout)
            .header("authorization", format!("bearer {token}"))
            .header("apns-topic", r.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", &r.collapse_id)
            .header("apns-id", &r.apns_id)
            .header("apns-expiration", expiration.to_string())
            .header("content-type", "application/json")
            .body(r.payload.clone())
            .send()
            .await;
        let (status, after, body) = match gate::answer(sent).await {
            Ok(a) => a,
            Err(step) => return Answer::Step(step),
        };
        let reason = serde_json::from_slice::<Reason>(&body)
            .unwrap_or_default()
            .reason;
        if status == 403 && reason == "ExpiredProviderToken" {
            return Answer::Expired;
        }
        Answer::Step(judge(status, reason, after))
    }
}

/// One notification's request, the same for every try.
struct Request<'a> {
    url: String,
    topic: &'a str,
    collapse_id: String,
    apns_id: String,
    payload: Vec<u8>,
}

enum Answer {
    Expired,
    Step(Step),
}

/// What Apple's answer means.
fn judge(status: u16, reason: String, after: Option<Duration>) -> Step {
    let described = |reason: String| match reason.is_empty() {
        true => format!("status {status}"),
        false => format!("{reason} (status {status})"),
    };
    match status {
        200 => Step::Sent,
        410 => Step::Invalid(match reason.is_empty() {
            true => "Unregistered".into(),
            false => reason,
        }),
        400 if matches!(
            reason.as_str(),
            "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic"
        ) =>
        {
            Step::Invalid(reason)
        }
        429 | 500..=599 => Step::Again {
            reason: described(reason),
            after,
        },
        403 => Step::Failed("auth", described(reason)),
        _ => Step::Failed("rejected", described(reason)),
    }
}

/// The alert payload, at most [`MAX_PAYLOAD`] bytes (the body text is cut to fit).
fn payload(n: &Notification) -> Result<Vec<u8>, String> {
    crate::fit(&n.body, MAX_PAYLOAD, |body| {
        let mut alert = Map::new();
        if let Some(title) = &n.title {
            alert.insert("title".into(), title.as_str().into());
        }
        alert.insert("body".into(), body.into());
        let mut aps = Map::new();
        aps.insert("alert".into(), alert.into());
        if let Some(badge) = n.badge {
            aps.insert("badge".into(), badge.into());
        }
        aps.insert("sound".into(), "default".into());
        aps.insert("thread-id".into(), n.collapse_id.as_str().into());
        let v = json!({ "aps": Value::Object(aps), "xinge": n.data });
        serde_json::to_vec(&v).map_err(|e| e.to_string())
    })
}

/// `apns-id`: a UUID made from a hash of the notification's id, so a notification sent
/// again has the same one. Version 8 (RFC 9562: a custom, here hash-based, UUID).
fn apns_id(id: &str) -> String {
    let h = Sha256::digest(id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(h.get(..16).unwrap_or(&[0; 16]));
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_apns_id_is_a_uuid_stable_per_notification() {
        let a = apns_id("n-1/phone");
        assert_eq!(a, apns_id("n-1/phone"));
        assert_ne!(a, apns_id("n-2/phone"));
        assert_eq!(a.len(), 36);
        let parts: Vec<_> = a.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "8");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn the_payload_is_an_alert_with_the_app_data_and_fits_4096_bytes() {
        let n = Notification {
            id: "1".into(),
            collapse_id: "conv-9".into(),
            title: Some("Alice".into()),
            body: "hi".into(),
            badge: Some(3),
            count: 1,
            data: BTreeMap::from([("conv".into(), "9".into())]),
        };
        let v: Value = serde_json::from_slice(&payload(&n).unwrap()).unwrap();
        assert_eq!(
            v,
            json!({"aps": {"alert": {"title": "Alice", "body": "hi"}, "badge": 3, "sound": "default", "thread-id": "conv-9"}, "xinge": {"conv": "9"}})
        );
        let long = Notification {
            body: "长".repeat(3000),
            title: None,
            badge: None,
            ..n
        };
        let p = payload(&long).unwrap();
        assert!(
            p.len() <= MAX_PAYLOAD && p.len() > MAX_PAYLOAD - 8,
            "{}",
            p.len()
        );
        let v: Value = serde_json::from_slice(&p).unwrap();
        assert!(v["aps"].get("badge").is_none() && v["aps"]["alert"].get("title").is_none());
    }

    #[test]
    fn apple_answers_are_judged() {
        assert_eq!(judge(200, String::new(), None), Step::Sent);
        assert_eq!(
            judge(410, "Unregistered".into(), None),
            Step::Invalid("Unregistered".into())
        );
        assert_eq!(
            judge(400, "DeviceTokenNotForTopic".into(), None),
            Step::Invalid("DeviceTokenNotForTopic".into())
        );
        assert!(matches!(
            judge(400, "BadCollapseId".into(), None),
            Step::Failed("rejected", _)
        ));
        assert!(matches!(
            judge(403, "InvalidProviderToken".into(), None),
            Step::Failed("auth", _)
        ));
        let after = Some(Duration::from_secs(1));
        assert!(
            matches!(judge(429, "TooManyRequests".into(), after), Step::Again { after: a, .. } if a == after)
        );
        assert!(matches!(
            judge(503, String::new(), None),
            Step::Again { .. }
        ));
    }

    #[test]
    fn one_provider_token_is_shared_until_it_is_old_or_expired() {
        let doc = EcdsaKeyPair::generate_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &ring::rand::SystemRandom::new(),
        )
        .unwrap();
        let apns = Apns {
            client: reqwest::Client::new(),
            gate: Gate::new("apns", &Default::default()),
            key: EcdsaKeyPair::from_pkcs8(
                &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                doc.as_ref(),
                &ring::rand::SystemRandom::new(),
            )
            .unwrap(),
            key_id: "KEY".into(),
            team_id: "TEAM".into(),
            url: String::new(),
            sandbox_url: String::new(),
            token: Mutex::new(None),
        };
        let first = apns.provider_token().unwrap();
        assert_eq!(apns.provider_token().unwrap(), first);
        // 51 minutes later: a new one.
        if let Some(t) = apns.token.lock().unwrap().as_mut() {
            t.made = Instant::now()
                .checked_sub(Duration::from_secs(51 * 60))
                .unwrap_or(t.made);
        }
        let second = apns.provider_token().unwrap();
        assert_ne!(second, first);
        apns.expire(&first);
        assert_eq!(
            apns.provider_token().unwrap(),
            second,
            "a stale expiry is ignored"
        );
        apns.expire(&second);
        assert_ne!(apns.provider_token().unwrap(), second);
    }
}
