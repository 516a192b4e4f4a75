//! The conversation list (last message, unread and mention counts) and a conversation's
//! history, paged either way.

use crate::limits::Limited;
use crate::{Caller, Logic, Result, error::bad};
use xinge_core::ErrorCode;
use xinge_proto::api::*;

impl Logic {
    /// The caller's conversations, newest activity first. One store read for the whole
    /// list (a former group member's row is capped where they left: they read only the
    /// part they were a member for).
    pub async fn conversations(&self, caller: &Caller) -> Result<ConversationList> {
        let rows = self
            .store
            .conversation_list(caller.user, self.cfg.chat.max_conversations)
            .await?;
        let mut out: Vec<Conversation> = rows
            .into_iter()
            .map(|r| Conversation {
                conv: r.conv,
                peer: r.conv.peer_of(caller.user),
                last_seq: r.head,
                // Capped like the head: a former member's cursor may sit on their own
                // leave event, past the part they may read.
                read_seq: r.read_seq.min(r.head),
                unread: r.head.saturating_sub(r.read_seq),
                unread_mentions: r.unread_mentions,
                name: r.name,
                last_activity_ms: r.last_message.as_ref().map_or(0, |m| m.sent_at_ms),
                last_message: r.last_message,
                pinned: false,
                muted: false,
            })
            .collect();
        self.mark_settings(caller.user, &mut out).await?;
        // Pinned first, then by activity.
        out.sort_by(|a, b| {
            b.pinned
                .cmp(&a.pinned)
                .then(b.last_activity_ms.cmp(&a.last_activity_ms))
                .then(b.conv.cmp(&a.conv))
        });
        Ok(ConversationList { conversations: out })
    }

    pub async fn history(&self, caller: &Caller, req: HistoryRequest) -> Result<HistoryResponse> {
        self.limit(caller.user, Limited::Pull).await?;
        metrics::counter!("xinge_pulls_total", "kind" => "history").increment(1);
        let (first, last) = self.readable(caller, req.conv).await?;
        let limit = req.limit.unwrap_or(50).clamp(1, self.cfg.chat.max_page);
        let (messages, forward) = match (req.before, req.after) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    ErrorCode::InvalidArgument,
                    "give at most one of `before` and `after`",
                ));
            }
            (None, Some(after)) => {
                let from = after.saturating_add(1).max(first);
                (
                    self.store
                        .messages(req.conv, from, last, limit + 1, false)
                        .await,
                    true,
                )
            }
            (before, None) => {
                let to = before.map_or(u64::MAX, |b| b.saturating_sub(1)).min(last);
                (
                    self.store
                        .messages(req.conv, first, to, limit + 1, true)
                        .await,
                    false,
                )
            }
        };
        let mut messages = messages?;
        // One extra was asked for to learn whether there is more.
        let has_more = messages.len() > limit;
        if has_more {
            if forward {
                messages.truncate(limit);
            } else {
                messages.remove(0);
            }
        }
        Ok(HistoryResponse { messages, has_more })
    }
}
