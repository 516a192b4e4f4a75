//! The embedded backend, on fjall (an LSM-tree; see docs/ARCHITECTURE.md for why).
//!
//! Every write goes through one writer thread. It takes whatever commits are waiting (up
//! to `store.max_batch`), applies them to one fjall write batch and makes that batch
//! durable with a single `fdatasync` — group commit — before it answers any of them.
//! Because one thread hands out every sequence number, no locks are needed and a sequence
//! can never be seen before it is durable. Reads go straight to fjall from the caller.

mod keys;
mod soft;
mod writer;

use crate::{
    Commit, Committed, DedupRecord, GroupRecord, MemberRecord, Membership, NewUser, Pair, Relation,
    Result, Store, StoreError, UserRecord,
};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use keys::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use xinge_core::{ConvId, DeviceId, UserId};
use xinge_proto::api::{Event, Friend, FriendRequestView, FriendRequests, InboxEntry, Message};

pub(crate) struct Spaces {
    pub db: Database,
    pub meta: Keyspace,
    pub users: Keyspace,
    pub usernames: Keyspace,
    pub devices: Keyspace,
    pub friends: Keyspace,
    pub requests_in: Keyspace,
    pub requests_out: Keyspace,
    pub blocks: Keyspace,
    pub inbox: Keyspace,
    pub msgs: Keyspace,
    pub dedup: Keyspace,
    pub members: Keyspace,
    pub groups: Keyspace,
    pub gmembers: Keyspace,
    pub mentions: Keyspace,
    pub gmentions: Keyspace,
    pub invites: Keyspace,
    pub gleft: Keyspace,
    /// Read cursors moved by sending in 1:1 conversations, not yet in `members`.
    pub soft: soft::SoftCursors,
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
const PACKED: u8 = 0x01;

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

pub(crate) fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(crate) fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(backend)
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Our own types always serialise; an error here is a bug, not input.
    serde_json::to_vec(v).expect("store types serialise")
}

#[derive(Clone)]
pub struct FjallStore {
    spaces: Arc<Spaces>,
    writes: mpsc::Sender<writer::Request>,
}

#[derive(Clone, Debug)]
pub struct FjallOptions {
    /// Node id for message ids minted by this store.
    pub node_id: u16,
    pub max_batch: usize,
    pub queue: usize,
    /// When commits overlap, the least time between the starts of two durable writes
    /// (see `store.commit_interval_us`).
    pub commit_interval: std::time::Duration,
    /// How long a read cursor moved by a 1:1 send may stay in memory before the writer
    /// writes it (soft.rs); a tick checks four times as often. Zero: written with its
    /// message.
    pub cursor_flush: std::time::Duration,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            node_id: 1,
            max_batch: 256,
            queue: 4096,
            commit_interval: std::time::Duration::from_millis(2),
            cursor_flush: std::time::Duration::from_secs(1),
        }
    }
}

