//! Firebase Cloud Messaging, HTTP v1: `POST /v1/projects/<project>/messages:send` with an
//! OAuth2 access token of the service account.
//!
//! The access token comes from the token endpoint for an RS256 assertion signed with the
//! service account's key; it is shared by every request and kept until five minutes before
//! it expires. One fetch at a time: whoever finds it missing fetches it while the others
//! wait for that one (an async lock held across the fetch), so a burst of sends asks once.
//! A 401 means it was revoked or expired early: dropped, fetched again, the send tried once
//! more.

use crate::gate::{self, Gate, Step};
use crate::{Notification, jwt};
use ring::signature::RsaKeyPair;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::time::{Duration, Instant};
use xinge_core::config::FcmConfig;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// The assertion's lifetime (Google takes at most an hour).
const ASSERTION_LIFE: u64 = 3600;
/// An access token is not used in its last five minutes.
const TOKEN_MARGIN: Duration = Duration::from_secs(300);
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);
/// FCM takes at most 4096 bytes of notification and data; the whole body is held to it
/// (a little stricter: the token and the fixed fields count too).
const MAX_MESSAGE: usize = 4096;
/// What `apns-collapse-id` takes (FCM passes it on to Apple).
const MAX_COLLAPSE_ID: usize = 64;

pub(crate) struct Fcm {
    client: reqwest::Client,
    gate: Gate,
    send_url: String,
    token_url: String,
    client_email: String,
    key: RsaKeyPair,
    access: tokio::sync::Mutex<Option<Access>>,
}

/// The cached access token and until when it is used.
struct Access {
    token: String,
    until: Instant,
}

/// The fields of a service account's JSON key that are used.
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    token_uri: Option<String>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: u64,
    #[serde(default)]
    token_type: String,
}

/// Google's error body: `{"error":{"code","message","status","details":[…]}}`.
#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<Detail>,
}

#[derive(Deserialize, Default)]
struct Detail {
    #[serde(rename = "@type", default)]
    kind: String,
    #[serde(rename = "errorCode", default)]
    error_code: String,
}

impl Fcm {
    pub(crate) fn new(cfg: &FcmConfig) -> Result<Self, String> {
        let file = cfg.service_account_file.display();
        let raw = jwt::read(&cfg.service_account_file)?;
        let sa: ServiceAccount = serde_json::from_slice(&raw)
            .map_err(|e| format!("{file}: not a service account key: {e}"))?;
        let key = jwt::rsa_key(sa.private_key.as_bytes())
            .map_err(|e| format!("{file}: private_key: {e}"))?;
        let token_url = cfg
            .token_url
            .clone()
            .or(sa.token_uri)
            .ok_or_else(|| format!("{file}: no token_uri (and no token_url configured)"))?;
        if sa.project_id.is_empty() || sa.client_email.is_empty() {
            return Err(format!("{file}: project_id and client_email are required"));
        }
        Ok(Self {
            client: gate::client(&cfg.limits, false)?,
            gate: Gate::new("fcm", &cfg.limits),
            send_url: format!(
                "{}/v1/projects/{}/messages:send",
                cfg.url.trim_end_matches('/'),
                sa.project_id
            ),
            token_url,
            client_email: sa.client_email,
            key,
            access: tokio::sync::Mutex::new(None),
        })
    }

    pub(crate) async fn send(&self, token: &str, n: &Notification) -> Step {
        if token.is_empty() {
            return Step::Invalid("an empty registration token".into());
        }
        let body = match message(token, n) {
            Ok(b) => b,
            Err(e) => return Step::Failed("error", e),
        };
        self.gate.run(|| self.attempt(&body)).await
    }

