//! Webhooks to the app's own server. The before-send hook: before a message is stored,
//! xinge POSTs it to the app and waits for `allow`, `reject` (with a reason the sender is
//! told) or `replace` (with the content to store and deliver instead).
//!
//! Every request is signed: `x-xinge-timestamp` (Unix seconds) and `x-xinge-signature`,
//! `v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` once per configured secret, comma-
//! separated — a receiver recomputes it over the exact bytes it received, accepts if any
//! matches one of its secrets, and refuses a timestamp outside its replay window.

use crate::Logic;
use crate::access::Access;
use crate::error::bad;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};
use xinge_core::config::{BeforeSendConfig, HookFailure, WebhooksConfig};
use xinge_core::{ConvId, DeviceId, ErrorCode, UserId};

/// The hooks configured, with their HTTP client (one pool for all).
pub(crate) struct Hooks {
    client: reqwest::Client,
    secrets: Vec<Vec<u8>>,
    before_send: Option<(String, BeforeSendConfig)>,
}

/// What the app answered before a send.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    Allow,
    Reject(String),
    Replace(Value),
}

/// The before-send request's body.
#[derive(Serialize)]
struct BeforeSend<'a> {
    /// Unique per request.
    event_id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    at_ms: u64,
    sender: UserId,
    sender_device: &'a DeviceId,
    conv: ConvId,
    client_msg_id: &'a str,
    content: &'a Value,
    mentions: &'a [UserId],
    mention_all: bool,
}

/// The app's answer.
#[derive(Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
enum Answer {
    Allow,
    Reject {
        #[serde(default)]
        reason: String,
    },
    Replace {
        content: Value,
    },
}

/// The longest reason of the app's passed on to a sender.
const MAX_REASON: usize = 200;

impl Hooks {
    /// The hooks `cfg` sets, if any.
    pub(crate) fn new(cfg: &WebhooksConfig) -> Option<Self> {
        let url = cfg.before_send.url.clone()?;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .ok()?;
        Some(Self {
            client,
            secrets: cfg.secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            before_send: Some((url, cfg.before_send.clone())),
        })
    }

    /// Whether a send in a conversation reached this way asks the before-send hook.
    pub(crate) fn asks_before(&self, access: &Access) -> bool {
        match (&self.before_send, access) {
            (Some((_, c)), Access::Direct(_)) => c.direct,
            (Some((_, c)), Access::Group(..)) => c.group,
            (None, _) => false,
        }
    }

    /// Asks the before-send hook; `Err` only for a failure (timeout, transport, status,
    /// an answer that does not parse), which the caller judges by the configured policy.
    async fn ask(&self, body: Vec<u8>) -> Result<Verdict, String> {
        let Some((url, cfg)) = &self.before_send else {
            return Ok(Verdict::Allow);
        };
        let timestamp = xinge_core::now_ms() / 1000;
        let resp = self
            .client
            .post(url)
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .header("content-type", "application/json")
            .header("x-xinge-event", "message.before_send")
            .header("x-xinge-timestamp", timestamp.to_string())
            .header("x-xinge-signature", sign(&self.secrets, timestamp, &body))
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let answer: Answer = resp.json().await.map_err(|e| e.to_string())?;
        Ok(match answer {
            Answer::Allow => Verdict::Allow,
            Answer::Reject { reason } => Verdict::Reject(cut(reason)),
            Answer::Replace { content } => Verdict::Replace(content),
        })
    }
}

pub use xinge_notify::sign;

/// A reason cut to [`MAX_REASON`] bytes, at a character boundary.
fn cut(mut reason: String) -> String {
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

/// A send as the before-send hook sees it.
pub(crate) struct Outgoing<'a> {
    pub sender: UserId,
    pub sender_device: &'a DeviceId,
    pub conv: ConvId,
    pub client_msg_id: &'a str,
    pub content: &'a Value,
    pub mentions: &'a [UserId],
    pub mention_all: bool,
}

impl Logic {
    /// The content to store for `out`, as the before-send hook decides: the same, the
    /// app's replacement, or a refusal (`rejected` with the app's reason; on a failure of
    /// the hook, `unavailable` if so configured). A retry of a send that was stored is not
    /// asked again: its answer is the first one's.
    pub(crate) async fn before_send(&self, out: Outgoing<'_>) -> crate::Result<Option<Value>> {
        let Some(hooks) = &self.hooks else {
            return Ok(None);
        };
        if self
            .store
            .dedup(out.sender, out.client_msg_id)
            .await?
            .is_some()
        {
            return Ok(None);
        }
        let body = serde_json::to_vec(&BeforeSend {
            event_id: format!("{:032x}", rand::random::<u128>()),
            kind: "message.before_send",
            at_ms: self.cfg.clock.now_ms(),
            sender: out.sender,
            sender_device: out.sender_device,
            conv: out.conv,
            client_msg_id: out.client_msg_id,
            content: out.content,
            mentions: out.mentions,
            mention_all: out.mention_all,
        })
        .map_err(|_| bad(ErrorCode::Internal, "internal error"))?;
        let started = Instant::now();
        let verdict = hooks.ask(body).await;
        metrics::histogram!("xinge_hook_seconds", "hook" => "before_send")
            .record(started.elapsed().as_secs_f64());
        let outcome = match &verdict {
            Ok(Verdict::Allow) => "allow",
            Ok(Verdict::Reject(_)) => "reject",
            Ok(Verdict::Replace(_)) => "replace",
            Err(_) => "failed",
        };
        metrics::counter!("xinge_hook_requests_total", "hook" => "before_send", "outcome" => outcome)
            .increment(1);
        match verdict {
            Ok(Verdict::Allow) => Ok(None),
            Ok(Verdict::Reject(reason)) => {
                let reason = if reason.is_empty() {
                    "the app refused this message".to_owned()
                } else {
                    reason
                };
                Err(bad(ErrorCode::Rejected, reason))
            }
            Ok(Verdict::Replace(content)) => Ok(Some(content)),
            Err(cause) => self.before_send_failed(&cause).map(|()| None),
        }
    }

    /// The before-send hook failed (`cause`): `Ok` to send the message as it is, or the
    /// refusal, as configured.
    pub(crate) fn before_send_failed(&self, cause: &str) -> crate::Result<()> {
        tracing::warn!(%cause, "the before-send hook failed");
        let policy = self
            .hooks
            .as_ref()
            .and_then(|h| h.before_send.as_ref())
            .map_or(HookFailure::Allow, |(_, c)| c.on_failure);
        match policy {
            HookFailure::Allow => Ok(()),
            HookFailure::Reject => Err(bad(
                ErrorCode::Unavailable,
                "the app's server did not answer: retry later",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_cut_at_a_character_boundary() {
        assert_eq!(cut("é".repeat(150)).len(), 200);
    }
}
