//! The reads: straight to fjall from the caller's thread, never through the writer. A
//! read cursor is the larger of fjall's and the one held in memory (soft.rs).

use super::keys::*;
use super::{Spaces, StoredEntry, StoredEvent, backend, decode};
use crate::{
    ConversationRow, DedupRecord, DeviceRecord, GroupRecord, LIST_MENTIONS_CAP, MemberRecord,
    Membership, Pair, Relation, Result, UserRecord,
};
use fjall::Keyspace;
use serde::Deserialize;
use xinge_core::{ConvId, DeviceId, GroupId, UserId};
use xinge_proto::api::{Event, Friend, FriendRequestView, FriendRequests, InboxEntry, Message};

pub(super) fn get<T: for<'de> Deserialize<'de>>(ks: &Keyspace, key: &[u8]) -> Result<Option<T>> {
    match ks.get(key).map_err(backend)? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

pub(super) fn hydrate(spaces: &Spaces, seq: u64, stored: StoredEntry) -> Result<InboxEntry> {
    let event = match stored.ev {
        StoredEvent::Other(ev) => ev,
        StoredEvent::Message { conv, conv_seq } => {
            let message: Message = get(&spaces.msgs, &msg_key(conv, conv_seq))?
                .ok_or_else(|| backend(format!("inbox refers to missing {conv}#{conv_seq}")))?;
            Event::Message { message }
        }
    };
    Ok(InboxEntry {
        seq,
        at_ms: stored.at_ms,
        event,
    })
}

pub(super) fn user(s: &Spaces, id: UserId) -> Result<Option<UserRecord>> {
    get(&s.users, &u64_key(id.0))
}

pub(super) fn user_by_name(s: &Spaces, username: &str) -> Result<Option<UserRecord>> {
    match s.usernames.get(username.as_bytes()).map_err(backend)? {
        Some(id) => user(s, UserId(read_u64(&id)?)),
        None => Ok(None),
    }
}

pub(super) fn user_by_external_id(s: &Spaces, external_id: &str) -> Result<Option<UserRecord>> {
    match s
        .usernames
        .get(external_key(external_id))
        .map_err(backend)?
    {
        Some(id) => user(s, UserId(read_u64(&id)?)),
        None => Ok(None),
    }
}

pub(super) fn device_token(s: &Spaces, user: UserId, device: &DeviceId) -> Result<Option<u64>> {
    match s.devices.get(device_key(user, device)).map_err(backend)? {
        Some(v) => Ok(Some(read_u64(&v)?)),
        None => Ok(None),
    }
}

pub(super) fn devices(s: &Spaces, user: UserId, limit: usize) -> Result<Vec<DeviceRecord>> {
    let mut out = Vec::new();
    for kv in s.devices.prefix(u64_key(user.0)).take(limit) {
        let (k, v) = kv.into_inner().map_err(backend)?;
        let name = std::str::from_utf8(&k[8..]).ok().and_then(DeviceId::parse);
        let Some(device) = name else { continue };
        out.push(DeviceRecord {
            device,
            token_id: read_u64(&v)?,
            // Records written before login times were kept have none.
            logged_in_at_ms: v.get(8..).map_or(Ok(0), read_u64)?,
        });
    }
    Ok(out)
}

pub(super) fn pair(s: &Spaces, me: UserId, other: UserId) -> Result<Pair> {
    let friends_since_ms = match s.friends.get(pair_key(me, other)).map_err(backend)? {
        Some(v) => Some(read_u64(&v)?),
        None => None,
    };
    let blocked = |a, b| s.blocks.contains_key(pair_key(a, b)).map_err(backend);
    Ok(Pair {
        friends_since_ms,
        i_blocked: blocked(me, other)?,
        blocked_me: blocked(other, me)?,
    })
}

pub(super) fn relation(s: &Spaces, me: UserId, other: UserId) -> Result<Relation> {
    let p = pair(s, me, other)?;
    Ok(Relation {
        friends_since_ms: p.friends_since_ms,
        i_blocked: p.i_blocked,
        blocked_me: p.blocked_me,
        request_out: get(&s.requests_out, &pair_key(me, other))?,
        request_in: get(&s.requests_in, &pair_key(me, other))?,
    })
}

pub(super) fn friends(s: &Spaces, user: UserId, limit: usize) -> Result<Vec<Friend>> {
    let mut out = Vec::new();
    for kv in s.friends.prefix(u64_key(user.0)).take(limit) {
        let (k, v) = kv.into_inner().map_err(backend)?;
        out.push(Friend {
            user_id: UserId(read_u64(&k[8..])?),
            since_ms: read_u64(&v)?,
        });
    }
    Ok(out)
}

pub(super) fn friend_requests(s: &Spaces, user: UserId, limit: usize) -> Result<FriendRequests> {
    let list = |ks: &Keyspace| -> Result<Vec<FriendRequestView>> {
        let mut out = Vec::new();
        for kv in ks.prefix(u64_key(user.0)).take(limit) {
            let (_, v) = kv.into_inner().map_err(backend)?;
            out.push(decode(&v)?);
        }
        Ok(out)
    };
    Ok(FriendRequests {
        incoming: list(&s.requests_in)?,
        outgoing: list(&s.requests_out)?,
    })
}

pub(super) fn dedup(
    s: &Spaces,
    sender: UserId,
    client_msg_id: &str,
) -> Result<Option<DedupRecord>> {
    match s
        .dedup
        .get(dedup_key(sender, client_msg_id))
        .map_err(backend)?
    {
        Some(v) => unpack_dedup(&v).map(Some),
        None => Ok(None),
    }
}

pub(super) fn inbox(
    s: &Spaces,
    user: UserId,
    after: u64,
    limit: usize,
) -> Result<(Vec<InboxEntry>, u64)> {
    let head = last_seq(&s.inbox, &u64_key(user.0))?;
    let mut out = Vec::new();
    if after < head {
        let range = inbox_key(user, after.saturating_add(1))..=inbox_key(user, u64::MAX);
        for kv in s.inbox.range(range).take(limit) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            out.push(hydrate(
                s,
                read_u64(&k[8..])?,
                StoredEntry::from_bytes(&v)?,
            )?);
        }
    }
    Ok((out, head))
}