impl FjallStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread. The thread ends
    /// when the last handle is dropped.
    pub fn open(dir: &Path, opts: FjallOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::builder(dir).open().map_err(backend)?;
        let ks = |name: &str| {
            db.keyspace(name, KeyspaceCreateOptions::default)
                .map_err(backend)
        };
        let spaces = Arc::new(Spaces {
            meta: ks("meta")?,
            users: ks("users")?,
            usernames: ks("usernames")?,
            devices: ks("devices")?,
            friends: ks("friends")?,
            requests_in: ks("requests_in")?,
            requests_out: ks("requests_out")?,
            blocks: ks("blocks")?,
            inbox: ks("inbox")?,
            msgs: ks("msgs")?,
            dedup: ks("dedup")?,
            members: ks("members")?,
            groups: ks("groups")?,
            gmembers: ks("gmembers")?,
            mentions: ks("mentions")?,
            gmentions: ks("gmentions")?,
            invites: ks("invites")?,
            gleft: ks("gleft")?,
            soft: soft::SoftCursors::default(),
            db,
        });
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let w = writer::Writer::new(
            spaces.clone(),
            opts.node_id,
            opts.max_batch.max(1),
            opts.commit_interval,
            opts.cursor_flush,
        );
        std::thread::Builder::new()
            .name("xinge-store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(backend)?;
        // Wakes the writer while it holds cursors and no commit comes to carry them; the
        // writer decides whether a flush is due. The tick holds neither the store nor the
        // channel between ticks, so it keeps neither open; it ends at the first tick after
        // the store is gone.
        if !opts.cursor_flush.is_zero() {
            let every = (opts.cursor_flush / 4).max(std::time::Duration::from_millis(10));
            let (spaces_w, writes_w) = (Arc::downgrade(&spaces), tx.downgrade());
            std::thread::Builder::new()
                .name("xinge-store-tick".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(every);
                        let (Some(spaces), Some(writes)) = (spaces_w.upgrade(), writes_w.upgrade())
                        else {
                            return;
                        };
                        if spaces.soft.len() > 0 {
                            let (reply, _) = oneshot::channel();
                            let op = writer::Op::Tick;
                            // A full queue carries the held cursors with its own batches.
                            let _ = writes.try_send(writer::Request { op, reply });
                        }
                    }
                })
                .map_err(backend)?;
        }
        Ok(Self { spaces, writes: tx })
    }

    async fn write(&self, op: writer::Op) -> Result<writer::Out> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(writer::Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn get<T: for<'de> Deserialize<'de>>(ks: &Keyspace, key: &[u8]) -> Result<Option<T>> {
        match ks.get(key).map_err(backend)? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    pub(crate) fn hydrate(spaces: &Spaces, seq: u64, stored: StoredEntry) -> Result<InboxEntry> {
        let event = match stored.ev {
            StoredEvent::Other(ev) => ev,
            StoredEvent::Message { conv, conv_seq } => {
                let message: Message = Self::get(&spaces.msgs, &msg_key(conv, conv_seq))?
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
}

#[async_trait]
impl Store for FjallStore {
    async fn create_user(&self, new: NewUser) -> Result<UserRecord> {
        match self.write(writer::Op::CreateUser(new)).await? {
            writer::Out::User(u) => Ok(u),
            _ => Err(backend("unexpected writer answer")),
        }
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>> {
        Self::get(&self.spaces.users, &u64_key(id.0))
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        match self
            .spaces
            .usernames
            .get(username.as_bytes())
            .map_err(backend)?
        {
            Some(id) => self.user(UserId(read_u64(&id)?)).await,
            None => Ok(None),
        }
    }

    async fn set_display_name(&self, id: UserId, display_name: &str) -> Result<()> {
        self.write(writer::Op::SetName(id, display_name.to_owned()))
            .await
            .map(drop)
    }

    async fn put_device(&self, user: UserId, device: &DeviceId, token_id: u64) -> Result<()> {
        self.write(writer::Op::PutDevice(user, device.clone(), token_id))
            .await
            .map(drop)
    }

    async fn device_token(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>> {
        match self
            .spaces
            .devices
            .get(device_key(user, device))
            .map_err(backend)?
        {
            Some(v) => Ok(Some(read_u64(&v)?)),
            None => Ok(None),
        }
    }

    async fn remove_device(&self, user: UserId, device: &DeviceId) -> Result<()> {
        self.write(writer::Op::RemoveDevice(user, device.clone()))
            .await
            .map(drop)
    }

    async fn pair(&self, me: UserId, other: UserId) -> Result<Pair> {
        let s = &self.spaces;
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

    async fn relation(&self, me: UserId, other: UserId) -> Result<Relation> {
        let s = &self.spaces;
        let p = self.pair(me, other).await?;
        Ok(Relation {
            friends_since_ms: p.friends_since_ms,
            i_blocked: p.i_blocked,
            blocked_me: p.blocked_me,
            request_out: Self::get(&s.requests_out, &pair_key(me, other))?,
            request_in: Self::get(&s.requests_in, &pair_key(me, other))?,
        })
    }

    async fn friends(&self, user: UserId, limit: usize) -> Result<Vec<Friend>> {
        let mut out = Vec::new();
        for kv in self.spaces.friends.prefix(u64_key(user.0)).take(limit) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            out.push(Friend {
                user_id: UserId(read_u64(&k[8..])?),
                since_ms: read_u64(&v)?,
            });
        }
        Ok(out)
    }

    async fn friend_requests(&self, user: UserId, limit: usize) -> Result<FriendRequests> {
        let list = |ks: &Keyspace| -> Result<Vec<FriendRequestView>> {
            let mut out = Vec::new();
            for kv in ks.prefix(u64_key(user.0)).take(limit) {
                let (_, v) = kv.into_inner().map_err(backend)?;
                out.push(decode(&v)?);
            }
            Ok(out)
        };
        Ok(FriendRequests {
            incoming: list(&self.spaces.requests_in)?,
            outgoing: list(&self.spaces.requests_out)?,
        })
    }

    async fn commit(&self, commit: Commit) -> Result<Committed> {
        match self.write(writer::Op::Commit(Box::new(commit))).await? {
            writer::Out::Committed(c) => Ok(*c),
            _ => Err(backend("unexpected writer answer")),
        }
    }

    async fn dedup(&self, sender: UserId, client_msg_id: &str) -> Result<Option<DedupRecord>> {
        match self
            .spaces
            .dedup
            .get(dedup_key(sender, client_msg_id))
            .map_err(backend)?
        {
            Some(v) => unpack_dedup(&v).map(Some),
            None => Ok(None),
        }
    }

    async fn inbox(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<InboxEntry>, u64)> {
        let s = &self.spaces;
        let head = last_seq(&s.inbox, &u64_key(user.0))?;
        let mut out = Vec::new();
        if after < head {
            let range = inbox_key(user, after.saturating_add(1))..=inbox_key(user, u64::MAX);
            for kv in s.inbox.range(range).take(limit) {
                let (k, v) = kv.into_inner().map_err(backend)?;
                out.push(Self::hydrate(
                    s,
                    read_u64(&k[8..])?,
                    StoredEntry::from_bytes(&v)?,
                )?);
            }
        }
        Ok((out, head))
    }

    async fn messages(
        &self,
        conv: ConvId,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Message>> {
        if from > to || limit == 0 {
            return Ok(Vec::new());
        }
        let iter = self
            .spaces
            .msgs
            .range(msg_key(conv, from)..=msg_key(conv, to));
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

    async fn conv_head(&self, conv: ConvId) -> Result<u64> {
        last_seq(&self.spaces.msgs, &conv.to_key())
    }

    async fn memberships(&self, user: UserId, limit: usize) -> Result<Vec<Membership>> {
        // Held cursors first: the writer drops one only after fjall has it (soft.rs).
        let held = self.spaces.soft.of(user);
        let mut out = Vec::new();
        for kv in self.spaces.members.prefix(u64_key(user.0)).take(limit) {
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

    async fn mention_count(
        &self,
        user: UserId,
        conv: ConvId,
        after_seq: u64,
        cap: u64,
    ) -> Result<u64> {
        let s = &self.spaces;
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

    async fn group(&self, id: u64) -> Result<Option<GroupRecord>> {
        Self::get(&self.spaces.groups, &u64_key(id))
    }

    async fn group_member(&self, group: u64, user: UserId) -> Result<Option<MemberRecord>> {
        Self::get(&self.spaces.gmembers, &pair_key(UserId(group), user))
    }

    async fn group_members(
        &self,
        group: u64,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, MemberRecord)>> {
        let from = after.map_or(0, |u| u.0.saturating_add(1));
        let range =
            pair_key(UserId(group), UserId(from))..=pair_key(UserId(group), UserId(u64::MAX));
        let mut out = Vec::new();
        if after.is_some_and(|u| u.0 == u64::MAX) {
            return Ok(out);
        }
        for kv in self.spaces.gmembers.range(range).take(limit) {
            let (k, v) = kv.into_inner().map_err(backend)?;
            out.push((UserId(read_u64(&k[8..])?), decode(&v)?));
        }
        Ok(out)
    }

    async fn former_member(&self, group: u64, user: UserId) -> Result<Option<(u64, u64)>> {
        match self
            .spaces
            .gleft
            .get(pair_key(UserId(group), user))
            .map_err(backend)?
        {
            Some(v) if v.len() == 16 => Ok(Some((read_u64(&v[..8])?, read_u64(&v[8..])?))),
            Some(_) => Err(backend("bad former-member value")),
            None => Ok(None),
        }
    }

    async fn invite(&self, group: u64, user: UserId) -> Result<Option<UserId>> {
        match self
            .spaces
            .invites
            .get(pair_key(UserId(group), user))
            .map_err(backend)?
        {
            Some(v) => Ok(Some(UserId(read_u64(&v)?))),
            None => Ok(None),
        }
    }

    async fn read_cursor(&self, user: UserId, conv: ConvId) -> Result<u64> {
        // Held cursor first: the writer drops one only after fjall has it (soft.rs).
        let held = self.spaces.soft.get(user, conv).unwrap_or(0);
        match self
            .spaces
            .members
            .get(member_key(user, conv))
            .map_err(backend)?
        {
            Some(v) => Ok(read_u64(&v)?.max(held)),
            None => Ok(held),
        }
    }

    async fn seal(&self) -> Result<()> {
        self.write(writer::Op::Seal).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> FjallStore {
        FjallStore::open(dir, FjallOptions::default()).unwrap()
    }

    #[test]
    fn packed_values_read_back_and_json_ones_still_read() {
        let conv = ConvId::direct(UserId(7), UserId(3));
        let entry = StoredEntry {
            at_ms: 1_700_000_000_123,
            ev: StoredEvent::Message { conv, conv_seq: 42 },
        };
        for bytes in [entry.to_bytes(), encode(&entry)] {
            let back = StoredEntry::from_bytes(&bytes).unwrap();
            assert_eq!(back.at_ms, entry.at_ms);
            assert!(matches!(back.ev, StoredEvent::Message { conv: c, conv_seq: 42 } if c == conv));
        }
        assert_eq!(entry.to_bytes().len(), 34);
        let rec = DedupRecord {
            conv: ConvId::Group(9),
            conv_seq: 5,
            msg_id: xinge_core::MsgId(1 << 40),
            sender_seq: 77,
        };
        for bytes in [pack_dedup(&rec), encode(&rec)] {
            let back = unpack_dedup(&bytes).unwrap();
            assert_eq!(
                (back.conv, back.conv_seq, back.msg_id, back.sender_seq),
                (rec.conv, 5, rec.msg_id, 77)
            );
        }
        // A truncated packed value is an error, not a panic.
        assert!(StoredEntry::from_bytes(&entry.to_bytes()[..20]).is_err());
        assert!(unpack_dedup(&pack_dedup(&rec)[..41]).is_err());
        assert!(unpack_dedup(&[PACKED]).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite_passes_on_fjall() {
        let dir = tempfile::tempdir().unwrap();
        crate::conformance::run(&open(dir.path())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequences_continue_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = {
            let s = open(dir.path());
            crate::conformance::seed_chat(&s, 5).await
        };
        // The first store's writer thread ends when its handles are gone; fjall's lock is
        // released with the database, so give the thread a moment to drop it.
        let s = loop {
            match FjallStore::open(dir.path(), FjallOptions::default()) {
                Ok(s) => break s,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        let conv = ConvId::direct(a, b);
        assert_eq!(s.conv_head(conv).await.unwrap(), 5);
        let (_, head) = s.inbox(a, 0, 100).await.unwrap();
        assert_eq!(head, 5);
        // The cursor moves of the five sends were held, and written when the writer ended.
        assert_eq!(stored_cursor(&s, a, conv), 5);
        let c = crate::conformance::send(&s, a, b, "after-reopen").await;
        assert_eq!(c.message.unwrap().conv_seq, 6);
        assert_eq!(c.sender_seq, 6);
    }

    fn stored_cursor(s: &FjallStore, user: UserId, conv: ConvId) -> u64 {
        let v = s.spaces.members.get(member_key(user, conv)).unwrap();
        v.map_or(0, |v| read_u64(&v).unwrap())
    }

    fn open_holding(dir: &Path, cursor_flush: std::time::Duration) -> FjallStore {
        let opts = FjallOptions {
            cursor_flush,
            ..FjallOptions::default()
        };
        FjallStore::open(dir, opts).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cursors_moved_by_sending_are_held_and_never_go_back() {
        let dir = tempfile::tempdir().unwrap();
        // Held for an hour: nothing but the seal below writes them.
        let s = open_holding(dir.path(), std::time::Duration::from_secs(3600));
        let (a, b) = crate::conformance::seed_chat(&s, 0).await;
        let conv = ConvId::direct(a, b);
        crate::conformance::send(&s, a, b, "one").await;
        // Readers see the move at once; fjall does not hold it.
        assert_eq!(s.read_cursor(a, conv).await.unwrap(), 1);
        let listed = s.memberships(a, 10).await.unwrap();
        assert_eq!(listed.iter().find(|m| m.conv == conv).unwrap().read_seq, 1);
        assert_eq!(stored_cursor(&s, a, conv), 0);
        assert_eq!(s.spaces.soft.len(), 1);

        // B sends twice and A reads them: a read that moves the cursor is written at once.
        crate::conformance::send(&s, b, a, "two").await;
        crate::conformance::send(&s, b, a, "three").await;
        let read = |seq| Commit {
            ops: vec![crate::Op::AdvanceRead { user: a, conv, seq }],
            ..Commit::default()
        };
        s.commit(read(3)).await.unwrap();
        assert_eq!(stored_cursor(&s, a, conv), 3);
        // A's next send is held again, and a read behind it moves nothing.
        crate::conformance::send(&s, a, b, "four").await;
        assert_eq!(s.read_cursor(a, conv).await.unwrap(), 4);
        assert_eq!(stored_cursor(&s, a, conv), 3);
        s.commit(read(2)).await.unwrap();
        assert_eq!(s.read_cursor(a, conv).await.unwrap(), 4);

        // The seal writes what is held (A at 4, B at 3 from B's own sends)...
        s.seal().await.unwrap();
        assert_eq!(stored_cursor(&s, a, conv), 4);
        assert_eq!(stored_cursor(&s, b, conv), 3);
        assert_eq!(s.spaces.soft.len(), 0);
        assert_eq!(s.read_cursor(a, conv).await.unwrap(), 4);
        // ...and from then on a send writes its cursor with its message.
        crate::conformance::send(&s, b, a, "five").await;
        assert_eq!(stored_cursor(&s, b, conv), 5);
        assert_eq!(s.spaces.soft.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_tick_writes_held_cursors_when_no_commit_comes() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_holding(dir.path(), std::time::Duration::from_millis(100));
        let (a, b) = crate::conformance::seed_chat(&s, 1).await;
        let conv = ConvId::direct(a, b);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while stored_cursor(&s, a, conv) != 1 || s.spaces.soft.len() != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "held cursor never written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(s.read_cursor(a, conv).await.unwrap(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn with_holding_off_a_send_writes_its_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let s = open_holding(dir.path(), std::time::Duration::ZERO);
        let (a, b) = crate::conformance::seed_chat(&s, 2).await;
        assert_eq!(stored_cursor(&s, a, ConvId::direct(a, b)), 2);
        assert_eq!(s.spaces.soft.len(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_sends_still_write_the_cursor_with_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path());
        let a = crate::conformance::user(&s, "g").await;
        let gid = 4242;
        let create = Commit {
            ops: vec![
                crate::Op::CreateGroup(crate::conformance::new_group(gid, a, "g")),
                crate::Op::AddMember {
                    group: gid,
                    user: a,
                    role: xinge_proto::api::Role::Owner,
                },
            ],
            ..Commit::default()
        };
        s.commit(create).await.unwrap();
        let c = s
            .commit(crate::conformance::group_send(gid, a, "g1", 500))
            .await
            .unwrap();
        let seq = c.message.unwrap().conv_seq;
        assert_eq!(stored_cursor(&s, a, ConvId::Group(gid)), seq);
        assert_eq!(s.spaces.soft.len(), 0);
    }
}
