//! Events told to the app's server after they happened (the after-events webhook).
//!
//! Every commit passes [`Logic::with_outbox`] on its way to the store: the events it
//! causes are added to it, so the store writes them in the same atomic write as the
//! change (the outbox). [`Logic::run_webhooks`] reads the outbox oldest first and POSTs
//! batches of events, in the order they were written, to the configured URL; a batch is
//! removed once the app answered 2xx, retried with exponential back-off and jitter until
//! its attempts run out, then moved to the dead letters, which the admin API lists and
//! replays. Delivery is at least once: a crash between the app's answer and the removal
//! sends the batch again, with the same event ids.

use crate::Logic;
use crate::hooks::sign;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use xinge_core::config::AfterConfig;
use xinge_proto::api::{Event, MessageBody};
use xinge_push::PresenceChange;
use xinge_store::{Commit, Op, OutboxEvent, OutboxRecord};

/// The outbox's side of the IM layer: which events are told, and whether there is room.
pub(crate) struct Outbox {
    cfg: AfterConfig,
    url: String,
    client: reqwest::Client,
    secrets: Vec<Vec<u8>>,
    /// Set by the deliverer while the outbox holds `max_outbox` events or more.
    full: AtomicBool,
}

impl Outbox {
    pub(crate) fn new(cfg: &xinge_core::config::WebhooksConfig) -> Option<Self> {
        let url = cfg.after.url.clone()?;
        let client = reqwest::Client::builder().build().ok()?;
        Some(Self {
            cfg: cfg.after.clone(),
            url,
            client,
            secrets: cfg.secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            full: AtomicBool::new(false),
        })
    }

    /// Whether events of `kind` are told: those listed, or with no list every kind but
    /// presence (`user.online`, `user.offline`: a store write per connection and
    /// disconnection, so only when asked for by name).
    fn wants(&self, kind: &str) -> bool {
        match self.cfg.events.is_empty() {
            true => !kind.starts_with("user."),
            false => self.cfg.events.iter().any(|e| e == kind),
        }
    }
}

/// The event types a commit causes.
fn events_of(c: &Commit) -> Vec<OutboxEvent> {
    let mut out = Vec::new();
    if let Some(m) = &c.message {
        out.push(OutboxEvent::Message(match m.body {
            MessageBody::Recall { .. } => "message.recalled",
            MessageBody::System { .. } => "group.changed",
            _ => "message.sent",
        }));
    }
    for op in &c.ops {
        if let Op::Redact {
            conv,
            conv_seq,
            body: MessageBody::Deleted { at_ms },
        } = op
        {
            out.push(OutboxEvent::Other {
                kind: "message.deleted",
                data: serde_json::json!({"conv": conv, "conv_seq": conv_seq, "deleted_at_ms": at_ms}),
            });
        }
    }
    // A friendship's change is in both users' inboxes: told once.
    if let Some((_, ev)) = c.events.first() {
        match ev {
            Event::FriendAccepted { from, to } => out.push(OutboxEvent::Other {
                kind: "friend.added",
                data: serde_json::json!({"users": [from, to]}),
            }),
            Event::FriendRemoved { by, peer } => out.push(OutboxEvent::Other {
                kind: "friend.removed",
                data: serde_json::json!({"by": by, "peer": peer}),
            }),
            _ => {}
        }
    }
    out
}

impl Logic {
    /// `c` with the events it causes for the app's server, if the after-events webhook is
    /// on, wants them, and the outbox has room (otherwise they are dropped and counted).
    pub(crate) fn with_outbox(&self, mut c: Commit) -> Commit {
        if self.outbox.is_none() {
            return c;
        }
        let mut events = events_of(&c);
        events.append(&mut c.outbox);
        c.outbox = self.outbox_events(events);
        c
    }

    /// Of `events`, those the after-events webhook tells, if the outbox has room (else
    /// none: dropped and counted); none without the webhook.
    pub(crate) fn outbox_events(&self, mut events: Vec<OutboxEvent>) -> Vec<OutboxEvent> {
        let Some(outbox) = &self.outbox else {
            return Vec::new();
        };
        events.retain(|e| {
            outbox.wants(match e {
                OutboxEvent::Message(kind) | OutboxEvent::User(kind) => kind,
                OutboxEvent::Other { kind, .. } => kind,
            })
        });
        if !events.is_empty() && outbox.full.load(Ordering::Relaxed) {
            metrics::counter!("xinge_webhook_events_dropped_total").increment(events.len() as u64);
            events.clear();
        }
        events
    }

