//! Sending on the push-then-pull contract, for 1:1 conversations and groups: a message is
//! appended once per `client_msg_id` (a retry gets the first answer), then signalled to
//! every recipient's online devices; a device that misses a signal pulls. Recall appends a
//! tombstone to the same timelines.

use crate::access::Access;
use crate::hooks::Outgoing;
use crate::limits::Limited;
use crate::{Caller, Logic, Result, error::bad};
use xinge_core::{ConvId, ErrorCode, UserId};
use xinge_proto::api::*;
use xinge_store::{Commit, NewMessage, Op};

const MAX_CLIENT_MSG_ID: usize = 64;
const MAX_MENTIONS: usize = 100;

impl Logic {
    pub(crate) async fn may_message(&self, me: UserId, peer: UserId) -> Result<()> {
        // The hot path of every send: three point reads for friends, one more otherwise.
        let pair = self.store.pair(me, peer).await?;
        let blocked = pair.i_blocked || pair.blocked_me;
        if pair.friends_since_ms.is_none() {
            if self.store.user(peer).await?.is_none() {
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

    /// A message's content as the server stores it: a JSON object within the size limit.
    fn check_content(&self, content: &serde_json::Value) -> Result<()> {
        if !content.is_object() {
            return Err(bad(
                ErrorCode::InvalidArgument,
                "content must be a JSON object",
            ));
        }
        let size = serde_json::to_vec(content)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > self.cfg.chat.max_content_bytes {
            return Err(bad(ErrorCode::TooLarge, "content is over the size limit"));
        }
        Ok(())
    }

    pub async fn send(&self, caller: &Caller, req: SendRequest) -> Result<SendResponse> {
        Self::check_client_msg_id(&req.client_msg_id)?;
        self.limit(caller.user, Limited::Send).await?;
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
        self.check_content(&req.content)?;
        if req.mentions.len() > MAX_MENTIONS {
            return Err(bad(ErrorCode::InvalidArgument, "at most 100 mentions"));
        }
        let access = self.access(caller, conv).await?;
        match &access {
            Access::Direct(peer) => self.may_message(caller.user, *peer).await?,
            Access::Group(_, member) => {
                if req.mention_all && member.role == Role::Member {
                    return Err(bad(
                        ErrorCode::Forbidden,
                        "only admins may mention everyone",
                    ));
                }
            }
        }
        let mention_all = req.mention_all && matches!(access, Access::Group(..));
        let mut content = req.content;
        self.attach_media(caller, &mut content).await?;
        if self.hooks.as_ref().is_some_and(|h| h.asks_before(&access)) {
            let replaced = self
                .before_send(Outgoing {
                    sender: caller.user,
                    sender_device: &caller.device,
                    conv,
                    client_msg_id: &req.client_msg_id,
                    content: &content,
                    mentions: &req.mentions,
                    mention_all,
                })
                .await?;
            if let Some(new) = replaced {
                // The app's content is held to what a sender's is; one that is not is
                // a failure of the hook, not the sender's fault.
                match self.check_content(&new) {
                    Ok(()) => content = new,
                    Err(_) => self.before_send_failed("the replacement content is not valid")?,
                }
            }
        }
        let draft = Draft {
            client_msg_id: req.client_msg_id,
            body: MessageBody::Content { content },
            mentions: req.mentions,
            mention_all,
            ops: vec![],
        };
        let append = self.append(caller, conv, &access, draft);
        drop(access); // not kept in this future while the commit runs
        append.await
    }

    /// Not an `async fn`, for the same reason as `Logic::commit`: the draft is turned into
    /// the commit before the future is made, so the future holds neither.
    fn append(
        &self,
        caller: &Caller,
        conv: ConvId,
        access: &Access,
        d: Draft,
    ) -> impl Future<Output = Result<SendResponse>> + Send + use<'_> {
        let me = caller.user;
        let (group, message_to, mut ops) = match access {
            Access::Direct(peer) => {
                let ops = vec![Op::Join { user: me, conv }, Op::Join { user: *peer, conv }];
                (None, vec![me, *peer], ops)
            }
            // The store expands the members (write fan-out) or not (read fan-out), and
            // checks the sender's membership and mute, atomically with the append.
            Access::Group(g, _) => (Some(self.fanout(g.id, Some((me, true)))), vec![me], vec![]),
        };
        ops.extend(d.ops);
        let c = Commit {
            dedup: Some((me, d.client_msg_id.clone())),
            group,
            message: Some(NewMessage {
                conv,
                sender: me,
                sender_device: Some(caller.device.clone()),
                client_msg_id: d.client_msg_id,
                sent_at_ms: self.cfg.clock.now_ms(),
                mentions: d.mentions,
                mention_all: d.mention_all,
                body: d.body,
            }),
            message_to,
            events: vec![],
            ops,
            outbox: vec![],
            notify: self.message_notices(me, conv),
        };
        let commit = self.commit_from(c, caller.origin.map(|conn| (me, conn)));
        async move {
            let (done, answered) = commit.await?;
            let kind = if done.duplicate { "duplicate" } else { "new" };
            metrics::counter!("xinge_messages_sent_total", "result" => kind).increment(1);
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
                entry: answered.then(|| {
                    Box::new(InboxEntry {
                        seq: done.sender_seq,
                        at_ms: done.at_ms,
                        event: Event::Message { message: m },
                    })
                }),
            })
        }
    }