pub(super) fn messages(
    s: &Spaces,
    conv: ConvId,
    from: u64,
    to: u64,
    limit: usize,
    newest_first: bool,
) -> Result<Vec<Message>> {
    if from > to || limit == 0 {
        return Ok(Vec::new());
    }
    let iter = s.msgs.range(msg_key(conv, from)..=msg_key(conv, to));
    let mut out = Vec::new();
    let mut push = |kv: fjall::Guard| -> Result<()> {
        let (_, v) = kv.into_inner().map_err(backend)?;
        out.push(decode::<Message>(&v)?);
        Ok(())
    };
    if newest_first {
        for kv in iter.rev().take(limit) {
            push(kv)?;
        }
        out.reverse();
    } else {
        for kv in iter.take(limit) {
            push(kv)?;
        }
    }
    Ok(out)
}

pub(super) fn conv_head(s: &Spaces, conv: ConvId) -> Result<u64> {
    last_seq(&s.msgs, &conv.to_key())
}

pub(super) fn memberships(s: &Spaces, user: UserId, limit: usize) -> Result<Vec<Membership>> {
    // Held cursors first: the writer drops one only after fjall has it (soft.rs).
    let held = s.soft.of(user);
    let mut out = Vec::new();
    for kv in s.members.prefix(u64_key(user.0)).take(limit) {
        let (k, v) = kv.into_inner().map_err(backend)?;
        let conv = ConvId::from_key(&k[8..]).ok_or_else(|| backend("bad member key"))?;
        let held = held.iter().find(|(c, _)| *c == conv).map_or(0, |&(_, s)| s);
        out.push(Membership {
            conv,
            read_seq: read_u64(&v)?.max(held),
        });
    }
    Ok(out)
}

pub(super) fn read_cursor(s: &Spaces, user: UserId, conv: ConvId) -> Result<u64> {
    // Held cursor first: the writer drops one only after fjall has it (soft.rs).
    let held = s.soft.get(user, conv).unwrap_or(0);
    match s.members.get(member_key(user, conv)).map_err(backend)? {
        Some(v) => Ok(read_u64(&v)?.max(held)),
        None => Ok(held),
    }
}

pub(super) fn mention_count(
    s: &Spaces,
    user: UserId,
    conv: ConvId,
    after_seq: u64,
    cap: u64,
) -> Result<u64> {
    let from = after_seq.saturating_add(1);
    let mut prefix = member_key(user, conv);
    let mine = s
        .mentions
        .range(seq_key(&prefix, from)..=seq_key(&prefix, u64::MAX))
        .take(cap as usize)
        .count();
    prefix = conv.to_key().to_vec();
    let all = s
        .gmentions
        .range(seq_key(&prefix, from)..=seq_key(&prefix, u64::MAX))
        .take(cap as usize)
        .count();
    Ok(((mine + all) as u64).min(cap))
}

