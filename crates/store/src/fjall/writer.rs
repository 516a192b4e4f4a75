//! The single writer: group commit and sequence assignment.

use super::keys::*;
use super::soft::MAX_SOFT;
use super::{Spaces, StoredEntry, StoredEvent, backend, decode, encode, pack_dedup, unpack_dedup};
use crate::{
    Commit, Committed, DedupRecord, GroupFanout, GroupRecord, MemberRecord, NewUser, Result,
    StoreError, UserRecord,
};
use fjall::{Keyspace, OwnedWriteBatch, PersistMode, Slice};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use xinge_core::idgen::IdGen;
use xinge_core::{ConvId, DeviceId, MsgId, UserId};
use xinge_proto::api::{InboxEntry, Message};

pub(crate) enum Op {
    CreateUser(NewUser),
    SetName(UserId, String),
    PutDevice(UserId, DeviceId, u64),
    RemoveDevice(UserId, DeviceId),
    Commit(Box<Commit>),
    /// Wakes the writer while it holds read cursors (the store's tick): it writes them
    /// if they are due.
    Tick,
    /// Write the held read cursors now and hold none from then on (`Store::seal`).
    Seal,
}

pub(crate) enum Out {
    User(UserRecord),
    Unit,
    Committed(Box<Committed>),
}

pub(crate) struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Result<Out>>,
}

pub(crate) struct Writer {
    spaces: Arc<Spaces>,
    ids: IdGen,
    max_batch: usize,
    /// Under overlapping commits, the least time from one durable write's start to the
    /// next's (`store.commit_interval_us`).
    min_interval: Duration,
    /// Last sequence of recently written timelines. The writer is the only writer, so the
    /// cache cannot go stale; it saves the reverse seek that finds a timeline's end (the
    /// largest cost of a commit without it). Cleared when full or when a batch fails.
    heads: Map<u64>,
    /// Read cursors and conversation memberships recently written or moved (every send
    /// moves the sender's cursor and checks both memberships; a 1:1 send's move may be
    /// held, soft.rs, and is here all the same). Same argument: only the writer writes
    /// them, so this cannot go stale. Cleared when full or when a batch fails.
    members: Map<Option<Slice>>,
    /// A batch's overlay and heads, kept between batches so that their tables are not
    /// grown again from nothing for every batch (see [`Tx`]).
    overlay: Map<Option<Slice>>,
    batch_heads: Map<u64>,
    /// Member lists of write fan-out groups, for the inbox entries of each message. Only
    /// the writer adds and removes members, so a list is dropped when a batch changes that
    /// group's membership and cannot otherwise go stale; cleared when it holds more than
    /// [`MAX_CACHED_LIST_IDS`] ids in all or when a batch fails. Reading the list (a
    /// prefix scan merged over the memtables and tables) was 15 % of the server's CPU in
    /// the `group` benchmark.
    lists: Lists,
    list_ids: usize,
    /// How long a cursor moved by a 1:1 send may be held (zero: never held).
    cursor_flush: Duration,
    /// Set by `Op::Seal`: cursors are written with their commit from then on.
    sealed: bool,
}

type Lists = HashMap<u64, Arc<[UserId]>, foldhash::fast::RandomState>;

/// Member ids the writer's list cache holds at most, in all (8 bytes each).
const MAX_CACHED_LIST_IDS: usize = 4_000_000;

/// The writer's maps are keyed by [`slot_key`]: the keyspace's slot, then the key. One flat
/// byte string, so that a lookup borrows a stack buffer instead of allocating a key, and
/// hashed with foldhash: these lookups are a large part of a commit's own cost.
type Map<V> = HashMap<Vec<u8>, V, foldhash::fast::RandomState>;

/// A durable write (the batch into fjall and its fdatasync) this slow is logged.
const SLOW_WRITE: Duration = Duration::from_millis(100);

/// Timelines whose head the writer remembers (about 100 bytes each).
const MAX_CACHED_HEADS: usize = 1_000_000;

/// Entries past which a batch's scratch maps are dropped rather than kept for the next
/// batch (a batch of large-group commits can grow them; most batches hold a few dozen).
const MAX_KEPT_SCRATCH: usize = 16_384;

/// Which keyspace an overlay entry belongs to (keyspaces are not hashable).
type Space = fn(&Spaces) -> &Keyspace;

