//! Storage behind one small trait, and the conformance suite every backend must pass.
//!
//! ```text
//! lib.rs          the Store trait: accounts, relations, the atomic Commit, timeline reads
//! types.rs        records and the Commit/Op vocabulary the IM layer writes with
//! fjall/          the embedded backend: one writer thread with group commit over fjall
//! pg/             the PostgreSQL backend (feature `postgres`): one transaction per commit
//!                 Both split along one seam (each mod.rs lists its files): what an Op does
//!                 is in ops.rs, a read in reads.rs, a commit's steps in commit.rs, the
//!                 backend's tests in tests.rs; a new Op or read is written in both files
//!                 of that name, and checked in conformance/.
//! conformance/    the suite (tests only); `conformance::run(&store)` is called once per
//!                 backend: accounts.rs, chat.rs, groups.rs, lists.rs hold its checks
//! ```
//! The IM layer decides *what* to write; a backend makes each [`Commit`] atomic and durable
//! and hands out the sequence numbers, so sequences never repeat or skip, even across a
//! crash: a commit that did not reach the disk assigned nothing that anyone saw.

#[cfg(test)]
pub mod conformance;
pub mod fjall;
mod media;
#[cfg(feature = "postgres")]
pub mod pg;
mod types;

pub use media::*;
pub use types::*;

use async_trait::async_trait;
use xinge_core::{ConvId, DeviceId, GroupId, UserId};
use xinge_proto::api::{Friend, FriendRequests, InboxEntry, Message};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique thing already exists (a username).
    #[error("already exists")]
    Conflict,
    #[error("not found")]
    NotFound,
    /// The backend failed; the message is for logs, never for clients.
    #[error("storage backend: {0}")]
    Backend(String),
    #[error("store is shutting down")]
    Closed,
    /// A condition checked atomically with the commit did not hold.
    #[error("refused: {0:?}")]
    Refused(Refusal),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The storage contract. Reads may run concurrently with each other and with commits;
/// commits are atomic and durable when they return `Ok`.
/// Dead letters kept at most (see [`Store::dead_letter`]).
pub const MAX_DEAD_LETTERS: u64 = 100_000;

