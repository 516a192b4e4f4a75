//! What each [`crate::Op`] does to the keyspaces, inside the batch; and creating a user.

use super::keys::*;
use super::tx::Tx;
use super::{decode, encode};
use crate::{MemberRecord, NewUser, Result, StoreError, UserRecord};
use xinge_core::{ConvId, GroupId, UserId};
use xinge_proto::api::Message;

impl Tx<'_> {
    pub(super) fn create_user(&mut self, new: &NewUser) -> Result<UserRecord> {
        if self
            .get(|s| &s.usernames, new.username.as_bytes())?
            .is_some()
        {
            return Err(StoreError::Conflict);
        }
        if let Some(ext) = &new.external_id
            && self.get(|s| &s.usernames, &external_key(ext))?.is_some()
        {
            return Err(StoreError::Conflict);
        }
        let id = match self.get(|s| &s.meta, b"next_user")? {
            Some(v) => read_u64(&v)?,
            None => 1,
        };
        let user = UserRecord {
            id: UserId(id),
            username: new.username.clone(),
            display_name: new.display_name.clone(),
            password_hash: new.password_hash.clone(),
            created_at_ms: new.created_at_ms,
            banned: false,
            external_id: new.external_id.clone(),
        };
        if let Some(ext) = &new.external_id {
            self.put(|s| &s.usernames, external_key(ext), u64_key(id).to_vec());
        }
        self.put(|s| &s.meta, b"next_user".to_vec(), u64_key(id + 1).to_vec());
        self.put(
            |s| &s.usernames,
            new.username.as_bytes().to_vec(),
            u64_key(id).to_vec(),
        );
        self.put(|s| &s.users, u64_key(id).to_vec(), encode(&user));
        Ok(user)
    }

    pub(super) fn op(&mut self, op: crate::Op) -> Result<()> {
        use crate::Op;
        match op {
            Op::SetFriends { a, b, since_ms } => {
                self.put(|s| &s.friends, pair_key(a, b), u64_key(since_ms).to_vec());
                self.put(|s| &s.friends, pair_key(b, a), u64_key(since_ms).to_vec());
                self.clear_requests(a, b);
            }
            Op::RemoveFriends { a, b } => {
                self.delete(|s| &s.friends, pair_key(a, b));
                self.delete(|s| &s.friends, pair_key(b, a));
            }
            Op::PutRequest(view) => {
                let v = encode(&view);
                self.put(|s| &s.requests_in, pair_key(view.to, view.from), v.clone());
                self.put(|s| &s.requests_out, pair_key(view.from, view.to), v);
            }
            Op::DeleteRequest { from, to } => {
                self.delete(|s| &s.requests_in, pair_key(to, from));
                self.delete(|s| &s.requests_out, pair_key(from, to));
            }
            Op::SetBlock { by, peer, blocked } => {
                if blocked {
                    self.put(|s| &s.blocks, pair_key(by, peer), Vec::new());
                } else {
                    self.delete(|s| &s.blocks, pair_key(by, peer));
                }
            }
            Op::Redact {
                conv,
                conv_seq,
                body,
            } => {
                let key = msg_key(conv, conv_seq);
                if let Some(v) = self.get(|s| &s.msgs, &key)? {
                    let mut msg: Message = decode(&v)?;
                    msg.redact(body);
                    self.put(|s| &s.msgs, key, encode(&msg));
                }
            }
            Op::ForgetNews { user, convs } => {
                // The writer is the only one adding to the set, so no message can slip in
                // between this look at the head and the delete.
                for conv in convs {
                    let head = self.head(|s| &s.msgs, &conv.to_key())?;
                    if self.cursor(user, conv)?.unwrap_or(0) >= head {
                        self.delete(|s| &s.news, member_key(user, conv));
                    }
                }
            }
            Op::Join { user, conv } => {
                let key = member_key(user, conv);
                if self.get(|s| &s.members, &key)?.is_none() {
                    self.put(|s| &s.members, key, u64_key(0).to_vec());
                }
            }
            Op::AdvanceRead { user, conv, seq } => {
                let cur = self.cursor(user, conv)?.unwrap_or(0);
                if seq > cur || cur == 0 {
                    let key = member_key(user, conv);
                    self.put(|s| &s.members, key, u64_key(seq.max(cur)).to_vec());
                    // Groups keep the cursor with the member too, for "who read" scans.
                    if let ConvId::Group(g) = conv
                        && let Some(mut m) = self.member_rec(g, user)?
                        && seq > m.read_seq
                    {
                        m.read_seq = seq;
                        self.put(|s| &s.gmembers, group_user_key(g, user), encode(&m));
                    }
                }
            }
            Op::CreateGroup(rec) => {
                self.put(|s| &s.groups, u64_key(rec.id.0).to_vec(), encode(&rec));
            }
            Op::UpdateGroup { group, patch } => {
                let Some(mut rec) = self.group_rec(group)? else {
                    return Ok(());
                };
                patch.apply(&mut rec);
                self.put(|s| &s.groups, u64_key(group.0).to_vec(), encode(&rec));
            }
            Op::AddMember { group, user, role } => {
                if self.member_rec(group, user)?.is_some() {
                    return Ok(());
                }
                self.membership_changes(group);
                let conv = ConvId::Group(group);
                let head = self.head(|s| &s.msgs, &conv.to_key())?;
                let m = MemberRecord {
                    role,
                    joined_seq: head,
                    muted: false,
                    read_seq: head,
                };
                self.put(|s| &s.gmembers, group_user_key(group, user), encode(&m));
                self.put(
                    |s| &s.members,
                    member_key(user, conv),
                    u64_key(head).to_vec(),
                );
                self.delete(|s| &s.invites, group_user_key(group, user));
                self.delete(|s| &s.gleft, group_user_key(group, user));
                self.count_members(group, 1)?;
            }
            Op::RemoveMember { group, user } => {
                let Some(m) = self.member_rec(group, user)? else {
                    return Ok(());
                };
                self.membership_changes(group);
                // They keep read access to the part they were a member for.
                let conv = ConvId::Group(group);
                let left = self.head(|s| &s.msgs, &conv.to_key())?;
                let mut span = u64_key(m.joined_seq).to_vec();
                span.extend_from_slice(&u64_key(left));
                self.put(|s| &s.gleft, group_user_key(group, user), span);
                self.delete(|s| &s.gmembers, group_user_key(group, user));
                self.delete(|s| &s.members, member_key(user, ConvId::Group(group)));
                self.count_members(group, -1)?;
            }
            Op::SetRole { group, user, role } => {
                if let Some(mut m) = self.member_rec(group, user)? {
                    m.role = role;
                    self.put(|s| &s.gmembers, group_user_key(group, user), encode(&m));
                }
            }
            Op::SetMuted { group, user, muted } => {
                if let Some(mut m) = self.member_rec(group, user)? {
                    m.muted = muted;
                    self.put(|s| &s.gmembers, group_user_key(group, user), encode(&m));
                }
            }
            Op::PutInvite { group, user, by } => {
                self.put(
                    |s| &s.invites,
                    group_user_key(group, user),
                    u64_key(by.0).to_vec(),
                );
            }
            Op::DeleteInvite { group, user } => {
                self.delete(|s| &s.invites, group_user_key(group, user));
            }
        }
        Ok(())
    }

    fn count_members(&mut self, group: GroupId, delta: i64) -> Result<()> {
        if let Some(mut rec) = self.group_rec(group)? {
            rec.member_count = rec.member_count.saturating_add_signed(delta);
            self.put(|s| &s.groups, u64_key(group.0).to_vec(), encode(&rec));
        }
        Ok(())
    }

    fn clear_requests(&mut self, a: UserId, b: UserId) {
        for (from, to) in [(a, b), (b, a)] {
            self.delete(|s| &s.requests_in, pair_key(to, from));
            self.delete(|s| &s.requests_out, pair_key(from, to));
        }
    }
}