/// Calls `f` with `slot ++ key`, built on the stack when it fits.
fn slot_key<R>(slot: u16, key: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; 96];
    let n = 2 + key.len();
    if n <= buf.len() {
        buf[..2].copy_from_slice(&slot.to_be_bytes());
        buf[2..n].copy_from_slice(key);
        f(&buf[..n])
    } else {
        let mut v = Vec::with_capacity(n);
        v.extend_from_slice(&slot.to_be_bytes());
        v.extend_from_slice(key);
        f(&v)
    }
}

fn owned_slot_key(slot: u16, key: &[u8]) -> Vec<u8> {
    slot_key(slot, key, <[u8]>::to_vec)
}

/// One group-commit batch in the making: the fjall batch plus an overlay of what it has
/// written so far that a later commit of the same batch may read (everything but inbox
/// entries and mention marks, see [`Tx::put_unread`]; and the cursor moves it holds
/// instead of writing, see [`Tx::advance_by_send`]), so later commits read their
/// predecessors' writes.
struct Tx<'a> {
    spaces: &'a Spaces,
    cached_heads: &'a Map<u64>,
    cached_members: &'a Map<Option<Slice>>,
    cached_lists: &'a Lists,
    batch: OwnedWriteBatch,
    overlay: Map<Option<Slice>>,
    heads: Map<u64>,
    /// Groups whose membership this batch changes: their lists are read, not cached.
    changed_groups: Vec<u64>,
    /// Lists this batch read from fjall, for the cache once the batch is durable.
    loaded: Lists,
    /// Whether 1:1 sends may hold their cursor move (not sealed, holding on, table not
    /// full), and how many cursors were held when the batch began.
    hold: bool,
    held: usize,
    /// Cursors this batch's 1:1 sends moved without writing them: held once it is durable.
    moved: Vec<(UserId, ConvId, u64)>,
}

impl Writer {
    pub fn new(
        spaces: Arc<Spaces>,
        node_id: u16,
        max_batch: usize,
        min_interval: Duration,
        cursor_flush: Duration,
    ) -> Self {
        Self {
            spaces,
            ids: IdGen::new(node_id),
            max_batch,
            min_interval,
            cursor_flush,
            sealed: false,
            heads: Map::default(),
            members: Map::default(),
            overlay: Map::default(),
            batch_heads: Map::default(),
            lists: Lists::default(),
            list_ids: 0,
        }
    }

