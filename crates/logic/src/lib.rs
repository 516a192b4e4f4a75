//! The IM layer: accounts, friends, 1:1 chat, inboxes, conversations and read state.
//! Stateless over the store: everything it knows is in the [`Store`]; after each commit it
//! hands the new inbox entries to the push layer as signals.
//!
//! ```text
//! token.rs    signed, expiring tokens naming user and device
//! account.rs  register, login, logout, profile, authenticate
//! friend.rs   requests, accept/decline, remove, block
//! chat.rs     send, sync, conversations, history, read, receipts, recall, typing, presence
//! ```
//! Every operation takes the caller's identity first and returns `ApiError` with a stable
//! code; internal failures are logged here and reach the client only as `internal`.

mod account;
mod chat;
mod friend;
mod group;
pub mod token;

use std::sync::Arc;
use std::time::Duration;
use xinge_core::config::Config;
use xinge_core::error::ApiError;
use xinge_core::{ConnId, ErrorCode, UserId};
use xinge_proto::api::{InboxEntry, Signal};
use xinge_proto::{Frame, cmd};
use xinge_push::Push;
use xinge_store::{Commit, Committed, Refusal, Store, StoreError};

pub type Result<T> = std::result::Result<T, ApiError>;

/// Who is calling: the user and device from their token, and the connection when the call
/// came up a long connection (that connection needs no signal for its own action).
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: UserId,
    pub device: xinge_core::DeviceId,
    pub conn: Option<ConnId>,
}

pub struct Logic {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) push: Arc<Push>,
    pub(crate) cfg: Config,
    pub(crate) tokens: token::TokenSigner,
    /// Group ids: time-ordered and unique across processes (node id inside).
    pub(crate) ids: xinge_core::idgen::IdGen,
    pub(crate) group_signals: group::GroupSignals,
}

pub(crate) fn bad(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

/// Maps a store failure: the cause goes to the log, the client sees only `internal`.
pub(crate) fn store_err(e: StoreError) -> ApiError {
    match e {
        StoreError::Conflict => bad(ErrorCode::Conflict, "already exists"),
        StoreError::NotFound => bad(ErrorCode::NotFound, "not found"),
        StoreError::Closed => bad(ErrorCode::Unavailable, "server shutting down"),
        StoreError::Refused(r) => match r {
            Refusal::NoGroup | Refusal::NotMember => {
                bad(ErrorCode::NotFound, "no such conversation")
            }
            Refusal::Muted => bad(ErrorCode::Muted, "you are muted in this group"),
            Refusal::GroupFull => bad(ErrorCode::LimitReached, "the group is full"),
        },
        StoreError::Backend(cause) => {
            tracing::error!(%cause, "store failure");
            bad(ErrorCode::Internal, "internal error")
        }
    }
}

/// The JSON of `Signal::Inbox` for `entry`, with the entry inline when its JSON is at most
/// `inline_max` bytes. The entry is serialised once and spliced in, not serialised twice.
pub fn inbox_signal_body(entry: &InboxEntry, inline_max: usize) -> Vec<u8> {
    let json = serde_json::to_vec(entry).unwrap_or_default();
    let mut body = Vec::with_capacity(json.len() + 48);
    body.extend_from_slice(b"{\"type\":\"inbox\",\"seq\":");
    body.extend_from_slice(entry.seq.to_string().as_bytes());
    body.extend_from_slice(b",\"entry\":");
    if !json.is_empty() && json.len() <= inline_max {
        body.extend_from_slice(&json);
    } else {
        body.extend_from_slice(b"null");
    }
    body.push(b'}');
    body
}

impl Logic {
    pub fn new(
        store: Arc<dyn Store>,
        push: Arc<Push>,
        cfg: Config,
        token_secret: Vec<u8>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            push,
            ids: xinge_core::idgen::IdGen::new(cfg.server.node_id),
            group_signals: group::GroupSignals::new(Duration::from_millis(
                cfg.chat.group_signal_window_ms,
            )),
            cfg,
            tokens: token::TokenSigner::new(token_secret),
        })
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Commits and then signals every new inbox entry to its owner's online devices —
    /// the calling connection included: its own entry, inline, keeps its cursor contiguous,
    /// where leaving it out would make the next signal look like a gap and cost a pull.
    pub(crate) async fn commit(&self, c: Commit) -> Result<Committed> {
        let done = self.store.commit(c).await.map_err(store_err)?;
        for (user, entry) in &done.entries {
            self.signal_inbox(*user, entry, None);
        }
        if let Some((group, seq)) = done.group_advanced {
            // Small messages ride in the signal, so online members need not pull.
            let small = done.message.as_ref().filter(|m| {
                serde_json::to_vec(m).is_ok_and(|b| b.len() <= self.cfg.chat.inline_max_bytes)
            });
            self.group_signals.mark(group, seq, small.cloned());
        }
        Ok(done)
    }

    fn signal_inbox(&self, user: UserId, entry: &InboxEntry, except: Option<ConnId>) {
        let body = inbox_signal_body(entry, self.cfg.chat.inline_max_bytes);
        self.push
            .signal(user, except, &Frame::request(cmd::SIGNAL, 0, body));
    }

    pub(crate) fn signal(&self, user: UserId, except: Option<ConnId>, signal: &Signal) {
        let body = serde_json::to_vec(signal).unwrap_or_default();
        self.push
            .signal(user, except, &Frame::request(cmd::SIGNAL, 0, body));
    }

    /// Tells friends when a user comes online or goes offline. Runs until the push layer's
    /// presence stream ends.
    pub async fn run_presence(self: Arc<Self>) {
        let Some(mut changes) = self.push.presence_changes() else {
            return;
        };
        while let Some(ch) = changes.recv().await {
            let friends = match self.store.friends(ch.user, 5_000).await {
                Ok(f) => f,
                Err(e) => {
                    store_err(e);
                    continue;
                }
            };
            let signal = Signal::Presence {
                user: ch.user,
                online: ch.online,
                last_seen_ms: ch.at_ms,
            };
            for f in friends {
                self.signal(f.user_id, None, &signal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use xinge_proto::api::Event;

    #[test]
    fn spliced_inbox_signal_is_the_signal_type() {
        let entry = InboxEntry {
            seq: 7,
            at_ms: 1,
            event: Event::FriendRemoved {
                by: UserId(1),
                peer: UserId(2),
            },
        };
        let s: Signal = serde_json::from_slice(&inbox_signal_body(&entry, 1024)).unwrap();
        assert_eq!(
            s,
            Signal::Inbox {
                seq: 7,
                entry: Some(Box::new(entry.clone()))
            }
        );
        let s: Signal = serde_json::from_slice(&inbox_signal_body(&entry, 10)).unwrap();
        assert_eq!(
            s,
            Signal::Inbox {
                seq: 7,
                entry: None
            }
        );
    }
}
