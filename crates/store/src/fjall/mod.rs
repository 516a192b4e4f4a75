//! The embedded backend, on fjall (an LSM-tree; see docs/ARCHITECTURE.md for why).
//!
//! Every write goes through one writer thread. It takes whatever commits are waiting (up
//! to `store.max_batch`), applies them to one fjall write batch and makes that batch
//! durable with a single `fdatasync` — group commit — before it answers any of them.
//! Because one thread hands out every sequence number, no locks are needed and a sequence
//! can never be seen before it is durable. Reads go straight to fjall from the caller.
//!
//! ```text
//! mod.rs     the store handle and its options, opening (the writer and tick threads); the
//!            Store impl: reads call reads.rs, writes go to the writer
//! writer.rs  the writer thread: group commit, pacing, its caches, answering each request
//! tx.rs      one batch in the making: write batch, overlay, cached heads, member lists
//! commit.rs  a Commit's steps inside the batch (dedup, group check, message, inboxes)
//! ops.rs     what each Op does to the keyspaces; creating a user
//! reads.rs   every read
//! keys.rs    key layouts and the packed value layouts
//! soft.rs    read cursors moved by 1:1 sends, held in memory until written
//! tests.rs   the conformance suite on fjall, reopening, held cursors
//! ```

mod commit;
mod keys;
mod media;
mod ops;
mod reads;
mod soft;
#[cfg(test)]
mod tests;
mod tx;
mod writer;

use crate::{
    Commit, Committed, ConversationRow, DedupRecord, DeviceRecord, GroupRecord, MemberRecord,
    Membership, NewUser, Pair, Relation, Result, Store, StoreError, UserRecord,
};
use async_trait::async_trait;
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use keys::*;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use xinge_core::{ConvId, DeviceId, GroupId, UserId};
use xinge_proto::api::{Friend, FriendRequests, InboxEntry, Message};

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
    /// Events for the app's server, by their place; and those given up on.
    pub outbox: Keyspace,
    pub dead: Keyspace,
    /// Offline-push notices by their place (the notify queue).
    pub notify: Keyspace,
    /// Users' settings: `user ++ key` → value.
    pub settings: Keyspace,
    /// The 1:1 conversations that may hold unread messages for a user: `user ++ conv` →
    /// nothing (see `Store::unread`).
    pub news: Keyspace,
    /// Uploads, media and blob references (media.rs).
    pub media: Keyspace,
    /// Read cursors moved by sending in 1:1 conversations, not yet in `members`.
    pub soft: soft::SoftCursors,
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
    /// The store's threads, for `close` to wait on; taken by the first `close`.
    threads: Arc<std::sync::Mutex<Option<Threads>>>,
}

/// The writer thread, and the tick thread with the sender whose drop stops it.
struct Threads {
    writer: std::thread::JoinHandle<()>,
    tick: Option<(std::sync::mpsc::SyncSender<()>, std::thread::JoinHandle<()>)>,
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
    /// Each keyspace's memtable is flushed to a table at this size (`store.memtable_mib`).
    /// Fixed when a keyspace is created: an existing store keeps the size it was made with.
    pub memtable_bytes: u64,
    /// fjall's block cache, shared by the keyspaces (`store.cache_mib`).
    pub cache_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            node_id: 1,
            max_batch: 256,
            queue: 4096,
            commit_interval: std::time::Duration::from_millis(2),
            cursor_flush: std::time::Duration::from_secs(1),
            memtable_bytes: 64 << 20,
            cache_bytes: 256 << 20,
        }
    }
}