    /// Tells the app's server who came online or went offline, if it asked for these
    /// events by name: one outbox write of their own. `false` if the write failed.
    pub(crate) async fn outbox_presence(&self, changes: &[PresenceChange]) -> bool {
        let events = changes
            .iter()
            .map(|ch| OutboxEvent::Other {
                kind: if ch.online {
                    "user.online"
                } else {
                    "user.offline"
                },
                data: serde_json::json!({ "user_id": ch.user, "at_ms": ch.at_ms }),
            })
            .collect();
        let events = self.outbox_events(events);
        if events.is_empty() {
            return true;
        }
        let c = Commit {
            outbox: events,
            ..Commit::default()
        };
        match self.store.commit(c).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(changes = changes.len(), error = %e, "presence events not written");
                false
            }
        }
    }

    /// Delivers the outbox until `shutdown`: batches in order, retried, then dead
    /// letters. Does nothing without an after-events URL.
    pub async fn run_webhooks(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(outbox) = &self.outbox else {
            return;
        };
        let cfg = &outbox.cfg;
        // The last place delivered (or given up on) by this process.
        let mut cursor = 0;
        while !*shutdown.borrow() {
            if !self.store.lead_outbox().await.unwrap_or(false) {
                let _ = tokio::time::timeout(FOLLOW, shutdown.changed()).await;
                continue;
            }
            let batch = match self.store.outbox(cursor, cfg.batch).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "the outbox could not be read");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                // Nothing to deliver: empty, so not full, without asking the store.
                metrics::gauge!("xinge_webhook_outbox_depth").set(0.0);
                outbox.full.store(false, Ordering::Relaxed);
                let _ = tokio::time::timeout(IDLE, shutdown.changed()).await;
                continue;
            }
            if let Ok(depth) = self.store.outbox_depth(cursor).await {
                metrics::gauge!("xinge_webhook_outbox_depth").set(depth as f64);
                outbox
                    .full
                    .store(depth >= cfg.max_outbox, Ordering::Relaxed);
            }
            let last = batch.last().map_or(cursor, |r| r.seq);
            if self.deliver(outbox, batch, &mut shutdown).await {
                cursor = last;
            }
        }
    }

    /// One batch: tried until the app takes it or the attempts run out (then dead
    /// letters), or until shutdown (then it stays in the outbox for the next start).
    /// `true` once it is out of the outbox.
    async fn deliver(
        &self,
        outbox: &Outbox,
        batch: Vec<OutboxRecord>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
        let cfg = &outbox.cfg;
        let body = format!(
            "{{\"events\":[{}]}}",
            batch
                .iter()
                .map(|r| r.event.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        let mut error = String::new();
        for attempt in 1..=cfg.max_attempts {
            match self.post(outbox, &body).await {
                Ok(()) => {
                    metrics::counter!("xinge_webhook_events_delivered_total")
                        .increment(batch.len() as u64);
                    let seqs: Vec<u64> = batch.iter().map(|r| r.seq).collect();
                    if let Err(e) = self.store.outbox_done(&seqs).await {
                        // Delivered again later: at least once.
                        tracing::warn!(error = %e, "delivered events could not be removed");
                        return false;
                    }
                    return true;
                }
                Err(e) => error = e,
            }
            metrics::counter!("xinge_webhook_attempts_failed_total").increment(1);
            if attempt == cfg.max_attempts {
                break;
            }
            let wait = backoff(cfg, attempt);
            tracing::warn!(%error, attempt, wait_ms = wait.as_millis() as u64, "an after-events delivery failed");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return false,
            }
        }
        metrics::counter!("xinge_webhook_dead_letters_total").increment(batch.len() as u64);
        tracing::error!(%error, events = batch.len(), "after-events given up on: dead letters");
        match self
            .store
            .dead_letter(&batch, &error, self.cfg.clock.now_ms())
            .await
        {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "dead letters could not be written");
                false
            }
        }
    }

    async fn post(&self, outbox: &Outbox, body: &str) -> Result<(), String> {
        let timestamp = xinge_core::now_ms() / 1000;
        let resp = outbox
            .client
            .post(&outbox.url)
            .timeout(Duration::from_millis(outbox.cfg.timeout_ms))
            .header("content-type", "application/json")
            .header("x-xinge-event", "events")
            .header("x-xinge-timestamp", timestamp.to_string())
            .header(
                "x-xinge-signature",
                sign(&outbox.secrets, timestamp, body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match resp.status().is_success() {
            true => Ok(()),
            false => Err(format!("status {}", resp.status())),
        }
    }
}

/// How often an empty outbox is looked at again.
const IDLE: Duration = Duration::from_millis(50);

/// How often a process that does not deliver the outbox asks to.
const FOLLOW: Duration = Duration::from_secs(1);

/// The wait before attempt `attempt + 1`: `backoff_ms · 2^(attempt-1)`, at most
/// `backoff_max_ms`, less a random part of up to half (so that many processes' retries
/// do not come back at once).
fn backoff(cfg: &AfterConfig, attempt: u32) -> Duration {
    let full = cfg
        .backoff_ms
        .saturating_mul(1u64 << (attempt - 1).min(30))
        .min(cfg.backoff_max_ms);
    let jitter = rand::random::<u64>() % (full / 2 + 1);
    Duration::from_millis(full - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_back_off_doubles_up_to_its_ceiling_with_jitter_below() {
        let cfg = AfterConfig {
            backoff_ms: 100,
            backoff_max_ms: 1_000,
            ..Default::default()
        };
        for attempt in 1..=40 {
            let full = (100u64 << (attempt - 1).min(30)).min(1_000);
            for _ in 0..20 {
                let w = backoff(&cfg, attempt).as_millis() as u64;
                assert!(w <= full && w >= full - full / 2, "attempt {attempt}: {w}");
            }
        }
    }
}
