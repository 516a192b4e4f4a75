//! Key layouts, and the packed layouts of the values written with every message. Integers
//! are big-endian so that byte order is numeric order and a prefix scan walks a user's or a
//! conversation's entries in sequence.

use super::{backend, decode, encode};
use crate::{DedupRecord, Result};
use fjall::Keyspace;
use serde::{Deserialize, Serialize};
use xinge_core::{ConvId, DeviceId, GroupId, UserId};
use xinge_proto::api::{Event, Message};

pub(crate) fn u64_key(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn read_u64(b: &[u8]) -> Result<u64> {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| backend("short integer value"))
}

pub(crate) fn pair_key(a: UserId, b: UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&a.0.to_be_bytes());
    k.extend_from_slice(&b.0.to_be_bytes());
    k
}

/// A group's row about one user (membership, invitation, former membership): the same
/// 16-byte layout as a pair of users, group first, so one group's rows are one range.
pub(crate) fn group_user_key(group: GroupId, user: UserId) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&group.0.to_be_bytes());
    k.extend_from_slice(&user.0.to_be_bytes());
    k
}

pub(crate) fn device_key(user: UserId, device: &DeviceId) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + device.as_str().len());
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(device.as_str().as_bytes());
    k
}

pub(crate) fn dedup_key(user: UserId, client_msg_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + client_msg_id.len());
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(client_msg_id.as_bytes());
    k
}

pub(crate) fn inbox_key(user: UserId, seq: u64) -> Vec<u8> {
    pair_key(user, UserId(seq))
}

pub(crate) fn msg_key(conv: ConvId, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&conv.to_key());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub(crate) fn member_key(user: UserId, conv: ConvId) -> Vec<u8> {
    let mut k = Vec::with_capacity(25);
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(&conv.to_key());
    k
}

/// `prefix ++ seq`.
pub(crate) fn seq_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(prefix.len() + 8);
    k.extend_from_slice(prefix);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The last sequence under `prefix` in a keyspace whose keys are `prefix ++ seq(8)`.
pub(crate) fn last_seq(ks: &Keyspace, prefix: &[u8]) -> Result<u64> {
    match ks.prefix(prefix).next_back() {
        Some(kv) => {
            let k = kv.key().map_err(backend)?;
            read_u64(&k[prefix.len()..])
        }
        None => Ok(0),
    }
}

/// How an inbox entry is kept: messages by reference (the message lives once, in its
/// conversation), everything else inline.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredEntry {
    pub at_ms: u64,
    pub ev: StoredEvent,
}

#[derive(Serialize, Deserialize)]
pub(crate) enum StoredEvent {
    Message { conv: ConvId, conv_seq: u64 },
    Other(Event),
}

/// The first byte of a value in the fixed binary layouts below. JSON text never starts
/// with it, so a value is read by its first byte, and values written as JSON by earlier
/// versions still read.
pub(crate) const PACKED: u8 = 0x01;

impl StoredEntry {
    /// A message reference (nearly every inbox entry) as 34 fixed bytes — `PACKED`, at_ms,
    /// the conversation's key, conv_seq — instead of about 70 bytes of JSON: written for
    /// every recipient of every message, so its encoding is a visible part of a commit.
    /// Other events stay JSON.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        match &self.ev {
            StoredEvent::Message { conv, conv_seq } => {
                let mut v = Vec::with_capacity(34);
                v.push(PACKED);
                v.extend_from_slice(&self.at_ms.to_be_bytes());
                v.extend_from_slice(&conv.to_key());
                v.extend_from_slice(&conv_seq.to_be_bytes());
                v
            }
            StoredEvent::Other(_) => encode(self),
        }
    }

    pub(crate) fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.first() != Some(&PACKED) {
            return decode(b);
        }
        if b.len() != 34 {
            return Err(backend("bad packed inbox entry"));
        }
        let conv = ConvId::from_key(&b[9..26]).ok_or_else(|| backend("bad conversation key"))?;
        Ok(Self {
            at_ms: read_u64(&b[1..9])?,
            ev: StoredEvent::Message {
                conv,
                conv_seq: read_u64(&b[26..34])?,
            },
        })
    }
}