impl FjallStore {
    /// Opens (or creates) the store in `dir` and starts its writer thread. The thread ends
    /// when the last handle is dropped, or at [`FjallStore::close`].
    pub fn open(dir: &Path, opts: FjallOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(backend)?;
        let db = Database::builder(dir)
            .cache_size(opts.cache_bytes.max(1 << 20))
            .open()
            .map_err(backend)?;
        let memtable = opts.memtable_bytes.max(1 << 20);
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(memtable)
            })
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
            outbox: ks("outbox")?,
            dead: ks("dead")?,
            notify: ks("notify")?,
            settings: ks("settings")?,
            news: ks("news")?,
            media: ks("media")?,
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
        let writer = std::thread::Builder::new()
            .name("xinge-store-writer".into())
            .spawn(move || w.run(rx))
            .map_err(backend)?;
        // Wakes the writer while it holds cursors and no commit comes to carry them; the
        // writer decides whether a flush is due. The tick holds neither the store nor the
        // channel between ticks, so it keeps neither open; it ends when its stop sender is
        // dropped (by `close`, or with the last handle), or at the first tick after the
        // store is gone.
        let mut tick = None;
        if !opts.cursor_flush.is_zero() {
            let every = (opts.cursor_flush / 4).max(std::time::Duration::from_millis(10));
            let (spaces_w, writes_w) = (Arc::downgrade(&spaces), tx.downgrade());
            let (stop, stopped) = std::sync::mpsc::sync_channel::<()>(1);
            let thread = std::thread::Builder::new()
                .name("xinge-store-tick".into())
                .spawn(move || {
                    loop {
                        if let Err(std::sync::mpsc::RecvTimeoutError::Disconnected) =
                            stopped.recv_timeout(every)
                        {
                            return;
                        }
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
            tick = Some((stop, thread));
        }
        Ok(Self {
            spaces,
            writes: tx,
            threads: Arc::new(std::sync::Mutex::new(Some(Threads { writer, tick }))),
        })
    }

    /// Closes the store for every handle: the writer finishes the batch it is in, writes
    /// the read cursors it holds (as [`Store::seal`] does) and ends; writes through any
    /// handle fail with [`StoreError::Closed`] from then on. Returns once the writer and
    /// tick threads have ended and, if this was the last handle, fjall has released the
    /// directory, so that it can be opened again at once (a dropped store lets go of it
    /// some time later, on its writer thread). If clones of this handle are still alive,
    /// the directory stays open until the last is dropped and this returns
    /// `StoreError::Backend` saying so.
    pub async fn close(self) -> Result<()> {
        let sealed = match self.write(writer::Op::Close).await {
            Ok(_) | Err(StoreError::Closed) => Ok(()),
            Err(e) => Err(e),
        };
        let threads = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Self { spaces, writes, .. } = self;
        drop(writes);
        // Joining threads and dropping fjall (which joins its own workers and syncs its
        // journal) block: not on the runtime's threads.
        let released = tokio::task::spawn_blocking(move || {
            if let Some(Threads { writer, tick }) = threads {
                if let Some((stop, thread)) = tick {
                    drop(stop);
                    thread
                        .join()
                        .map_err(|_| backend("store tick thread panicked"))?;
                }
                writer
                    .join()
                    .map_err(|_| backend("store writer thread panicked"))?;
            }
            match Arc::into_inner(spaces) {
                Some(spaces) => {
                    drop(spaces);
                    Ok(())
                }
                None => Err(backend(
                    "store closed, but other handles still hold its directory open",
                )),
            }
        })
        .await
        .map_err(backend)?;
        sealed.and(released)
    }

    async fn write(&self, op: writer::Op) -> Result<writer::Out> {
        let (reply, rx) = oneshot::channel();
        self.writes
            .send(writer::Request { op, reply })
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
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
        reads::user(&self.spaces, id)
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        reads::user_by_name(&self.spaces, username)
    }

    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<UserRecord>> {
        reads::user_by_external_id(&self.spaces, external_id)
    }

    async fn set_display_name(&self, id: UserId, display_name: &str) -> Result<()> {
        self.write(writer::Op::SetName(id, display_name.to_owned()))
            .await
            .map(drop)
    }

    async fn put_device(
        &self,
        user: UserId,
        device: &DeviceId,
        token_id: u64,
        at_ms: u64,
    ) -> Result<()> {
        self.write(writer::Op::PutDevice(user, device.clone(), token_id, at_ms))
            .await
            .map(drop)
    }

    async fn devices(&self, user: UserId, limit: usize) -> Result<Vec<DeviceRecord>> {
        reads::devices(&self.spaces, user, limit)
    }

    async fn erase_user(
        &self,
        user: UserId,
        username: &str,
        display_name: &str,
        outbox: &[crate::OutboxEvent],
    ) -> Result<()> {
        let ended = reads::devices(&self.spaces, user, usize::MAX)?
            .into_iter()
            .map(|d| d.device)
            .collect();
        self.write(writer::Op::EraseUser {
            user,
            username: username.to_owned(),
            display_name: display_name.to_owned(),
            ended,
            outbox: outbox.to_vec(),
        })
        .await
        .map(drop)
    }

    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<crate::OutboxRecord>> {
        reads::outbox(&self.spaces, after, limit)
    }

    async fn outbox_done(&self, seqs: &[u64]) -> Result<()> {
        self.write(writer::Op::OutboxDone(seqs.to_vec()))
            .await
            .map(drop)
    }

    async fn outbox_depth(&self, after: u64) -> Result<u64> {
        reads::outbox_depth(&self.spaces, after)
    }

    async fn notices(&self, after: u64, limit: usize) -> Result<Vec<crate::NoticeRecord>> {
        reads::notices(&self.spaces, after, limit)
    }

    async fn notices_done(&self, seqs: &[u64]) -> Result<()> {
        self.write(writer::Op::NoticesDone(seqs.to_vec()))
            .await
            .map(drop)
    }

    async fn notices_depth(&self, after: u64) -> Result<u64> {
        reads::counter_depth(&self.spaces, NOTIFY_HEAD, after)
    }

    async fn setting(&self, user: UserId, key: &str) -> Result<Option<String>> {
        reads::setting(&self.spaces, user, key)
    }

    async fn settings(
        &self,
        user: UserId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        reads::settings(&self.spaces, user, prefix, limit)
    }

    async fn put_setting(&self, user: UserId, key: &str, value: Option<&str>) -> Result<()> {
        self.write(writer::Op::PutSetting(
            user,
            key.to_owned(),
            value.map(str::to_owned),
        ))
        .await
        .map(drop)
    }

    async fn dead_letter(
        &self,
        events: &[crate::OutboxRecord],
        error: &str,
        at_ms: u64,
    ) -> Result<()> {
        self.write(writer::Op::DeadLetter(
            events.to_vec(),
            error.to_owned(),
            at_ms,
        ))
        .await
        .map(drop)
    }

    async fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<crate::DeadLetter>> {
        reads::dead_letters(&self.spaces, after, limit)
    }

    async fn replay_dead_letter(&self, id: u64) -> Result<()> {
        self.write(writer::Op::Replay(id)).await.map(drop)
    }

    async fn set_banned(
        &self,
        user: UserId,
        banned: bool,
        outbox: &[crate::OutboxEvent],
    ) -> Result<()> {
        // As for a password change: the devices are read before the write.
        let ended = match banned {
            true => reads::devices(&self.spaces, user, usize::MAX)?
                .into_iter()
                .map(|d| d.device)
                .collect(),
            false => Vec::new(),
        };
        self.write(writer::Op::SetBanned(user, banned, ended, outbox.to_vec()))
            .await
            .map(drop)
    }

    async fn set_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        // The devices are read before the write: one that logs in between the two keeps
        // its new token, as if it had logged in just after the change (with the new
        // password, it would have had to).
        let ended = reads::devices(&self.spaces, user, usize::MAX)?
            .into_iter()
            .map(|d| d.device)
            .filter(|d| Some(d) != keep)
            .collect();
        self.write(writer::Op::SetPassword(
            user,
            password_hash.to_owned(),
            ended,
        ))
        .await
        .map(drop)
    }

    async fn device_token(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>> {
        reads::device_token(&self.spaces, user, device)
    }

    async fn remove_device(&self, user: UserId, device: &DeviceId) -> Result<()> {
        self.write(writer::Op::RemoveDevice(user, device.clone()))
            .await
            .map(drop)
    }

    async fn pair(&self, me: UserId, other: UserId) -> Result<Pair> {
        reads::pair(&self.spaces, me, other)
    }

    async fn relation(&self, me: UserId, other: UserId) -> Result<Relation> {
        reads::relation(&self.spaces, me, other)
    }

    async fn friends(&self, user: UserId, limit: usize) -> Result<Vec<Friend>> {
        reads::friends(&self.spaces, user, limit)
    }

    async fn friend_requests(&self, user: UserId, limit: usize) -> Result<FriendRequests> {
        reads::friend_requests(&self.spaces, user, limit)
    }

    async fn commit(&self, commit: Commit) -> Result<Committed> {
        match self.write(writer::Op::Commit(Box::new(commit))).await? {
            writer::Out::Committed(c) => Ok(*c),
            _ => Err(backend("unexpected writer answer")),
        }
    }

    async fn dedup(&self, sender: UserId, client_msg_id: &str) -> Result<Option<DedupRecord>> {
        reads::dedup(&self.spaces, sender, client_msg_id)
    }

    async fn inbox(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<InboxEntry>, u64)> {
        reads::inbox(&self.spaces, user, after, limit)
    }

    async fn messages(
        &self,
        conv: ConvId,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Message>> {
        reads::messages(&self.spaces, conv, from, to, limit, newest_first)
    }

    async fn conv_head(&self, conv: ConvId) -> Result<u64> {
        reads::conv_head(&self.spaces, conv)
    }

    async fn memberships(&self, user: UserId, limit: usize) -> Result<Vec<Membership>> {
        reads::memberships(&self.spaces, user, limit)
    }

    async fn mention_count(
        &self,
        user: UserId,
        conv: ConvId,
        after_seq: u64,
        cap: u64,
    ) -> Result<u64> {
        reads::mention_count(&self.spaces, user, conv, after_seq, cap)
    }

    async fn group(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        reads::group(&self.spaces, id)
    }

    async fn group_member(&self, group: GroupId, user: UserId) -> Result<Option<MemberRecord>> {
        reads::group_member(&self.spaces, group, user)
    }

    async fn group_members(
        &self,
        group: GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, MemberRecord)>> {
        reads::group_members(&self.spaces, group, after, limit)
    }

    async fn former_member(&self, group: GroupId, user: UserId) -> Result<Option<(u64, u64)>> {
        reads::former_member(&self.spaces, group, user)
    }

    async fn invite(&self, group: GroupId, user: UserId) -> Result<Option<UserId>> {
        reads::invite(&self.spaces, group, user)
    }

    async fn conversation_list(&self, user: UserId, limit: usize) -> Result<Vec<ConversationRow>> {
        reads::conversation_list(&self.spaces, user, limit)
    }

    async fn read_cursor(&self, user: UserId, conv: ConvId) -> Result<u64> {
        reads::read_cursor(&self.spaces, user, conv)
    }

    async fn unread_candidates(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<(ConvId, u64, u64)>> {
        reads::unread_candidates(&self.spaces, user, limit)
    }

    async fn seal(&self) -> Result<()> {
        self.write(writer::Op::Seal).await.map(|_| ())
    }
}