pub(super) fn group(s: &Spaces, id: GroupId) -> Result<Option<GroupRecord>> {
    get(&s.groups, &u64_key(id.0))
}

pub(super) fn group_member(
    s: &Spaces,
    group: GroupId,
    user: UserId,
) -> Result<Option<MemberRecord>> {
    get(&s.gmembers, &group_user_key(group, user))
}

pub(super) fn group_members(
    s: &Spaces,
    group: GroupId,
    after: Option<UserId>,
    limit: usize,
) -> Result<Vec<(UserId, MemberRecord)>> {
    let from = after.map_or(0, |u| u.0.saturating_add(1));
    let range = group_user_key(group, UserId(from))..=group_user_key(group, UserId(u64::MAX));
    let mut out = Vec::new();
    if after.is_some_and(|u| u.0 == u64::MAX) {
        return Ok(out);
    }
    for kv in s.gmembers.range(range).take(limit) {
        let (k, v) = kv.into_inner().map_err(backend)?;
        out.push((UserId(read_u64(&k[8..])?), decode(&v)?));
    }
    Ok(out)
}

pub(super) fn former_member(
    s: &Spaces,
    group: GroupId,
    user: UserId,
) -> Result<Option<(u64, u64)>> {
    match s.gleft.get(group_user_key(group, user)).map_err(backend)? {
        Some(v) if v.len() == 16 => Ok(Some((read_u64(&v[..8])?, read_u64(&v[8..])?))),
        Some(_) => Err(backend("bad former-member value")),
        None => Ok(None),
    }
}

pub(super) fn invite(s: &Spaces, group: GroupId, user: UserId) -> Result<Option<UserId>> {
    match s
        .invites
        .get(group_user_key(group, user))
        .map_err(backend)?
    {
        Some(v) => Ok(Some(UserId(read_u64(&v)?))),
        None => Ok(None),
    }
}

/// The head of a conversation as the user's list shows it: the conversation's, or for a
/// group they left, where they left; `None` for a group they were never a member of.
fn listed_head(s: &Spaces, user: UserId, conv: ConvId) -> Result<Option<u64>> {
    let head = conv_head(s, conv)?;
    let ConvId::Group(g) = conv else {
        return Ok(Some(head));
    };
    if group_member(s, g, user)?.is_some() {
        return Ok(Some(head));
    }
    Ok(former_member(s, g, user)?.map(|(_, left)| head.min(left)))
}

/// In process, the per-conversation reads cost no round trip: the same reads as one would
/// make for each membership, in turn.
pub(super) fn conversation_list(
    s: &Spaces,
    user: UserId,
    limit: usize,
) -> Result<Vec<ConversationRow>> {
    let members = memberships(s, user, limit)?;
    let mut out = Vec::with_capacity(members.len());
    for m in members {
        let Some(head) = listed_head(s, user, m.conv)? else {
            continue;
        };
        let group = match m.conv {
            ConvId::Group(g) => Some(g),
            ConvId::Direct(..) => None,
        };
        let last_message = messages(s, m.conv, head, head, 1, false)?.pop();
        let (name, unread_mentions) = match group {
            Some(g) => (
                self::group(s, g)?.map(|r| r.name),
                mention_count(s, user, m.conv, m.read_seq, LIST_MENTIONS_CAP)?,
            ),
            None => (None, 0),
        };
        out.push(ConversationRow {
            conv: m.conv,
            read_seq: m.read_seq,
            head,
            last_message,
            name,
            unread_mentions,
        });
    }
    Ok(out)
}

/// See `Store::unread_candidates`: the user's entries of `news`, then their group
/// memberships (one range: a group's conversation key starts with `g`), each group as
/// `conversation_list` shows it.
pub(super) fn unread_candidates(
    s: &Spaces,
    user: UserId,
    limit: usize,
) -> Result<Vec<(ConvId, u64, u64)>> {
    let mut out = Vec::new();
    for kv in s.news.prefix(u64_key(user.0)).take(limit) {
        let k = kv.key().map_err(backend)?;
        let conv = ConvId::from_key(&k[8..]).ok_or_else(|| backend("bad news key"))?;
        out.push((conv, conv_head(s, conv)?, read_cursor(s, user, conv)?));
    }
    let mut groups = u64_key(user.0).to_vec();
    groups.push(b'g');
    for kv in s.members.prefix(groups).take(limit) {
        let (k, v) = kv.into_inner().map_err(backend)?;
        let conv = ConvId::from_key(&k[8..]).ok_or_else(|| backend("bad member key"))?;
        if let Some(head) = listed_head(s, user, conv)? {
            out.push((conv, head, read_u64(&v)?));
        }
    }
    Ok(out)
}

