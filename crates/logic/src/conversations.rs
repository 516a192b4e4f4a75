//! The conversation list (last message, unread and mention counts) and a conversation's
//! history, paged either way.

use crate::limits::Limited;
use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{ConvId, ErrorCode};
use xinge_proto::api::*;

impl Logic {
    pub async fn conversations(&self, caller: &Caller) -> Result<ConversationList> {
        let members = self
            .store
            .memberships(caller.user, self.cfg.chat.max_conversations)
            .await?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            let mut head = self.store.conv_head(m.conv).await?;
            if let ConvId::Group(g) = m.conv
                && self.store.group_member(g, caller.user).await?.is_none()
            {
                // A former member keeps the conversation but reads only the part they were a
                // member for: without this cap the list showed them the group's newest
                // message, sent after they left (found by tests/contract_props.rs).
                match self.store.former_member(g, caller.user).await? {
                    Some((_, left)) => head = head.min(left),
                    None => continue,
                }
            }
            let last_message = self
                .store
                .messages(m.conv, head, head, 1, false)
                .await?
                .pop();
            let (name, unread_mentions) = match m.conv {
                ConvId::Group(g) => {
                    let name = self.store.group(g).await?.map(|g| g.name);
                    let mentions = self
                        .store
                        .mention_count(caller.user, m.conv, m.read_seq, 99)
                        .await?;
                    (name, mentions)
                }
                ConvId::Direct(..) => (None, 0),
            };
            out.push(Conversation {
                conv: m.conv,
                peer: m.conv.peer_of(caller.user),
                last_seq: head,
                // Capped like the head: a former member's cursor may sit on their own
                // leave event, past the part they may read.
                read_seq: m.read_seq.min(head),
                unread: head.saturating_sub(m.read_seq),
                unread_mentions,
                name,
                last_activity_ms: last_message.as_ref().map_or(0, |m| m.sent_at_ms),
                last_message,
            });
        }
        out.sort_by(|a, b| {
            b.last_activity_ms
                .cmp(&a.last_activity_ms)
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
