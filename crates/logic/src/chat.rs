//! Chat on the push-then-pull contract (DESIGN.md §2), for 1:1 conversations and groups:
//! send, recall, sync, conversations, history, read cursors, receipts, typing, presence.

use crate::limits::Limited;
use crate::{Caller, Logic, Result, bad, store_err};
use xinge_core::{ConvId, ErrorCode, UserId};
use xinge_proto::api::*;
use xinge_store::{Commit, GroupFanout, GroupRecord, MemberRecord, NewMessage, Op};

const MAX_CLIENT_MSG_ID: usize = 64;
const MAX_MENTIONS: usize = 100;
/// Members read per page when scanning a group.
pub(crate) const MEMBER_PAGE: usize = 1_000;

/// The caller's standing in a conversation.
pub(crate) enum Access {
    Direct(UserId),
    Group(GroupRecord, MemberRecord),
}

fn no_conversation() -> xinge_core::error::ApiError {
    // `not_found`, not `forbidden`: whether it exists is none of their business.
    bad(ErrorCode::NotFound, "no such conversation")
}

impl Logic {
    /// The caller's access to `conv`, or `not_found` if they are not in it.
    pub(crate) async fn access(&self, caller: &Caller, conv: ConvId) -> Result<Access> {
        match conv {
            ConvId::Direct(..) => conv
                .peer_of(caller.user)
                .map(Access::Direct)
                .ok_or_else(no_conversation),
            ConvId::Group(g) => {
                let group = self
                    .store
                    .group(g)
                    .await
                    .map_err(store_err)?
                    .filter(|g| !g.dismissed);
                let member = self
                    .store
                    .group_member(g, caller.user)
                    .await
                    .map_err(store_err)?;
                match (group, member) {
                    (Some(group), Some(member)) => Ok(Access::Group(group, member)),
                    _ => Err(no_conversation()),
                }
            }
        }
    }