    /// Recalls the caller's own message: its content is gone from every read of it from
    /// then on (history, sync, the conversation list show a `recalled` message: who and
    /// when), and a tombstone is appended to the same timelines so that devices holding
    /// the content drop it. `client_msg_id` is the recall's idempotency key: a retry
    /// answers exactly as the first time, even past the window; recalling a message that
    /// is already recalled is refused.
    pub async fn recall(&self, caller: &Caller, req: RecallRequest) -> Result<SendResponse> {
        Self::check_client_msg_id(&req.client_msg_id)?;
        let access = self.access(caller, req.conv).await?;
        let target = self
            .store
            .messages(req.conv, req.conv_seq, req.conv_seq, 1, false)
            .await?
            .pop()
            .filter(|m| self.visible_from(&access) < m.conv_seq)
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such message"))?;
        if target.sender != caller.user {
            return Err(bad(
                ErrorCode::Forbidden,
                "only the sender may recall a message",
            ));
        }
        // A retry of a recall that went through is let past the checks: the append below
        // finds its dedup key and answers exactly as the first time (the recall's own
        // time and sequence numbers), like any retried send.
        let retry = self
            .store
            .dedup(caller.user, &req.client_msg_id)
            .await?
            .is_some();
        if !retry {
            match target.body {
                MessageBody::Content { .. } => {}
                MessageBody::Recalled { .. } => {
                    return Err(bad(ErrorCode::Conflict, "the message is already recalled"));
                }
                _ => {
                    return Err(bad(
                        ErrorCode::InvalidArgument,
                        "that is not a message one can recall",
                    ));
                }
            }
            let window = self.cfg.chat.recall_window_secs * 1000;
            if self.cfg.clock.now_ms().saturating_sub(target.sent_at_ms) > window {
                return Err(bad(
                    ErrorCode::RecallWindowPassed,
                    "too late to recall this message",
                ));
            }
        }
        let draft = Draft {
            client_msg_id: req.client_msg_id,
            body: MessageBody::Recall {
                target: req.conv_seq,
            },
            mentions: vec![],
            mention_all: false,
            ops: vec![Op::Redact {
                conv: req.conv,
                conv_seq: req.conv_seq,
                body: MessageBody::Recalled {
                    by: caller.user,
                    at_ms: self.cfg.clock.now_ms(),
                },
            }],
        };
        self.append(caller, req.conv, &access, draft).await
    }
}

/// A message about to be appended.
pub(crate) struct Draft {
    pub client_msg_id: String,
    pub body: MessageBody,
    pub mentions: Vec<UserId>,
    pub mention_all: bool,
    /// Changes made in the same commit, before the append (a recall's rewrite).
    pub ops: Vec<Op>,
}
