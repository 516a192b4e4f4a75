//! The single writer thread: it gathers requests into group-commit batches, paces them,
//! makes each durable with one fdatasync, keeps the caches later batches read through, and
//! answers every request once its batch is durable (the batch itself is tx.rs).

use super::keys::*;
use super::soft::MAX_SOFT;
use super::tx::{Map, Tx};
use super::{Spaces, decode, encode};
use crate::{Commit, Committed, NewUser, Result, StoreError, UserRecord};
use fjall::{PersistMode, Slice};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use xinge_core::idgen::IdGen;
use xinge_core::{DeviceId, GroupId, UserId};

pub(crate) enum Op {
    CreateUser(NewUser),
    SetName(UserId, String),
    /// A device's token id and when it logged in.
    PutDevice(UserId, DeviceId, u64, u64),
    /// A new password hash, and the devices whose tokens end with the old one.
    SetPassword(UserId, String, Vec<DeviceId>),
    /// Banned or not, the devices whose tokens a ban ends, and the events it writes.
    SetBanned(UserId, bool, Vec<DeviceId>, Vec<crate::OutboxEvent>),
    /// Delivered outbox events, by place.
    OutboxDone(Vec<u64>),
    /// Outbox events given up on: out of the outbox, into the dead letters, with why and
    /// when.
    DeadLetter(Vec<crate::OutboxRecord>, String, u64),
    /// A dead letter back into the outbox.
    Replay(u64),
    /// A user's profile erased (see `Store::erase_user`), and the devices that end.
    EraseUser {
        user: UserId,
        username: String,
        display_name: String,
        ended: Vec<DeviceId>,
        outbox: Vec<crate::OutboxEvent>,
    },
    RemoveDevice(UserId, DeviceId),
    /// Notices told or given up on, by place.
    NoticesDone(Vec<u64>),
    /// A user's setting set or removed.
    PutSetting(UserId, String, Option<String>),
    /// Uploads, media and blob references (media.rs).
    Media(super::media::MediaOp),
    Commit(Box<Commit>),
    /// Wakes the writer while it holds read cursors (the store's tick): it writes them
    /// if they are due.
    Tick,
    /// Write the held read cursors now and hold none from then on (`Store::seal`).
    Seal,
    /// Like `Seal`, then end the thread after this batch (`FjallStore::close`).
    Close,
}

pub(crate) enum Out {
    User(UserRecord),
    Unit,
    Committed(Box<Committed>),
    Media(Option<Box<crate::MediaRecord>>),
    Flag(bool),
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
    /// When fjall's own figures were last put into the metrics.
    engine_seen: Instant,
}

pub(super) type Lists = HashMap<GroupId, Arc<[UserId]>, foldhash::fast::RandomState>;

/// Member ids the writer's list cache holds at most, in all (8 bytes each).
const MAX_CACHED_LIST_IDS: usize = 4_000_000;

/// A durable write (the batch into fjall and its fdatasync) this slow is logged.
const SLOW_WRITE: Duration = Duration::from_millis(100);

/// Timelines whose head the writer remembers (about 100 bytes each).
const MAX_CACHED_HEADS: usize = 1_000_000;

