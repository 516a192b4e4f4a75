//! 1:1 chat on the push-then-pull contract (DESIGN.md §2).

use crate::{Caller, Logic, Result, bad, store_err};
use xinge_core::{ConvId, ErrorCode, UserId};
use xinge_proto::api::*;
use xinge_store::{Commit, NewMessage, Op};

const MAX_CLIENT_MSG_ID: usize = 64;

impl Logic {
    /// The caller's peer in `conv`, or `not_found` for a conversation the caller is not in
    /// (not `forbidden`: whether it exists is none of their business).
    fn peer_in(&self, caller: &Caller, conv: ConvId) -> Result<UserId> {
        match conv {
            ConvId::Direct(..) => conv
                .peer_of(caller.user)
                .ok_or_else(|| bad(ErrorCode::NotFound, "no such conversation")),
            ConvId::Group(_) => Err(bad(ErrorCode::NotFound, "no such conversation")),
        }
    }

    async fn may_message(&self, me: UserId, peer: UserId) -> Result<()> {
        // The hot path of every send: three point reads for friends, one more otherwise.
        let pair = self.store.pair(me, peer).await.map_err(store_err)?;
        let blocked = pair.i_blocked || pair.blocked_me;
        if pair.friends_since_ms.is_none() {
            if self.store.user(peer).await.map_err(store_err)?.is_none() {
                return Err(bad(ErrorCode::NotFound, "no such user"));
            }
            // A block is reported as such, whether or not they are friends.
            if !(self.cfg.chat.allow_strangers || blocked) {
                return Err(bad(ErrorCode::NotFriends, "you can only message friends"));
            }
        }
        if blocked {
            return Err(bad(ErrorCode::Blocked, "one of you has blocked the other"));
        }
        Ok(())
    }