#[async_trait]
pub trait Store: MediaStore + Send + Sync + 'static {
    // === accounts ===
    /// Creates a user with the next user id; `Conflict` if the username is taken.
    async fn create_user(&self, new: NewUser) -> Result<UserRecord>;
    async fn user(&self, id: UserId) -> Result<Option<UserRecord>>;
    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>>;
    /// The user the app knows by `external_id`.
    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<UserRecord>>;
    async fn set_display_name(&self, id: UserId, display_name: &str) -> Result<()>;
    /// Records the token id currently valid for a device, which logged in at `at_ms`
    /// (replacing an older one).
    async fn put_device(
        &self,
        user: UserId,
        device: &DeviceId,
        token_id: u64,
        at_ms: u64,
    ) -> Result<()>;
    async fn device_token(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>>;
    async fn remove_device(&self, user: UserId, device: &DeviceId) -> Result<()>;
    /// The user's devices that hold a valid token, at most `limit`, by device name.
    async fn devices(&self, user: UserId, limit: usize) -> Result<Vec<DeviceRecord>>;
    /// Erases the user's profile in one write: the username becomes `username` (the old
    /// one is free again), the display name `display_name`, no password, banned, every
    /// device removed. `NotFound` if there is no such user.
    async fn erase_user(
        &self,
        user: UserId,
        username: &str,
        display_name: &str,
        outbox: &[OutboxEvent],
    ) -> Result<()>;
    /// Bans (`true`) or unbans the user; a ban also removes every device of theirs in the
    /// same write (no token from before it outlives it). `NotFound` if there is no such
    /// user. `outbox`'s events are written with it (as with `erase_user`).
    async fn set_banned(&self, user: UserId, banned: bool, outbox: &[OutboxEvent]) -> Result<()>;
    /// Sets the user's password hash and removes every device of theirs but `keep`, in one
    /// write: no token from before the change outlives it (but `keep`'s). `NotFound` if
    /// there is no such user.
    async fn set_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: Option<&DeviceId>,
    ) -> Result<()>;

    // === relations ===
    /// `me`'s relation with `other`.
    async fn relation(&self, me: UserId, other: UserId) -> Result<Relation>;
    /// The part of `relation` that decides whether two users may message: friendship and
    /// blocks (cheaper: no friend requests).
    async fn pair(&self, me: UserId, other: UserId) -> Result<Pair>;
    async fn friends(&self, user: UserId, limit: usize) -> Result<Vec<Friend>>;
    async fn friend_requests(&self, user: UserId, limit: usize) -> Result<FriendRequests>;

    // === the write path ===
    /// Applies a commit atomically (see [`Commit`]).
    async fn commit(&self, commit: Commit) -> Result<Committed>;

    // === the outbox: events for the app's server ===
    /// The oldest `limit` events of the outbox placed after `after` (the last place the
    /// caller removed). A backend whose places may become visible out of order
    /// (PostgreSQL: a sequence drawn by concurrent transactions) reads from its oldest
    /// event whatever `after` is, so that a late one is not skipped; one that writes in
    /// place order (fjall's single writer) starts after `after`, so that it does not walk
    /// over what it removed.
    async fn outbox(&self, after: u64, limit: usize) -> Result<Vec<OutboxRecord>>;
    /// Removes delivered events.
    async fn outbox_done(&self, seqs: &[u64]) -> Result<()>;
    /// About how many events the outbox holds beyond `after` (see [`Store::outbox`]).
    async fn outbox_depth(&self, after: u64) -> Result<u64>;
    /// Whether this process is the one that delivers the outbox (several processes share
    /// a PostgreSQL outbox; one delivers, so its order holds). Asked again and again: a
    /// process whose lead was lost finds out, and another takes over.
    async fn lead_outbox(&self) -> Result<bool> {
        Ok(true)
    }
    /// Moves events out of the outbox into the dead letters, with why, in one write. At
    /// most [`MAX_DEAD_LETTERS`] are kept: past it the oldest go.
    async fn dead_letter(&self, events: &[OutboxRecord], error: &str, at_ms: u64) -> Result<()>;
    /// The dead letters, oldest first, at most `limit`, from id `after` on (exclusive).
    async fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<DeadLetter>>;
    /// Puts a dead letter back into the outbox (as its newest event); `NotFound` if there
    /// is none with that id.
    async fn replay_dead_letter(&self, id: u64) -> Result<()>;

    // === offline push ===
    /// The oldest `limit` notices of the notify queue placed after `after`. Unlike
    /// [`Store::outbox`], every backend starts after `after`: where places may become
    /// visible out of order (PostgreSQL), the reader waits a moment at a gap in the places
    /// before it reads on past it.
    async fn notices(&self, after: u64, limit: usize) -> Result<Vec<NoticeRecord>>;
    /// Removes notices (told, given up on, or dropped as the oldest of a full queue).
    async fn notices_done(&self, seqs: &[u64]) -> Result<()>;
    /// About how many notices the queue holds beyond `after`.
    async fn notices_depth(&self, after: u64) -> Result<u64>;
    /// Whether this process is the one that works the notify queue (as
    /// [`Store::lead_outbox`]).
    async fn lead_notices(&self) -> Result<bool> {
        Ok(true)
    }
    /// A user's setting under `key` (push registrations, conversation mutes,
    /// notification preferences: the IM layer owns the keys and the JSON values).
    async fn setting(&self, user: UserId, key: &str) -> Result<Option<String>>;
    /// A user's settings whose keys start with `prefix`, by key, at most `limit`.
    async fn settings(
        &self,
        user: UserId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>>;
    /// Sets (`Some`) or removes (`None`) a user's setting.
    async fn put_setting(&self, user: UserId, key: &str, value: Option<&str>) -> Result<()>;

    /// What a committed message with this (sender, client_msg_id) was, if any.
    async fn dedup(&self, sender: UserId, client_msg_id: &str) -> Result<Option<DedupRecord>>;

    /// Makes durable what the backend keeps behind, and keeps nothing behind from then on
    /// (writes go on working): the embedded store writes the read cursors that sending
    /// moves in 1:1 conversations about a second late (docs/ARCHITECTURE.md, "Read
    /// state"). For a clean shutdown.
    async fn seal(&self) -> Result<()> {
        Ok(())
    }

    // === timelines ===
    /// Inbox entries with seq > `after`, ascending, at most `limit`; and the inbox head.
    async fn inbox(&self, user: UserId, after: u64, limit: usize)
    -> Result<(Vec<InboxEntry>, u64)>;
    /// Messages of a conversation with `from <= conv_seq <= to`, ascending, at most `limit`
    /// (from the newest end when `newest_first`, still returned ascending).
    async fn messages(
        &self,
        conv: ConvId,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Message>>;
    /// The newest conv_seq of a conversation (0 when empty).
    async fn conv_head(&self, conv: ConvId) -> Result<u64>;
    /// The conversations a user takes part in, with their read cursor (unordered).
    async fn memberships(&self, user: UserId, limit: usize) -> Result<Vec<Membership>>;
    /// The user's conversation list, each with what a list shows of it: one row per
    /// membership of `memberships(user, limit)` (unordered, like it), except groups the
    /// user is no longer a member of and did not leave (no former-member record), which are
    /// left out. A backend answers it with a number of reads that does not grow with the
    /// number of conversations. See [`ConversationRow`].
    async fn conversation_list(&self, user: UserId, limit: usize) -> Result<Vec<ConversationRow>>;
    /// A member's read cursor in a conversation (0 if none).
    async fn read_cursor(&self, user: UserId, conv: ConvId) -> Result<u64>;
    /// Where the user may have unread messages, as `(conversation, head, read_seq)`: the
    /// 1:1 conversations of the set the commits keep (see [`Commit`], step 5) and the
    /// groups [`Store::conversation_list`] shows (with the head a former member sees), at
    /// most `limit` of each. The reads do not grow with the user's 1:1 conversations.
    async fn unread_candidates(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<(ConvId, u64, u64)>>;
    /// The user's unread messages, per conversation that has any (at most `limit` 1:1
    /// conversations and `limit` groups): the badge of a notification. The 1:1
    /// conversations found read are dropped from the set it reads, so that the set holds
    /// about those with unread messages.
    async fn unread(&self, user: UserId, limit: usize) -> Result<Vec<(ConvId, u64)>> {
        let rows = self.unread_candidates(user, limit).await?;
        let read: Vec<ConvId> = rows
            .iter()
            .filter(|(c, head, read)| matches!(c, ConvId::Direct(..)) && head <= read)
            .map(|r| r.0)
            .collect();
        if !read.is_empty() {
            self.commit(Commit {
                ops: vec![Op::ForgetNews { user, convs: read }],
                ..Commit::default()
            })
            .await?;
        }
        Ok(rows
            .into_iter()
            .filter(|(_, head, read)| head > read)
            .map(|(c, head, read)| (c, head - read))
            .collect())
    }
    /// Messages of `conv` after `after_seq` that mention `user` or everyone, counting at
    /// most `cap`.
    async fn mention_count(
        &self,
        user: UserId,
        conv: ConvId,
        after_seq: u64,
        cap: u64,
    ) -> Result<u64>;

    // === groups ===
    async fn group(&self, id: GroupId) -> Result<Option<GroupRecord>>;
    async fn group_member(&self, group: GroupId, user: UserId) -> Result<Option<MemberRecord>>;
    /// Members in user id order, after `after`, at most `limit`.
    async fn group_members(
        &self,
        group: GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, MemberRecord)>>;
    /// For a user removed from (or who left) a group: `(joined_seq, left_seq)`, the part of
    /// the timeline they were a member for.
    async fn former_member(&self, group: GroupId, user: UserId) -> Result<Option<(u64, u64)>>;
    /// Who invited `user` to `group`, if an invitation is pending.
    async fn invite(&self, group: GroupId, user: UserId) -> Result<Option<UserId>>;
}
