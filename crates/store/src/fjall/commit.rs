//! A commit inside the batch, step by step as [`crate::Commit`] lists them: the dedup
//! check, the group check, the ops, the message with its cursor move, mentions and
//! inbox entries, the events, the dedup record.

use super::keys::*;
use super::soft::MAX_SOFT;
use super::tx::{Tx, owned_slot_key};
use super::{StoredEntry, StoredEvent, decode, encode, pack_dedup, unpack_dedup};
use crate::{Commit, Committed, DedupRecord, GroupFanout, Result, StoreError};
use fjall::Slice;
use xinge_core::idgen::IdGen;
use xinge_core::{ConvId, MsgId, UserId};
use xinge_proto::api::{InboxEntry, Message};

impl Tx<'_> {
    /// Checks a group commit before anything of it is written.
    fn check_group(&self, g: &GroupFanout, ops: &[crate::Op]) -> Result<()> {
        let rec = self.group_rec(g.group)?;
        if rec.is_none()
            && ops
                .iter()
                .any(|o| matches!(o, crate::Op::CreateGroup(r) if r.id == g.group))
        {
            return Ok(()); // created by this very commit
        }
        let sender = match g.sender {
            Some((s, _)) => self.member_rec(g.group, s)?,
            None => None,
        };
        let mut adding = std::collections::HashSet::new();
        for op in ops {
            if let crate::Op::AddMember { group, user, .. } = op
                && *group == g.group
                && self.member_rec(g.group, *user)?.is_none()
            {
                adding.insert(*user);
            }
        }
        match g.check(rec.as_ref(), sender.as_ref(), adding.len() as u64) {
            Some(r) => Err(StoreError::Refused(r)),
            None => Ok(()),
        }
    }

    /// Sending implies having read up to one's own message. In a 1:1 conversation the
    /// move is held in memory (soft.rs) instead of written with the message — unless the
    /// conversation is not in the sender's list at all (not even by a `Join` of this
    /// batch), the table is full or the store is sealed: then it is written as before.
    fn advance_by_send(&mut self, user: UserId, conv: ConvId, seq: u64) -> Result<()> {
        if self.hold
            && matches!(conv, ConvId::Direct(..))
            && self.held + self.moved.len() < MAX_SOFT
            && let Some(cur) = self.cursor(user, conv)?
        {
            if seq > cur {
                let key = owned_slot_key(self.slot(|s| &s.members), &member_key(user, conv));
                // Later commits of this batch, and the cache, see it like a write.
                self.overlay
                    .insert(key, Some(Slice::from(&u64_key(seq)[..])));
                self.moved.push((user, conv, seq));
            }
            return Ok(());
        }
        self.op(crate::Op::AdvanceRead { user, conv, seq })
    }

    /// Writes `events` to the outbox, each with its own id, in this write.
    pub(super) fn write_outbox(
        &mut self,
        ids: &IdGen,
        events: &[crate::OutboxEvent],
        at_ms: u64,
        message: Option<&Message>,
        user: Option<&crate::UserRecord>,
    ) -> Result<()> {
        for ev in events {
            let value = match (ev, message) {
                // By reference: the message is in this write already.
                (crate::OutboxEvent::Message(kind), Some(m)) => {
                    pack_outbox_message(ids.next(), at_ms, m, kind)
                }
                _ => match ev.record(ids.next(), at_ms, user) {
                    Some(record) => record.into_bytes(),
                    None => continue,
                },
            };
            let seq = self.next_outbox_seq()?;
            self.put(|s| &s.outbox, u64_key(seq).to_vec(), value);
        }
        Ok(())
    }

    /// Adds a 1:1 conversation to the user's set of those that may hold unread messages:
    /// a write only when it is not there yet (a busy conversation stays in it).
    fn note_news(&mut self, user: UserId, conv: ConvId) -> Result<()> {
        let key = member_key(user, conv);
        if self.get(|s| &s.news, &key)?.is_none() {
            self.put(|s| &s.news, key, Vec::new());
        }
        Ok(())
    }

    fn append_inbox(&mut self, user: UserId, at_ms: u64, ev: StoredEvent) -> Result<u64> {
        let seq = self.next_seq(|s| &s.inbox, &u64_key(user.0))?;
        self.put_unread(
            |s| &s.inbox,
            inbox_key(user, seq),
            StoredEntry { at_ms, ev }.to_bytes(),
        );
        Ok(seq)
    }

    pub(super) fn commit(&mut self, ids: &IdGen, c: &mut Commit) -> Result<Committed> {
        if let Some((sender, cmid)) = &c.dedup
            && let Some(v) = self.get(|s| &s.dedup, &dedup_key(*sender, cmid))?
        {
            let rec = unpack_dedup(&v)?;
            let message = match self.get(|s| &s.msgs, &msg_key(rec.conv, rec.conv_seq))? {
                Some(m) => Some(decode::<Message>(&m)?),
                None => None,
            };
            return Ok(Committed {
                duplicate: true,
                message,
                sender_seq: rec.sender_seq,
                ..Committed::default()
            });
        }

        if let Some(g) = &c.group {
            self.check_group(g, &c.ops)?;
        }
        for op in c.ops.drain(..) {
            self.op(op)?;
        }
        let now = xinge_core::now_ms();
        let mut out = Committed {
            at_ms: now,
            ..Committed::default()
        };
        if let Some(new) = c.message.take() {
            let conv_seq = self.next_seq(|s| &s.msgs, &new.conv.to_key())?;
            let msg = new.into_message(MsgId(ids.next()), conv_seq);
            self.put(|s| &s.msgs, msg_key(msg.conv, conv_seq), encode(&msg));
            for &user in &msg.mentions {
                let key = seq_key(&member_key(user, msg.conv), conv_seq);
                self.put_unread(|s| &s.mentions, key, Vec::new());
            }
            if msg.mention_all {
                let key = seq_key(&msg.conv.to_key(), conv_seq);
                self.put_unread(|s| &s.gmentions, key, Vec::new());
            }
            self.advance_by_send(msg.sender, msg.conv, conv_seq)?;
            let mut recipients = std::mem::take(&mut c.message_to);
            if let Some(g) = &c.group {
                let count = self.group_rec(g.group)?.map_or(0, |r| r.member_count);
                if count <= g.threshold {
                    recipients.extend(self.member_ids(g.group)?.iter().copied());
                } else {
                    out.group_advanced = Some((g.group, conv_seq));
                }
            }
            let mut seen = std::collections::HashSet::new();
            recipients.retain(|u| seen.insert(*u));
            if let ConvId::Direct(..) = msg.conv {
                for &user in recipients.iter().filter(|&&u| u != msg.sender) {
                    self.note_news(user, msg.conv)?;
                }
            }
            for &user in &recipients {
                let ev = StoredEvent::Message {
                    conv: msg.conv,
                    conv_seq,
                };
                let seq = self.append_inbox(user, now, ev)?;
                if user == msg.sender {
                    out.sender_seq = seq;
                }
                out.recipients.push((user, seq));
            }
            out.message = Some(msg);
        }
        for (user, event) in c.events.drain(..) {
            let seq = self.append_inbox(user, now, StoredEvent::Other(event.clone()))?;
            out.entries.push((
                user,
                InboxEntry {
                    seq,
                    at_ms: now,
                    event,
                },
            ));
        }
        let outbox = std::mem::take(&mut c.outbox);
        self.write_outbox(ids, &outbox, now, out.message.as_ref(), None)?;
        for notice in c.notify.drain(..) {
            let about = match (notice.about, &out.message) {
                (crate::NoticeAbout::Message { .. }, Some(m)) => crate::NoticeAbout::Message {
                    conv: m.conv,
                    conv_seq: m.conv_seq,
                },
                (crate::NoticeAbout::Message { .. }, None) => continue,
                (about, _) => about,
            };
            let rec = crate::NoticeRecord {
                seq: 0,
                user: notice.user,
                at_ms: now,
                about,
            };
            let seq = self.next_counter(NOTIFY_HEAD)?;
            self.put_unread(|s| &s.notify, u64_key(seq).to_vec(), encode(&rec));
        }
        if let (Some((sender, cmid)), Some(msg)) = (&c.dedup, &out.message) {
            let rec = DedupRecord {
                conv: msg.conv,
                conv_seq: msg.conv_seq,
                msg_id: msg.msg_id,
                sender_seq: out.sender_seq,
            };
            self.put(|s| &s.dedup, dedup_key(*sender, cmid), pack_dedup(&rec));
        }
        Ok(out)
    }
}