    pub fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        let mut reqs = Vec::with_capacity(self.max_batch);
        let mut last_start = Instant::now();
        let mut last_flush = Instant::now();
        let mut last_len = 0;
        while let Some(first) = rx.blocking_recv() {
            // Commits overlap (the last batch carried more than one): let more of them
            // gather, so that they share one fdatasync, until `min_interval` after the
            // last batch began. A lone committer never waits.
            if last_len > 1 {
                let wait =
                    (last_start + self.min_interval).saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
            last_start = Instant::now();
            reqs.push(first);
            while reqs.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(r) => reqs.push(r),
                    Err(_) => break,
                }
            }
            let held = self.spaces.soft.len();
            let seal = reqs.iter().any(|r| matches!(r.op, Op::Seal));
            // Due a second after the table last was empty or written.
            if held == 0 {
                last_flush = Instant::now();
            }
            let flush = seal
                || (held > 0
                    && (held >= MAX_SOFT / 2 || last_flush.elapsed() >= self.cursor_flush));
            if flush {
                last_flush = Instant::now();
            }
            // Sealed from this batch on: its own sends write their cursor too.
            self.sealed |= seal;
            last_len = reqs.len();
            self.batch(&mut reqs, flush);
        }
        // Closed: the last handle is gone. What is still held is written before the
        // thread ends.
        if self.spaces.soft.len() > 0 {
            self.batch(&mut reqs, true);
        }
    }

    /// Applies `reqs` as one durable batch (with the held cursors first when `flush`), and
    /// answers them.
    fn batch(&mut self, reqs: &mut Vec<Request>, flush: bool) {
        let mut tx = Tx {
            spaces: &self.spaces,
            cached_heads: &self.heads,
            cached_members: &self.members,
            cached_lists: &self.lists,
            batch: self
                .spaces
                .db
                .batch()
                .durability(Some(PersistMode::SyncData)),
            overlay: std::mem::take(&mut self.overlay),
            heads: std::mem::take(&mut self.batch_heads),
            changed_groups: Vec::new(),
            loaded: Lists::default(),
            hold: !self.sealed && !self.cursor_flush.is_zero(),
            held: self.spaces.soft.len(),
            moved: Vec::new(),
        };
        let (flushed, flush_failed) = if flush {
            match tx.flush_cursors() {
                Ok(written) => (written, None),
                Err(e) => {
                    tracing::warn!(error = %e, "held read cursors not written this time");
                    (Vec::new(), Some(e))
                }
            }
        } else {
            (Vec::new(), None)
        };
        let mut outs: Vec<Result<Out>> = reqs
            .iter_mut()
            .map(|r| self.apply(&mut tx, &mut r.op))
            .collect();
        if let Some(e) = flush_failed {
            // A seal answers that everything held is written: not so this time.
            for (r, out) in reqs.iter().zip(outs.iter_mut()) {
                if matches!(r.op, Op::Seal) {
                    *out = Err(StoreError::Backend(e.to_string()));
                }
            }
        }
        let members_slot = tx.slot(|s| &s.members);
        let Tx {
            batch,
            mut heads,
            mut overlay,
            changed_groups,
            loaded,
            moved,
            ..
        } = tx;
        metrics::histogram!("xinge_store_batch_commits").record(reqs.len() as f64);
        let began = Instant::now();
        let committed = batch.commit();
        let took = began.elapsed();
        metrics::histogram!("xinge_store_write_seconds").record(took.as_secs_f64());
        if took >= SLOW_WRITE {
            // Every commit of the batch waited this long for its answer.
            metrics::counter!("xinge_store_slow_writes_total").increment(1);
            tracing::warn!(
                ms = took.as_millis() as u64,
                commits = reqs.len(),
                "slow durable write"
            );
        }
        if committed.is_ok() {
            // Raised before the answers go out, so that a reader who has an answer sees
            // the cursor it moved; dropped only for what fjall now holds.
            self.spaces.soft.raise(&moved);
            self.spaces.soft.forget(&flushed);
            if self.heads.len() + heads.len() > MAX_CACHED_HEADS {
                self.heads.clear();
            }
            self.heads.extend(heads.drain());
            if self.members.len() + overlay.len() > MAX_CACHED_HEADS {
                self.members.clear();
            }
            let members_slot = members_slot.to_be_bytes();
            let members = overlay
                .drain()
                .filter(|(k, _)| k.starts_with(&members_slot));
            self.members.extend(members);
            for g in changed_groups {
                if let Some(gone) = self.lists.remove(&g) {
                    self.list_ids -= gone.len();
                }
            }
            for (g, ids) in loaded {
                if self.list_ids + ids.len() > MAX_CACHED_LIST_IDS {
                    self.lists.clear();
                    self.list_ids = 0;
                }
                self.list_ids += ids.len();
                if let Some(old) = self.lists.insert(g, ids) {
                    self.list_ids -= old.len();
                }
            }
        } else {
            self.heads.clear();
            self.members.clear();
            self.lists.clear();
            self.list_ids = 0;
            heads.clear();
            overlay.clear();
        }
        if heads.capacity() <= MAX_KEPT_SCRATCH {
            self.batch_heads = heads;
        }
        if overlay.capacity() <= MAX_KEPT_SCRATCH {
            self.overlay = overlay;
        }
        for (req, out) in reqs.drain(..).zip(outs) {
            let out = match &committed {
                Ok(()) => out,
                Err(e) => {
                    tracing::error!(error = %e, "store batch commit failed");
                    Err(StoreError::Backend(e.to_string()))
                }
            };
            let _ = req.reply.send(out);
        }
    }

    fn apply(&self, tx: &mut Tx<'_>, op: &mut Op) -> Result<Out> {
        match op {
            Op::CreateUser(new) => tx.create_user(new).map(Out::User),
            Op::SetName(id, name) => {
                let key = u64_key(id.0);
                let mut user: UserRecord = match tx.get(|s| &s.users, &key)? {
                    Some(v) => decode(&v)?,
                    None => return Err(StoreError::NotFound),
                };
                user.display_name = std::mem::take(name);
                tx.put(|s| &s.users, key.to_vec(), encode(&user));
                Ok(Out::Unit)
            }
            Op::PutDevice(user, device, token) => {
                tx.put(
                    |s| &s.devices,
                    device_key(*user, device),
                    u64_key(*token).to_vec(),
                );
                Ok(Out::Unit)
            }
            Op::RemoveDevice(user, device) => {
                tx.delete(|s| &s.devices, device_key(*user, device));
                Ok(Out::Unit)
            }
            Op::Commit(c) => tx.commit(&self.ids, c).map(|c| Out::Committed(Box::new(c))),
            // The batch wrote the held cursors before its first request if they were due
            // or sealed (see `run`).
            Op::Tick | Op::Seal => Ok(Out::Unit),
        }
    }
}