    pub(crate) fn fanout(&self, group: u64, sender: Option<(UserId, bool)>) -> GroupFanout {
        GroupFanout {
            group,
            threshold: self.cfg.chat.fanout_threshold,
            sender,
            max_members: self.cfg.chat.max_group_members,
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
        let draft = Draft {
            client_msg_id: req.client_msg_id,
            body: MessageBody::Content {
                content: req.content,
            },
            mentions: req.mentions,
            mention_all: req.mention_all && matches!(access, Access::Group(..)),
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
        let (group, message_to, ops) = match access {
            Access::Direct(peer) => {
                let ops = vec![Op::Join { user: me, conv }, Op::Join { user: *peer, conv }];
                (None, vec![me, *peer], ops)
            }
            // The store expands the members (write fan-out) or not (read fan-out), and
            // checks the sender's membership and mute, atomically with the append.
            Access::Group(g, _) => (Some(self.fanout(g.id, Some((me, true)))), vec![me], vec![]),
        };
        let c = Commit {
            dedup: Some((me, d.client_msg_id.clone())),
            group,
            message: Some(NewMessage {
                conv,
                sender: me,
                sender_device: Some(caller.device.clone()),
                client_msg_id: d.client_msg_id,
                sent_at_ms: xinge_core::now_ms(),
                mentions: d.mentions,
                mention_all: d.mention_all,
                body: d.body,
            }),
            message_to,
            events: vec![],
            ops,
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

    /// Recalls the caller's own message: a tombstone appended to the same timelines.
    /// Idempotent: recalling twice answers with the first recall.
    pub async fn recall(&self, caller: &Caller, req: RecallRequest) -> Result<SendResponse> {
        let access = self.access(caller, req.conv).await?;
        let target = self
            .store
            .messages(req.conv, req.conv_seq, req.conv_seq, 1, false)
            .await
            .map_err(store_err)?
            .pop()
            .filter(|m| self.visible_from(&access) < m.conv_seq)
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
        // A retry of a recall that went through answers with it, even after the window.
        if let Some(done) = self
            .store
            .dedup(caller.user, &key)
            .await
            .map_err(store_err)?
        {
            return Ok(SendResponse {
                msg_id: done.msg_id,
                conv: done.conv,
                conv_seq: done.conv_seq,
                inbox_seq: done.sender_seq,
                sent_at_ms: target.sent_at_ms,
                duplicate: true,
                entry: None,
            });
        }
        let window = self.cfg.chat.recall_window_secs * 1000;
        if xinge_core::now_ms().saturating_sub(target.sent_at_ms) > window {
            return Err(bad(
                ErrorCode::RecallWindowPassed,
                "too late to recall this message",
            ));
        }
        let draft = Draft {
            client_msg_id: key,
            body: MessageBody::Recall {
                target: req.conv_seq,
            },
            mentions: vec![],
            mention_all: false,
        };
        self.append(caller, req.conv, &access, draft).await
    }

    pub async fn sync(&self, caller: &Caller, req: SyncRequest) -> Result<SyncResponse> {
        self.limit(caller.user, Limited::Pull).await?;
        metrics::counter!("xinge_pulls_total", "kind" => "inbox").increment(1);
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
        let mut groups = Vec::new();
        if req.groups {
            let members = self
                .store
                .memberships(caller.user, self.cfg.chat.max_conversations)
                .await
                .map_err(store_err)?;
            for m in members {
                let ConvId::Group(g) = m.conv else { continue };
                let Some(rec) = self.store.group(g).await.map_err(store_err)? else {
                    continue;
                };
                if rec.member_count > self.cfg.chat.fanout_threshold {
                    let head = self.store.conv_head(m.conv).await.map_err(store_err)?;
                    groups.push(GroupHead { conv: m.conv, head });
                }
            }
        }
        Ok(SyncResponse {
            has_more: last < head,
            entries,
            head,
            groups,
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
            let mut head = self.store.conv_head(m.conv).await.map_err(store_err)?;
            if let ConvId::Group(g) = m.conv
                && self
                    .store
                    .group_member(g, caller.user)
                    .await
                    .map_err(store_err)?
                    .is_none()
            {
                // A former member keeps the conversation but reads only the part they were a
                // member for: without this cap the list showed them the group's newest
                // message, sent after they left (found by tests/contract_props.rs).
                match self
                    .store
                    .former_member(g, caller.user)
                    .await
                    .map_err(store_err)?
                {
                    Some((_, left)) => head = head.min(left),
                    None => continue,
                }
            }
            let last_message = self
                .store
                .messages(m.conv, head, head, 1, false)
                .await
                .map_err(store_err)?
                .pop();
            let (name, unread_mentions) = match m.conv {
                ConvId::Group(g) => {
                    let name = self
                        .store
                        .group(g)
                        .await
                        .map_err(store_err)?
                        .map(|g| g.name);
                    let mentions = self
                        .store
                        .mention_count(caller.user, m.conv, m.read_seq, 99)
                        .await
                        .map_err(store_err)?;
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

    /// The conv_seq after which the caller may read: a group member sees from their join on
    /// (unless the server allows full history).
    fn visible_from(&self, access: &Access) -> u64 {
        match access {
            Access::Group(_, m) if !self.cfg.chat.group_full_history => m.joined_seq,
            _ => 0,
        }
    }

    /// The part of a conversation's timeline the caller may read: members from their join
    /// on; a former group member the part they were a member for (nothing after it).
    async fn readable(&self, caller: &Caller, conv: ConvId) -> Result<(u64, u64)> {
        match self.access(caller, conv).await {
            Ok(access) => Ok((self.visible_from(&access) + 1, u64::MAX)),
            Err(e) => {
                let ConvId::Group(g) = conv else {
                    return Err(e);
                };
                match self
                    .store
                    .former_member(g, caller.user)
                    .await
                    .map_err(store_err)?
                {
                    Some((joined, left)) => {
                        let first = if self.cfg.chat.group_full_history {
                            1
                        } else {
                            joined + 1
                        };
                        Ok((first, left))
                    }
                    None => Err(e),
                }
            }
        }
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
        let access = self.access(caller, req.conv).await?;
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
        // 1:1: the reader's other devices and the peer hear of it. Groups: the reader's
        // other devices; senders ask `read_state` (a read in a 10,000-member group must not
        // fan out).
        let events = match access {
            Access::Direct(peer) => vec![(me, ev.clone()), (peer, ev)],
            Access::Group(..) => vec![(me, ev)],
        };
        let c = Commit {
            events,
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

    /// Who has read the message at `seq`: members (other than its sender, and who were
    /// members when it was sent) whose read cursor is at or past it. No per-message rows:
    /// it is computed from cursors, one scan of the members.
    pub async fn read_state(&self, caller: &Caller, req: ReadStateRequest) -> Result<ReadState> {
        let access = self.access(caller, req.conv).await?;
        let msg = self
            .store
            .messages(req.conv, req.seq, req.seq, 1, false)
            .await
            .map_err(store_err)?
            .pop()
            .filter(|m| self.visible_from(&access) < m.conv_seq)
            .ok_or_else(|| bad(ErrorCode::NotFound, "no such message"))?;
        let limit = req.limit.unwrap_or(100).clamp(1, 1_000);
        let after = req.after.map_or(0, |u| u.0);
        let mut st = ReadState {
            conv: req.conv,
            seq: req.seq,
            read_count: 0,
            unread_count: 0,
            read_by: vec![],
            unread_by: vec![],
            next_after: None,
        };
        let tally = |user: UserId, cursor: u64, st: &mut ReadState| {
            let (count, list) = if cursor >= req.seq {
                (&mut st.read_count, &mut st.read_by)
            } else {
                (&mut st.unread_count, &mut st.unread_by)
            };
            *count += 1;
            if user.0 > after {
                if list.len() < limit {
                    list.push(user);
                } else if st.next_after.is_none() {
                    st.next_after = Some(*list.last().unwrap_or(&user));
                }
            }
        };
        match access {
            Access::Direct(peer) => {
                for member in [caller.user, peer] {
                    if member != msg.sender {
                        let cursor = self
                            .store
                            .read_cursor(member, req.conv)
                            .await
                            .map_err(store_err)?;
                        tally(member, cursor, &mut st);
                    }
                }
            }
            Access::Group(g, _) => {
                let mut from = None;
                loop {
                    let page = self
                        .store
                        .group_members(g.id, from, MEMBER_PAGE)
                        .await
                        .map_err(store_err)?;
                    for (user, m) in &page {
                        if *user != msg.sender && m.joined_seq < req.seq {
                            tally(*user, m.read_seq, &mut st);
                        }
                    }
                    match page.last() {
                        Some((u, _)) if page.len() == MEMBER_PAGE => from = Some(*u),
                        _ => break,
                    }
                }
            }
        }
        Ok(st)
    }

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
                let members = self
                    .store
                    .group_members(g.id, None, MEMBER_PAGE)
                    .await
                    .map_err(store_err)?;
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
                    .await
                    .map_err(store_err)?
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
}

/// A message about to be appended.
pub(crate) struct Draft {
    pub client_msg_id: String,
    pub body: MessageBody,
    pub mentions: Vec<UserId>,
    pub mention_all: bool,
}