    /// One try; a 401 drops the access token, fetches another and tries once more.
    async fn attempt(&self, body: &[u8]) -> Step {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(step) => return step,
        };
        match self.post(body, &token).await {
            Answer::Unauthorized => {
                self.drop_token(&token).await;
                let fresh = match self.access_token().await {
                    Ok(t) => t,
                    Err(step) => return step,
                };
                match self.post(body, &fresh).await {
                    Answer::Unauthorized => {
                        Step::Failed("auth", "401: FCM refused a fresh access token".into())
                    }
                    Answer::Step(step) => step,
                }
            }
            Answer::Step(step) => step,
        }
    }

    async fn post(&self, body: &[u8], token: &str) -> Answer {
        let sent = self
            .client
            .post(&self.send_url)
            .timeout(self.gate.timeout)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await;
        let (status, after, body) = match gate::answer(sent).await {
            Ok(a) => a,
            Err(step) => return Answer::Step(step),
        };
        if status == 401 {
            return Answer::Unauthorized;
        }
        let err = serde_json::from_slice::<GoogleError>(&body)
            .unwrap_or_default()
            .error;
        Answer::Step(judge(status, &err, after))
    }

    /// The shared access token, fetched if missing or about to expire.
    async fn access_token(&self) -> Result<String, Step> {
        let mut slot = self.access.lock().await;
        if let Some(a) = slot.as_ref().filter(|a| Instant::now() < a.until) {
            return Ok(a.token.clone());
        }
        let (token, life) = self.fetch_token().await?;
        metrics::counter!("xinge_notify_token_fetches_total", "provider" => "fcm").increment(1);
        // Google's tokens live an hour; whatever the endpoint says, a day at most.
        let life = life.min(MAX_TOKEN_LIFE).saturating_sub(TOKEN_MARGIN);
        let now = Instant::now();
        *slot = Some(Access {
            token: token.clone(),
            until: now.checked_add(life).unwrap_or(now),
        });
        Ok(token)
    }

    /// FCM refused `used`: the next send fetches another (unless one already did).
    async fn drop_token(&self, used: &str) {
        let mut slot = self.access.lock().await;
        if slot.as_ref().is_some_and(|a| a.token == used) {
            *slot = None;
        }
    }

    /// An access token for a signed assertion (RFC 7523), and how long it lives.
    async fn fetch_token(&self) -> Result<(String, Duration), Step> {
        let iat = crate::now_secs();
        let assertion = jwt::rs256(
            &self.key,
            &json!({"alg": "RS256", "typ": "JWT"}),
            &json!({
                "iss": self.client_email,
                "scope": SCOPE,
                "aud": self.token_url,
                "iat": iat,
                "exp": iat + ASSERTION_LIFE,
            }),
        )
        .map_err(|e| Step::Failed("error", e))?;
        // The assertion is base64url and dots: nothing in it needs escaping.
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        let resp = self
            .client
            .post(&self.token_url)
            .timeout(self.gate.timeout)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(|e| gate::transport(&e))?;
        let status = resp.status().as_u16();
        let after = gate::retry_after(&resp);
        let body = gate::body(resp).await;
        match status {
            200 => {}
            429 | 500..=599 => {
                return Err(Step::Again {
                    reason: format!("the token endpoint answered {status}"),
                    after,
                });
            }
            _ => {
                return Err(Step::Failed(
                    "auth",
                    format!(
                        "the token endpoint answered {status}: {}",
                        String::from_utf8_lossy(body.get(..200).unwrap_or(&body))
                    ),
                ));
            }
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| Step::Failed("auth", format!("the token endpoint's answer: {e}")))?;
        if answer.access_token.is_empty() || !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(Step::Failed(
                "auth",
                format!(
                    "the token endpoint gave no bearer token ({:?})",
                    answer.token_type
                ),
            ));
        }
        Ok((answer.access_token, Duration::from_secs(answer.expires_in)))
    }
}

enum Answer {
    Unauthorized,
    Step(Step),
}

