//! What is not stored: typing signals, presence asked for, and friends told when a user
//! comes online or goes offline.

use crate::access::{Access, MEMBER_PAGE};
use crate::signal::presence_key;
use crate::{Caller, Logic, Result, error::bad};
use std::sync::Arc;
use tokio::sync::mpsc;
use xinge_core::{ErrorCode, UserId};
use xinge_proto::api::*;
use xinge_proto::{Frame, cmd};
use xinge_push::PresenceChange;

impl Logic {
    /// Typing is ephemeral: a signal to the other members' devices, nothing stored. Large
    /// (read fan-out) groups get no typing signals.
    pub async fn typing(&self, caller: &Caller, req: TypingRequest) -> Result<()> {
        let signal = Signal::Typing {
            conv: req.conv,
            user: caller.user,
        };
        match self.access(caller, req.conv).await? {
            Access::Direct(peer) => {
                self.may_message(caller.user, peer).await?;
                self.signal_ephemeral(peer, &signal);
            }
            Access::Group(g, _) if g.member_count <= self.cfg.chat.fanout_threshold => {
                let members = self.store.group_members(g.id, None, MEMBER_PAGE).await?;
                for (user, _) in members.into_iter().filter(|(u, _)| *u != caller.user) {
                    self.signal_ephemeral(user, &signal);
                }
            }
            Access::Group(..) => {}
        }
        Ok(())
    }

    /// Presence of the given users, for those who are the caller's friends (or the caller).
    pub async fn presence(&self, caller: &Caller, req: PresenceRequest) -> Result<PresenceList> {
        if req.users.len() > 500 {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "at most 500 users at a time",
            ));
        }
        let mut presence = Vec::new();
        for u in req.users {
            let visible = u == caller.user
                || self
                    .store
                    .pair(caller.user, u)
                    .await?
                    .friends_since_ms
                    .is_some();
            if visible {
                let (online, last_seen_ms) = self.push.presence(u).await;
                presence.push(Presence {
                    user: u,
                    online,
                    last_seen_ms,
                });
            }
        }
        Ok(PresenceList { presence })
    }

    /// Tells friends when a user comes online or goes offline. Runs until the push layer's
    /// presence stream ends (`xinge serve`; the cluster's api processes take the changes
    /// from a durable stream and call [`Self::presence_changed`] themselves).
    pub async fn run_presence(self: Arc<Self>, mut changes: mpsc::Receiver<PresenceChange>) {
        let mut batch = Vec::with_capacity(256);
        while changes.recv_many(&mut batch, 256).await > 0 {
            // A write the store failed (a hiccup, or the store closing) is tried once more
            // after 200 ms, then let go: in-process there is nobody to hand it to.
            if !self.presence_changed(&batch).await {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                self.presence_changed(&batch).await;
            }
            batch.clear();
        }
    }

    /// Handles presence changes: their events written to the outbox (one write for all,
    /// when the app's server asked for them), then each user's friends signalled. `false`
    /// if the outbox write failed (nothing was signalled; the caller may try again).
    pub async fn presence_changed(&self, changes: &[PresenceChange]) -> bool {
        if !self.outbox_presence(changes).await {
            return false;
        }
        for ch in changes {
            let friends = match self.store.friends(ch.user, 5_000).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(user = %ch.user, error = %e, "friends not told of a presence change");
                    continue;
                }
            };
            let signal = Signal::Presence {
                user: ch.user,
                online: ch.online,
                last_seen_ms: ch.at_ms,
            };
            let body = serde_json::to_vec(&signal).unwrap_or_default();
            let friends: Vec<UserId> = friends.iter().map(|f| f.user_id).collect();
            self.push.signal(
                &friends,
                &Frame::request(cmd::SIGNAL, 0, body),
                presence_key(ch.user, ch.at_ms),
            );
        }
        true
    }
}