    fn check_client_msg_id(id: &str) -> Result<()> {
        if id.is_empty() || id.len() > MAX_CLIENT_MSG_ID || id.chars().any(char::is_control) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "client_msg_id must be 1-64 bytes, no control characters",
            ));
        }
        Ok(())
    }

    pub async fn send(&self, caller: &Caller, req: SendRequest) -> Result<SendResponse> {
        Self::check_client_msg_id(&req.client_msg_id)?;
        let conv = match (req.to, req.conv) {
            (Some(to), None) => {
                if to == caller.user {
                    return Err(bad(ErrorCode::InvalidArgument, "cannot message yourself"));
                }
                ConvId::direct(caller.user, to)
            }
            (None, Some(conv)) => conv,
            _ => {
                return Err(bad(
                    ErrorCode::InvalidArgument,
                    "give exactly one of `to` and `conv`",
                ));
            }
        };
        let peer = self.peer_in(caller, conv)?;
        if !req.content.is_object() {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "content must be a JSON object",
            ));
        }
        let size = serde_json::to_vec(&req.content)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.cfg.chat.max_content_bytes {
            return Err(bad(ErrorCode::TooLarge, "content is over the size limit"));
        }
        self.may_message(caller.user, peer).await?;
        let body = MessageBody::Content {
            content: req.content,
        };
        self.append(caller, conv, peer, req.client_msg_id, body)
            .await
    }

    async fn append(
        &self,
        caller: &Caller,
        conv: ConvId,
        peer: UserId,
        client_msg_id: String,
        body: MessageBody,
    ) -> Result<SendResponse> {
        let me = caller.user;
        let c = Commit {
            dedup: Some((me, client_msg_id.clone())),
            message: Some(NewMessage {
                conv,
                sender: me,
                sender_device: Some(caller.device.clone()),
                client_msg_id,
                sent_at_ms: xinge_core::now_ms(),
                body,
            }),
            message_to: vec![me, peer],
            events: vec![],
            ops: vec![Op::Join { user: me, conv }, Op::Join { user: peer, conv }],
        };
        let done = self.commit(c).await?;
        let m = done
            .message
            .ok_or_else(|| bad(ErrorCode::Internal, "internal error"))?;
        Ok(SendResponse {
            msg_id: m.msg_id,
            conv: m.conv,
            conv_seq: m.conv_seq,
            inbox_seq: done.sender_seq,
            sent_at_ms: m.sent_at_ms,
            duplicate: done.duplicate,
        })
    }

    /// Recalls the caller's own message: a tombstone appended to the same timelines.
    /// Idempotent: recalling twice answers with the first recall.
    pub async fn recall(&self, caller: &Caller, req: RecallRequest) -> Result<SendResponse> {
        let peer = self.peer_in(caller, req.conv)?;
        let target = self
            .store
            .messages(req.conv, req.conv_seq, req.conv_seq, 1, false)
            .await
            .map_err(store_err)?
            .pop()
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such message"))?;
        if target.sender != caller.user {
            return Err(bad(
                ErrorCode::Forbidden,
                "only the sender may recall a message",
            ));
        }
        if !matches!(target.body, MessageBody::Content { .. }) {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "that is not a message one can recall",
            ));
        }
        let key = format!("recall:{}:{}", req.conv, req.conv_seq);
        let window = self.cfg.chat.recall_window_secs * 1000;
        if xinge_core::now_ms().saturating_sub(target.sent_at_ms) > window {
            return Err(bad(
                ErrorCode::RecallWindowPassed,
                "too late to recall this message",
            ));
        }
        self.append(
            caller,
            req.conv,
            peer,
            key,
            MessageBody::Recall {
                target: req.conv_seq,
            },
        )
        .await
    }

    pub async fn sync(&self, caller: &Caller, req: SyncRequest) -> Result<SyncResponse> {
        let limit = req
            .limit
            .unwrap_or(self.cfg.chat.max_page)
            .clamp(1, self.cfg.chat.max_page);
        let (entries, head) = self
            .store
            .inbox(caller.user, req.after, limit)
            .await
            .map_err(store_err)?;
        let last = entries.last().map_or(req.after, |e| e.seq);
        Ok(SyncResponse {
            has_more: last < head,
            entries,
            head,
        })
    }

    pub async fn conversations(&self, caller: &Caller) -> Result<ConversationList> {
        let members = self
            .store
            .memberships(caller.user, self.cfg.chat.max_conversations)
            .await
            .map_err(store_err)?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            let head = self.store.conv_head(m.conv).await.map_err(store_err)?;
            let last_message = self
                .store
                .messages(m.conv, head, head, 1, false)
                .await
                .map_err(store_err)?
                .pop();
            out.push(Conversation {
                conv: m.conv,
                peer: m.conv.peer_of(caller.user),
                last_seq: head,
                read_seq: m.read_seq,
                unread: head.saturating_sub(m.read_seq),
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
        self.peer_in(caller, req.conv)?;
        let limit = req.limit.unwrap_or(50).clamp(1, self.cfg.chat.max_page);
        let (messages, forward) = match (req.before, req.after) {
            (Some(_), Some(_)) => {
                return Err(bad(
                    ErrorCode::InvalidArgument,
                    "give at most one of `before` and `after`",
                ));
            }
            (None, Some(after)) => {
                let from = after.saturating_add(1);
                (
                    self.store
                        .messages(req.conv, from, u64::MAX, limit + 1, false)
                        .await,
                    true,
                )
            }
            (before, None) => {
                let to = before.map_or(u64::MAX, |b| b.saturating_sub(1));
                (
                    self.store.messages(req.conv, 1, to, limit + 1, true).await,
                    false,
                )
            }
        };
        let mut messages = messages.map_err(store_err)?;
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

    pub async fn mark_read(&self, caller: &Caller, req: ReadRequest) -> Result<ReadResponse> {
        let me = caller.user;
        let peer = self.peer_in(caller, req.conv)?;
        let head = self.store.conv_head(req.conv).await.map_err(store_err)?;
        let seq = req.seq.min(head);
        let cur = self
            .store
            .read_cursor(me, req.conv)
            .await
            .map_err(store_err)?;
        if seq <= cur {
            return Ok(ReadResponse {
                conv: req.conv,
                read_seq: cur,
            });
        }
        let ev = Event::Read {
            conv: req.conv,
            reader: me,
            seq,
        };
        let c = Commit {
            events: vec![(me, ev.clone()), (peer, ev)],
            ops: vec![Op::AdvanceRead {
                user: me,
                conv: req.conv,
                seq,
            }],
            ..Commit::default()
        };
        self.commit(c).await?;
        Ok(ReadResponse {
            conv: req.conv,
            read_seq: seq,
        })
    }

    /// Who has read the message at `seq`: members (other than its sender) whose read
    /// cursor is at or past it. No per-message rows: it is computed from cursors.
    pub async fn read_state(&self, caller: &Caller, req: ReadStateRequest) -> Result<ReadState> {
        let peer = self.peer_in(caller, req.conv)?;
        let msg = self
            .store
            .messages(req.conv, req.seq, req.seq, 1, false)
            .await
            .map_err(store_err)?
            .pop()
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such message"))?;
        let (mut read_by, mut unread_by) = (vec![], vec![]);
        for member in [caller.user, peer] {
            if member == msg.sender {
                continue;
            }
            let cursor = self
                .store
                .read_cursor(member, req.conv)
                .await
                .map_err(store_err)?;
            if cursor >= req.seq {
                read_by.push(member)
            } else {
                unread_by.push(member)
            }
        }
        Ok(ReadState {
            conv: req.conv,
            seq: req.seq,
            read_count: read_by.len() as u64,
            unread_count: unread_by.len() as u64,
            read_by,
            unread_by,
        })
    }

    /// Typing is ephemeral: a signal to the peer's devices, nothing stored.
    pub async fn typing(&self, caller: &Caller, req: TypingRequest) -> Result<()> {
        let peer = self.peer_in(caller, req.conv)?;
        self.may_message(caller.user, peer).await?;
        self.signal(
            peer,
            None,
            &Signal::Typing {
                conv: req.conv,
                user: caller.user,
            },
        );
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
                    .relation(caller.user, u)
                    .await
                    .map_err(store_err)?
                    .friends_since_ms
                    .is_some();
            if visible {
                let (online, last_seen_ms) = self.push.presence(u);
                presence.push(Presence {
                    user: u,
                    online,
                    last_seen_ms,
                });
            }
        }
        Ok(PresenceList { presence })
    }
}