pub(super) fn outbox(s: &Spaces, after: u64, limit: usize) -> Result<Vec<crate::OutboxRecord>> {
    let mut out = Vec::new();
    // From `after` on: what was removed before it is tombstones an iteration from the
    // start would walk over, more of them the longer the outbox has run.
    for kv in s
        .outbox
        .range(u64_key(after.saturating_add(1)).to_vec()..)
        .take(limit)
    {
        let (k, v) = kv.into_inner().map_err(backend)?;
        let event = match unpack_outbox_message(&v)? {
            Some(r) => outbox_message_event(s, &r)?,
            None => String::from_utf8(v.to_vec()).map_err(backend)?,
        };
        out.push(crate::OutboxRecord {
            seq: read_u64(&k)?,
            event,
        });
    }
    Ok(out)
}

/// The JSON of an event about a message kept by reference: the message as stored now
/// (its bytes are its JSON, put in as they are), so one recalled or deleted before its
/// event went out is told with its content already gone.
fn outbox_message_event(s: &Spaces, r: &OutboxMessageRef<'_>) -> Result<String> {
    let message = s.msgs.get(msg_key(r.conv, r.conv_seq)).map_err(backend)?;
    let message = match &message {
        Some(m) => Some(std::str::from_utf8(m).map_err(backend)?),
        None => None,
    };
    let head = crate::types::outbox_head(r.id, r.kind, r.at_ms);
    Ok(crate::types::outbox_with_message(&head, message))
}

pub(super) fn outbox_depth(s: &Spaces, after: u64) -> Result<u64> {
    counter_depth(s, OUTBOX_HEAD, after)
}

/// How far the counter under `head` in `meta` is beyond `after`.
pub(super) fn counter_depth(s: &Spaces, head: &[u8], after: u64) -> Result<u64> {
    let head = match s.meta.get(head).map_err(backend)? {
        Some(v) => read_u64(&v)?,
        None => 0,
    };
    Ok(head.saturating_sub(after))
}

pub(super) fn notices(s: &Spaces, after: u64, limit: usize) -> Result<Vec<crate::NoticeRecord>> {
    let mut out = Vec::new();
    // From `after` on, as `outbox` reads.
    for kv in s
        .notify
        .range(u64_key(after.saturating_add(1)).to_vec()..)
        .take(limit)
    {
        let (k, v) = kv.into_inner().map_err(backend)?;
        let mut rec: crate::NoticeRecord = decode(&v)?;
        rec.seq = read_u64(&k)?;
        out.push(rec);
    }
    Ok(out)
}

pub(super) fn setting(s: &Spaces, user: UserId, key: &str) -> Result<Option<String>> {
    match s.settings.get(setting_key(user, key)).map_err(backend)? {
        Some(v) => String::from_utf8(v.to_vec()).map(Some).map_err(backend),
        None => Ok(None),
    }
}

pub(super) fn settings(
    s: &Spaces,
    user: UserId,
    prefix: &str,
    limit: usize,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for kv in s.settings.prefix(setting_key(user, prefix)).take(limit) {
        let (k, v) = kv.into_inner().map_err(backend)?;
        let key = k.get(8..).unwrap_or_default();
        out.push((
            String::from_utf8(key.to_vec()).map_err(backend)?,
            String::from_utf8(v.to_vec()).map_err(backend)?,
        ));
    }
    Ok(out)
}

pub(super) fn dead_letters(s: &Spaces, after: u64, limit: usize) -> Result<Vec<crate::DeadLetter>> {
    let mut out = Vec::new();
    for kv in s
        .dead
        .range(u64_key(after.saturating_add(1)).to_vec()..)
        .take(limit)
    {
        let (k, v) = kv.into_inner().map_err(backend)?;
        let dead: serde_json::Value = decode(&v)?;
        out.push(crate::DeadLetter {
            id: read_u64(&k)?,
            event: dead["event"].as_str().unwrap_or_default().to_owned(),
            error: dead["error"].as_str().unwrap_or_default().to_owned(),
            at_ms: dead["at_ms"].as_u64().unwrap_or(0),
        });
    }
    Ok(out)
}
