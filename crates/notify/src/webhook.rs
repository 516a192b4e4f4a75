//! The app's own push service: each notification POSTed to its URL as JSON, signed as the
//! other webhooks are (`x-xinge-timestamp`, `x-xinge-signature`; see [`crate::sign`]), so
//! the app can forward it through whatever it already uses.

use crate::gate::{self, Gate, Step};
use crate::{Notification, sign};
use serde::Serialize;
use std::collections::BTreeMap;
use xinge_core::config::NotifyWebhookConfig;

pub(crate) struct Webhook {
    client: reqwest::Client,
    gate: Gate,
    url: String,
    secrets: Vec<Vec<u8>>,
}

#[derive(Serialize)]
struct Body<'a> {
    id: &'a str,
    /// A string, as every user id the API and the other webhooks give.
    user_id: String,
    device: &'a str,
    /// The registration's token, as the app gave it.
    token: Option<&'a str>,
    notification: Told<'a>,
}

#[derive(Serialize)]
struct Told<'a> {
    title: Option<&'a str>,
    body: &'a str,
    badge: Option<u32>,
    count: u32,
    collapse_id: &'a str,
    data: &'a BTreeMap<String, String>,
}

impl Webhook {
    pub(crate) fn new(cfg: &NotifyWebhookConfig, secrets: &[String]) -> Result<Self, String> {
        reqwest::Url::parse(&cfg.url).map_err(|e| format!("url {:?}: {e}", cfg.url))?;
        Ok(Self {
            client: gate::client(&cfg.limits, false)?,
            gate: Gate::new("webhook", &cfg.limits),
            url: cfg.url.clone(),
            secrets: secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
        })
    }

    pub(crate) async fn send(
        &self,
        user: u64,
        device: &str,
        token: Option<&str>,
        n: &Notification,
    ) -> Step {
        let body = Body {
            id: &n.id,
            user_id: user.to_string(),
            device,
            token,
            notification: Told {
                title: n.title.as_deref(),
                body: &n.body,
                badge: n.badge,
                count: n.count,
                collapse_id: &n.collapse_id,
                data: &n.data,
            },
        };
        let body = match serde_json::to_vec(&body) {
            Ok(b) => b,
            Err(e) => return Step::Failed("error", e.to_string()),
        };
        self.gate.run(|| self.attempt(&body)).await
    }

    /// One try, signed with the time it is sent at (a retry is not a replay to the app's
    /// window).
    async fn attempt(&self, body: &[u8]) -> Step {
        let timestamp = crate::now_secs();
        let sent = self
            .client
            .post(&self.url)
            .timeout(self.gate.timeout)
            .header("content-type", "application/json")
            .header("x-xinge-event", "notification")
            .header("x-xinge-timestamp", timestamp.to_string())
            .header("x-xinge-signature", sign(&self.secrets, timestamp, body))
            .body(body.to_vec())
            .send()
            .await;
        // Read (what little there is) so the connection can be used again.
        let (status, after, _) = match gate::answer(sent).await {
            Ok(a) => a,
            Err(step) => return step,
        };
        match status {
            200..=299 => Step::Sent,
            410 => Step::Invalid("the app's push service answered 410".into()),
            429 | 500..=599 => Step::Again {
                reason: format!("status {status}"),
                after,
            },
            _ => Step::Failed("rejected", format!("status {status}")),
        }
    }
}