/// A dedup record as 42 fixed bytes (`PACKED`, conversation key, conv_seq, msg_id,
/// sender_seq): one is written with every message.
pub(crate) fn pack_dedup(r: &DedupRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(42);
    v.push(PACKED);
    v.extend_from_slice(&r.conv.to_key());
    v.extend_from_slice(&r.conv_seq.to_be_bytes());
    v.extend_from_slice(&r.msg_id.0.to_be_bytes());
    v.extend_from_slice(&r.sender_seq.to_be_bytes());
    v
}

pub(crate) fn unpack_dedup(b: &[u8]) -> Result<DedupRecord> {
    if b.first() != Some(&PACKED) {
        return decode(b);
    }
    if b.len() != 42 {
        return Err(backend("bad packed dedup record"));
    }
    Ok(DedupRecord {
        conv: ConvId::from_key(&b[1..18]).ok_or_else(|| backend("bad conversation key"))?,
        conv_seq: read_u64(&b[18..26])?,
        msg_id: xinge_core::MsgId(read_u64(&b[26..34])?),
        sender_seq: read_u64(&b[34..42])?,
    })
}

/// An outbox event about a commit's message, by reference: `PACKED`, the event id, its
/// time, the message's conversation key and conv_seq, then the event's type — some 50
/// bytes where the event's JSON would be the message's again (written with every message
/// while the after-events webhook is on). Read back into the event's JSON by
/// `reads::outbox`, from the message as stored then.
pub(crate) fn pack_outbox_message(id: u64, at_ms: u64, m: &Message, kind: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(42 + kind.len());
    v.push(PACKED);
    v.extend_from_slice(&id.to_be_bytes());
    v.extend_from_slice(&at_ms.to_be_bytes());
    v.extend_from_slice(&m.conv.to_key());
    v.extend_from_slice(&m.conv_seq.to_be_bytes());
    v.extend_from_slice(kind.as_bytes());
    v
}

/// What [`pack_outbox_message`] packed: id, time, conversation, conv_seq, type.
pub(crate) struct OutboxMessageRef<'a> {
    pub id: u64,
    pub at_ms: u64,
    pub conv: ConvId,
    pub conv_seq: u64,
    pub kind: &'a str,
}

/// `None` for an outbox value that is the event's JSON itself.
pub(crate) fn unpack_outbox_message(b: &[u8]) -> Result<Option<OutboxMessageRef<'_>>> {
    if b.first() != Some(&PACKED) {
        return Ok(None);
    }
    if b.len() < 42 {
        return Err(backend("bad packed outbox event"));
    }
    Ok(Some(OutboxMessageRef {
        id: read_u64(&b[1..9])?,
        at_ms: read_u64(&b[9..17])?,
        conv: ConvId::from_key(&b[17..34]).ok_or_else(|| backend("bad conversation key"))?,
        conv_seq: read_u64(&b[34..42])?,
        kind: std::str::from_utf8(&b[42..]).map_err(backend)?,
    }))
}

/// The `meta` key of the outbox's last place given out: places go on from it, never
/// reused, and the outbox's depth is read from it without walking the keyspace.
pub(crate) const OUTBOX_HEAD: &[u8] = b"outbox_head";

/// The `meta` key of the notify queue's last place given out (as [`OUTBOX_HEAD`]).
pub(crate) const NOTIFY_HEAD: &[u8] = b"notify_head";

/// A user's setting: `user ++ key`.
pub(crate) fn setting_key(user: UserId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&user.0.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

/// The `usernames` key of an external id: a zero byte first, which no username has.
pub(crate) fn external_key(external_id: &str) -> Vec<u8> {
    [&[0u8][..], external_id.as_bytes()].concat()
}

/// The `meta` key of the dead letters' last id (ids are never reused, so that the bound
/// removes the one `MAX_DEAD_LETTERS` older by key).
pub(crate) const DEAD_HEAD: &[u8] = b"dead_head";