// === impl Tx ===

impl Tx<'_> {
    /// The keyspace's place in `Spaces`: unique per keyspace, and small.
    fn slot(&self, space: Space) -> u16 {
        let at = space(self.spaces) as *const Keyspace as usize;
        (at - self.spaces as *const Spaces as usize) as u16
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Slice>> {
        let slot = self.slot(space);
        let members = slot == self.slot(|s| &s.members);
        let known = slot_key(slot, key, |k| {
            self.overlay
                .get(k)
                .or_else(|| members.then(|| self.cached_members.get(k)).flatten())
                .cloned()
        });
        match known {
            Some(v) => Ok(v),
            None => space(self.spaces).get(key).map_err(backend),
        }
    }

    fn put(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        // A `Slice` is shared, not copied, between the batch and the overlay.
        let value = Slice::from(value);
        let slot = owned_slot_key(self.slot(space), &key);
        self.batch.insert(space(self.spaces), key, value.clone());
        self.overlay.insert(slot, Some(value));
    }

    /// A write that no later commit of the batch reads back (inbox entries and mention
    /// marks: sequences come from `heads`, not from reading the entries), so it is not
    /// recorded in the overlay.
    fn put_unread(&mut self, space: Space, key: Vec<u8>, value: Vec<u8>) {
        self.batch.insert(space(self.spaces), key, value);
    }

    fn delete(&mut self, space: Space, key: Vec<u8>) {
        let slot = owned_slot_key(self.slot(space), &key);
        self.batch.remove(space(self.spaces), key);
        self.overlay.insert(slot, None);
    }

    /// The next sequence under `prefix` (keys `prefix ++ seq`), counting this batch's
    /// earlier appends.
    fn next_seq(&mut self, space: Space, prefix: &[u8]) -> Result<u64> {
        let next = self.head(space, prefix)? + 1;
        let slot = self.slot(space);
        slot_key(slot, prefix, |k| match self.heads.get_mut(k) {
            Some(v) => *v = next,
            None => {
                self.heads.insert(k.to_vec(), next);
            }
        });
        Ok(next)
    }

    /// The last sequence under `prefix`, counting this batch's appends.
    fn head(&self, space: Space, prefix: &[u8]) -> Result<u64> {
        let known = slot_key(self.slot(space), prefix, |k| {
            self.heads
                .get(k)
                .or_else(|| self.cached_heads.get(k))
                .copied()
        });
        match known {
            Some(v) => Ok(v),
            None => last_seq(space(self.spaces), prefix),
        }
    }

    fn group_rec(&self, id: u64) -> Result<Option<GroupRecord>> {
        self.get(|s| &s.groups, &u64_key(id))?
            .map(|v| decode(&v))
            .transpose()
    }

    fn member_rec(&self, group: u64, user: UserId) -> Result<Option<MemberRecord>> {
        self.get(|s| &s.gmembers, &pair_key(UserId(group), user))?
            .map(|v| decode(&v))
            .transpose()
    }

    /// Every member of a group, counting this batch's adds and removes. The list of a group
    /// whose membership no commit of this batch changes comes from the writer's cache.
    fn member_ids(&mut self, group: u64) -> Result<Arc<[UserId]>> {
        let changed = self.changed_groups.contains(&group);
        if !changed
            && let Some(ids) = self
                .cached_lists
                .get(&group)
                .or_else(|| self.loaded.get(&group))
        {
            return Ok(ids.clone());
        }
        let prefix = u64_key(group);
        let mut ids = std::collections::BTreeSet::new();
        for kv in self.spaces.gmembers.prefix(prefix) {
            let k = kv.key().map_err(backend)?;
            ids.insert(read_u64(&k[8..])?);
        }
        let within = owned_slot_key(self.slot(|s| &s.gmembers), &prefix);
        for (k, v) in &self.overlay {
            if k.starts_with(&within) {
                let uid = read_u64(&k[within.len()..])?;
                if v.is_some() {
                    ids.insert(uid);
                } else {
                    ids.remove(&uid);
                }
            }
        }
        let ids: Arc<[UserId]> = ids.into_iter().map(UserId).collect();
        if !changed {
            self.loaded.insert(group, ids.clone());
        }
        Ok(ids)
    }

    /// Notes that this batch changes `group`'s membership: its list is read afresh for the
    /// rest of the batch and dropped from the cache when the batch is durable.
    fn membership_changes(&mut self, group: u64) {
        if !self.changed_groups.contains(&group) {
            self.changed_groups.push(group);
        }
        self.loaded.remove(&group);
    }

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

    fn create_user(&mut self, new: &NewUser) -> Result<UserRecord> {
        if self
            .get(|s| &s.usernames, new.username.as_bytes())?
            .is_some()
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
        };
        self.put(|s| &s.meta, b"next_user".to_vec(), u64_key(id + 1).to_vec());
        self.put(
            |s| &s.usernames,
            new.username.as_bytes().to_vec(),
            u64_key(id).to_vec(),
        );
        self.put(|s| &s.users, u64_key(id).to_vec(), encode(&user));
        Ok(user)
    }

    /// A read cursor as this batch sees it: the batch's own moves, the writer's cache, else
    /// the larger of fjall's and a held one (soft.rs). `None`: no membership.
    fn cursor(&self, user: UserId, conv: ConvId) -> Result<Option<u64>> {
        let key = member_key(user, conv);
        let known = slot_key(self.slot(|s| &s.members), &key, |k| {
            self.overlay
                .get(k)
                .or_else(|| self.cached_members.get(k))
                .cloned()
        });
        if let Some(v) = known {
            return v.map(|v| read_u64(&v)).transpose();
        }
        let held = self.spaces.soft.get(user, conv);
        match self.spaces.members.get(&key).map_err(backend)? {
            Some(v) => Ok(Some(read_u64(&v)?.max(held.unwrap_or(0)))),
            None => Ok(held),
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

    /// Writes every held cursor (as the batch sees it, so never below a later explicit
    /// read) and returns what it wrote, for `SoftCursors::forget` once that is durable.
    fn flush_cursors(&mut self) -> Result<Vec<(UserId, ConvId, u64)>> {
        let mut written = self.spaces.soft.all();
        for (user, conv, seq) in &mut written {
            *seq = self.cursor(*user, *conv)?.unwrap_or(0).max(*seq);
            let key = member_key(*user, *conv);
            self.put(|s| &s.members, key, u64_key(*seq).to_vec());
        }
        Ok(written)
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

    fn commit(&mut self, ids: &IdGen, c: &mut Commit) -> Result<Committed> {
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

    fn op(&mut self, op: crate::Op) -> Result<()> {
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
                        self.put(|s| &s.gmembers, pair_key(UserId(g), user), encode(&m));
                    }
                }
            }
            Op::CreateGroup(rec) => {
                self.put(|s| &s.groups, u64_key(rec.id).to_vec(), encode(&rec));
            }
            Op::UpdateGroup { group, patch } => {
                let Some(mut rec) = self.group_rec(group)? else {
                    return Ok(());
                };
                patch.apply(&mut rec);
                self.put(|s| &s.groups, u64_key(group).to_vec(), encode(&rec));
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
                self.put(|s| &s.gmembers, pair_key(UserId(group), user), encode(&m));
                self.put(
                    |s| &s.members,
                    member_key(user, conv),
                    u64_key(head).to_vec(),
                );
                self.delete(|s| &s.invites, pair_key(UserId(group), user));
                self.delete(|s| &s.gleft, pair_key(UserId(group), user));
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
                self.put(|s| &s.gleft, pair_key(UserId(group), user), span);
                self.delete(|s| &s.gmembers, pair_key(UserId(group), user));
                self.delete(|s| &s.members, member_key(user, ConvId::Group(group)));
                self.count_members(group, -1)?;
            }
            Op::SetRole { group, user, role } => {
                if let Some(mut m) = self.member_rec(group, user)? {
                    m.role = role;
                    self.put(|s| &s.gmembers, pair_key(UserId(group), user), encode(&m));
                }
            }
            Op::SetMuted { group, user, muted } => {
                if let Some(mut m) = self.member_rec(group, user)? {
                    m.muted = muted;
                    self.put(|s| &s.gmembers, pair_key(UserId(group), user), encode(&m));
                }
            }
            Op::PutInvite { group, user, by } => {
                self.put(
                    |s| &s.invites,
                    pair_key(UserId(group), user),
                    u64_key(by.0).to_vec(),
                );
            }
            Op::DeleteInvite { group, user } => {
                self.delete(|s| &s.invites, pair_key(UserId(group), user));
            }
        }
        Ok(())
    }

    fn count_members(&mut self, group: u64, delta: i64) -> Result<()> {
        if let Some(mut rec) = self.group_rec(group)? {
            rec.member_count = rec.member_count.saturating_add_signed(delta);
            self.put(|s| &s.groups, u64_key(group).to_vec(), encode(&rec));
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