/// What FCM's answer means: the FCM error code in the details says whether the token is
/// the problem.
fn judge(status: u16, err: &ErrorBody, after: Option<Duration>) -> Step {
    let code = err
        .details
        .iter()
        .find(|d| d.kind.ends_with("google.firebase.fcm.v1.FcmError") && !d.error_code.is_empty())
        .map_or(err.status.as_str(), |d| d.error_code.as_str());
    let described = format!("{code} (status {status}): {}", err.message);
    if (200..300).contains(&status) {
        return Step::Sent;
    }
    match code {
        // The app was uninstalled or the token expired.
        "UNREGISTERED" => return Step::Invalid(described),
        // The token belongs to another Firebase project: it will never work for ours.
        "SENDER_ID_MISMATCH" => return Step::Invalid(described),
        "INVALID_ARGUMENT"
            if err
                .message
                .to_ascii_lowercase()
                .contains("registration token") =>
        {
            return Step::Invalid(described);
        }
        _ => {}
    }
    match status {
        429 | 500..=599 => Step::Again {
            reason: described,
            after,
        },
        403 => Step::Failed("auth", described),
        _ => Step::Failed("rejected", described),
    }
}

/// The `messages:send` body, at most [`MAX_MESSAGE`] bytes (the body text cut to fit).
fn message(token: &str, n: &Notification) -> Result<Vec<u8>, String> {
    let collapse = crate::short_id(&n.collapse_id, MAX_COLLAPSE_ID);
    crate::fit(&n.body, MAX_MESSAGE, |body| {
        let mut notification = Map::new();
        if let Some(title) = &n.title {
            notification.insert("title".into(), title.as_str().into());
        }
        notification.insert("body".into(), body.into());
        let mut android_notification = Map::new();
        android_notification.insert("tag".into(), n.collapse_id.as_str().into());
        if let Some(badge) = n.badge {
            android_notification.insert("notification_count".into(), badge.into());
        }
        let v = json!({"message": {
            "token": token,
            "notification": Value::Object(notification),
            "android": {
                "collapse_key": n.collapse_id,
                "priority": "high",
                "notification": Value::Object(android_notification),
            },
            "apns": {"headers": {"apns-collapse-id": collapse}},
            "data": n.data,
        }});
        serde_json::to_vec(&v).map_err(|e| e.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: &str, message: &str, code: &str) -> ErrorBody {
        serde_json::from_value::<GoogleError>(json!({"error": {
            "code": 400, "message": message, "status": status,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
        }}))
        .unwrap()
        .error
    }

    #[test]
    fn fcm_answers_are_judged_by_their_error_code() {
        assert_eq!(judge(200, &ErrorBody::default(), None), Step::Sent);
        assert!(matches!(
            judge(
                404,
                &err(
                    "NOT_FOUND",
                    "Requested entity was not found.",
                    "UNREGISTERED"
                ),
                None
            ),
            Step::Invalid(_)
        ));
        assert!(matches!(
            judge(
                400,
                &err(
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                    "INVALID_ARGUMENT"
                ),
                None
            ),
            Step::Invalid(_)
        ));
        assert!(matches!(
            judge(
                400,
                &err(
                    "INVALID_ARGUMENT",
                    "Invalid value at 'message.data[0].value'",
                    "INVALID_ARGUMENT"
                ),
                None
            ),
            Step::Failed("rejected", _)
        ));
        assert!(matches!(
            judge(
                429,
                &err("RESOURCE_EXHAUSTED", "quota", "QUOTA_EXCEEDED"),
                Some(Duration::from_secs(2))
            ),
            Step::Again { after: Some(_), .. }
        ));
        assert!(matches!(
            judge(503, &ErrorBody::default(), None),
            Step::Again { .. }
        ));
        assert!(matches!(
            judge(
                403,
                &err("PERMISSION_DENIED", "denied", "THIRD_PARTY_AUTH_ERROR"),
                None
            ),
            Step::Failed("auth", _)
        ));
    }
}