/// Entries past which a batch's scratch maps are dropped rather than kept for the next
/// batch (a batch of large-group commits can grow them; most batches hold a few dozen).
const MAX_KEPT_SCRATCH: usize = 16_384;

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
            engine_seen: Instant::now(),
        }
    }

    /// fjall's background work, as metrics, at most once a second: the compactions
    /// completed and the time they took (counters: a window's share is the difference of
    /// two readings, as `xinge bench` reports it), those running, the memtable flushes
    /// queued and the bytes waiting in memtables. A batch and its `fdatasync` may wait
    /// behind these; the figures say when they were busy.
    fn engine_metrics(&mut self) {
        if self.engine_seen.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.engine_seen = Instant::now();
        let db = &self.spaces.db;
        metrics::counter!("xinge_store_compactions_total")
            .absolute(db.compactions_completed() as u64);
        metrics::counter!("xinge_store_compaction_ms_total")
            .absolute(db.time_compacting().as_millis() as u64);
        metrics::gauge!("xinge_store_compactions_active").set(db.active_compactions() as f64);
        metrics::gauge!("xinge_store_flushes_queued").set(db.outstanding_flushes() as f64);
        metrics::gauge!("xinge_store_write_buffer_bytes").set(db.write_buffer_size() as f64);
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
            let close = reqs.iter().any(|r| matches!(r.op, Op::Close));
            let seal = close || reqs.iter().any(|r| matches!(r.op, Op::Seal));
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
            if close {
                break;
            }
        }
        // Closed (the last handle is gone, or `close` asked): what is still held is written
        // before the thread ends. Requests still queued are dropped with the channel, and
        // their callers get `StoreError::Closed`.
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
                if matches!(r.op, Op::Seal | Op::Close) {
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
        self.engine_metrics();
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
            Op::CreateUser(new) => {
                let user = tx.create_user(new)?;
                tx.write_outbox(&self.ids, &new.outbox, new.created_at_ms, None, Some(&user))?;
                Ok(Out::User(user))
            }
            Op::SetName(id, name) => {
                let mut user = tx.user_rec(*id)?;
                user.display_name = std::mem::take(name);
                tx.put_user(&user);
                Ok(Out::Unit)
            }
            Op::PutDevice(user, device, token, at_ms) => {
                tx.put(
                    |s| &s.devices,
                    device_key(*user, device),
                    [u64_key(*token), u64_key(*at_ms)].concat(),
                );
                Ok(Out::Unit)
            }
            Op::SetPassword(id, hash, ended) => {
                let mut user = tx.user_rec(*id)?;
                user.password_hash = std::mem::take(hash);
                tx.put_user(&user);
                tx.remove_devices(*id, ended);
                Ok(Out::Unit)
            }
            Op::SetBanned(id, banned, ended, outbox) => {
                // Checked before anything is written: an op's writes stay in the batch
                // even when it answers an error.
                let mut user = tx.user_rec(*id)?;
                user.banned = *banned;
                tx.put_user(&user);
                tx.remove_devices(*id, ended);
                tx.write_outbox(&self.ids, outbox, xinge_core::now_ms(), None, None)?;
                Ok(Out::Unit)
            }
            Op::EraseUser {
                user: id,
                username,
                display_name,
                ended,
                outbox,
            } => {
                // Checked before anything is written (see SetBanned).
                let mut user = tx.user_rec(*id)?;
                if tx.get(|s| &s.usernames, username.as_bytes())?.is_some() {
                    return Err(StoreError::Conflict);
                }
                tx.delete(|s| &s.usernames, user.username.as_bytes().to_vec());
                tx.put(
                    |s| &s.usernames,
                    username.as_bytes().to_vec(),
                    u64_key(id.0).to_vec(),
                );
                if let Some(ext) = user.external_id.take() {
                    tx.delete(|s| &s.usernames, external_key(&ext));
                }
                user.username = std::mem::take(username);
                user.display_name = std::mem::take(display_name);
                user.password_hash = crate::NO_PASSWORD.to_owned();
                user.banned = true;
                tx.put_user(&user);
                tx.remove_devices(*id, ended);
                tx.write_outbox(&self.ids, outbox, xinge_core::now_ms(), None, None)?;
                Ok(Out::Unit)
            }
            Op::OutboxDone(seqs) => {
                for seq in seqs.iter() {
                    tx.delete(|s| &s.outbox, u64_key(*seq).to_vec());
                }
                Ok(Out::Unit)
            }
            Op::DeadLetter(events, error, at_ms) => {
                for ev in events.iter() {
                    tx.delete(|s| &s.outbox, u64_key(ev.seq).to_vec());
                    let id = tx.next_counter(DEAD_HEAD)?;
                    let dead =
                        serde_json::json!({"event": ev.event, "error": error, "at_ms": at_ms});
                    tx.put(|s| &s.dead, u64_key(id).to_vec(), encode(&dead));
                    // Bounded: the one `MAX_DEAD_LETTERS` older goes (a point delete; a
                    // replayed one is simply gone already).
                    if let Some(old) = id.checked_sub(crate::MAX_DEAD_LETTERS) {
                        tx.delete(|s| &s.dead, u64_key(old).to_vec());
                    }
                }
                Ok(Out::Unit)
            }
            Op::Replay(id) => {
                let key = u64_key(*id).to_vec();
                let Some(v) = tx.get(|s| &s.dead, &key)? else {
                    return Err(StoreError::NotFound);
                };
                let dead: serde_json::Value = decode(&v)?;
                let event = dead["event"].as_str().unwrap_or_default().to_owned();
                tx.delete(|s| &s.dead, key);
                let seq = tx.next_outbox_seq()?;
                tx.put(|s| &s.outbox, u64_key(seq).to_vec(), event.into_bytes());
                Ok(Out::Unit)
            }
            Op::RemoveDevice(user, device) => {
                tx.delete(|s| &s.devices, device_key(*user, device));
                Ok(Out::Unit)
            }
            Op::NoticesDone(seqs) => {
                for seq in seqs.iter() {
                    tx.delete(|s| &s.notify, u64_key(*seq).to_vec());
                }
                Ok(Out::Unit)
            }
            Op::PutSetting(user, key, value) => {
                let k = setting_key(*user, key);
                match value.take() {
                    Some(v) => tx.put(|s| &s.settings, k, v.into_bytes()),
                    None => tx.delete(|s| &s.settings, k),
                }
                Ok(Out::Unit)
            }
            Op::Media(op) => super::media::apply(tx, op),
            Op::Commit(c) => tx.commit(&self.ids, c).map(|c| Out::Committed(Box::new(c))),
            // The batch wrote the held cursors before its first request if they were due
            // or sealed (see `run`).
            Op::Tick | Op::Seal | Op::Close => Ok(Out::Unit),
        }
    }
}
