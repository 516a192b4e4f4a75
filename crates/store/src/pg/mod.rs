//! The PostgreSQL backend, for the distributed roles. The same contract as the embedded
//! store: a [`Commit`] is one transaction; sequence numbers come from a per-timeline head row
//! that the transaction locks (`INSERT … ON CONFLICT DO UPDATE … RETURNING`), so they are
//! continuous and never reused, and a transaction that does not commit assigned nothing
//! anyone saw. Locks are taken in one order — group row, conversation head, inbox heads by
//! ascending user id (conversation-list joins too) — and a deadlock or a lost race on a
//! unique key is retried (and counted: `xinge_store_retries_total{why}`).
//!
//! ```text
//! mod.rs     the store handle, its options and connection pool; the Store impl, one line
//!            per method, naming where each lives
//! schema.rs  migrations (00NN_*.sql), applied once each at connect
//! sql.rs     statement cache, error and integer conversions, row decoders
//! commit.rs  the commit: its transaction and lock order, `xinge_append`, the retry loop
//! ops.rs     what each Op does to the tables; account and device writes
//! reads.rs   every read
//! tests.rs   the conformance suite on PostgreSQL, the upgrade and deadlock tests
//! ```

mod commit;
mod media;
mod ops;
mod reads;
mod schema;
mod sql;
#[cfg(test)]
mod tests;

use crate::{
    Commit, Committed, ConversationRow, DedupRecord, DeviceRecord, GroupRecord, MemberRecord,
    Membership, NewUser, Pair, Relation, Result, Store, UserRecord,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sql::{Cached, backend, db};
use tokio_postgres::NoTls;
use xinge_core::idgen::IdGen;
use xinge_core::{ConvId, DeviceId, GroupId, UserId};
use xinge_proto::api::{Friend, FriendRequests, InboxEntry, Message};

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    ids: std::sync::Arc<IdGen>,
    /// Commits retried after PostgreSQL broke a deadlock (each had waited
    /// `deadlock_timeout`, 1 s by default, first): the lock order is meant to make this 0.
    deadlocks: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The connection holding the outbox's advisory lock while this process delivers it.
    outbox_lead: std::sync::Arc<tokio::sync::Mutex<Option<deadpool_postgres::Object>>>,
    /// The lock's key: one per schema.
    outbox_key: i64,
    /// The same for the notify queue.
    notify_lead: std::sync::Arc<tokio::sync::Mutex<Option<deadpool_postgres::Object>>>,
    notify_key: i64,
}

#[derive(Clone, Debug)]
pub struct PgOptions {
    /// e.g. `postgres://postgres@127.0.0.1/test`
    pub url: String,
    /// Schema holding the tables (created if missing).
    pub schema: String,
    pub pool_size: usize,
    pub node_id: u16,
}

impl PgOptions {
    /// The options the config asks for, if it names a PostgreSQL URL at all.
    pub fn from_config(cfg: &xinge_core::config::Config) -> Option<Self> {
        Some(Self {
            url: cfg.store.postgres_url.clone()?,
            schema: cfg.store.postgres_schema.clone(),
            pool_size: cfg.store.postgres_pool,
            node_id: cfg.server.node_id,
        })
    }
}

impl PgStore {
    /// Commits retried because PostgreSQL broke a deadlock they were in, since connecting.
    pub fn deadlocks(&self) -> u64 {
        self.deadlocks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Connects, creates the schema if needed and applies pending migrations.
    pub async fn connect(opts: &PgOptions) -> Result<Self> {
        if !opts
            .schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(backend("schema name must be [a-z0-9_]"));
        }
        let mut cfg: tokio_postgres::Config = opts.url.parse().map_err(db)?;
        cfg.options(format!("-c search_path={}", opts.schema));
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(opts.pool_size.max(1))
            .build()
            .map_err(backend)?;
        let store = Self {
            pool,
            ids: std::sync::Arc::new(IdGen::new(opts.node_id)),
            deadlocks: Default::default(),
            outbox_lead: Default::default(),
            outbox_key: lock_key("xinge-outbox:", &opts.schema),
            notify_lead: Default::default(),
            notify_key: lock_key("xinge-notify:", &opts.schema),
        };
        store.migrate(&opts.schema).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(backend)
    }
}

impl PgStore {
    /// Whether this process holds the advisory lock `key` (taken now if free), on a
    /// connection kept out of the pool in `held`.
    async fn lead(
        &self,
        held: &tokio::sync::Mutex<Option<deadpool_postgres::Object>>,
        key: i64,
    ) -> Result<bool> {
        let mut held = held.lock().await;
        if let Some(c) = held.as_ref() {
            if !c.is_closed() {
                return Ok(true);
            }
            *held = None;
        }
        let c = self.client().await?;
        let row = c
            .q_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(db)?;
        let got: bool = row.get(0);
        if got {
            *held = Some(c);
        }
        Ok(got)
    }

    /// A new snowflake id of this process (messages, outbox events).
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.next()
    }
}

/// The advisory lock key of a schema's queue (`what`: the outbox, the notify queue):
/// FNV-1a of the names (stable across processes and builds, unlike std's hasher).
fn lock_key(what: &str, schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in what.bytes().chain(schema.bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, new: NewUser) -> Result<UserRecord> {
        ops::create_user(self, new).await
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>> {
        reads::user(self, id).await
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        reads::user_by_name(self, username).await
    }

    async fn user_by_external_id(&self, external_id: &str) -> Result<Option<UserRecord>> {
        reads::user_by_external_id(self, external_id).await
    }

    async fn set_display_name(&self, id: UserId, display_name: &str) -> Result<()> {
        ops::set_display_name(self, id, display_name).await
    }

    async fn put_device(
        &self,
        user: UserId,
        device: &DeviceId,
        token_id: u64,
        at_ms: u64,
    ) -> Result<()> {
        ops::put_device(self, user, device, token_id, at_ms).await
    }

    async fn devices(&self, user: UserId, limit: usize) -> Result<Vec<DeviceRecord>> {
        reads::devices(self, user, limit).await
    }

    async fn erase_user(
        &self,
        user: UserId,
        username: &str,
        display_name: &str,
        outbox: &[crate::OutboxEvent],
    ) -> Result<()> {
        ops::erase_user(self, user, username, display_name, outbox).await
    }

    /// From the oldest, whatever `after` is (see the trait).
    async fn outbox(&self, _after: u64, limit: usize) -> Result<Vec<crate::OutboxRecord>> {
        ops::outbox(self, limit).await
    }

    async fn outbox_done(&self, seqs: &[u64]) -> Result<()> {
        ops::outbox_done(self, seqs).await
    }

    async fn outbox_depth(&self, _after: u64) -> Result<u64> {
        ops::outbox_depth(self).await
    }

    /// A session advisory lock on a connection kept out of the pool: one process of the
    /// deployment delivers; if it dies its session ends, the lock with it, and the next
    /// process to ask takes over.
    async fn lead_outbox(&self) -> Result<bool> {
        self.lead(&self.outbox_lead, self.outbox_key).await
    }

    async fn notices(&self, after: u64, limit: usize) -> Result<Vec<crate::NoticeRecord>> {
        ops::notices(self, after, limit).await
    }

    async fn notices_done(&self, seqs: &[u64]) -> Result<()> {
        ops::notices_done(self, seqs).await
    }

    async fn notices_depth(&self, _after: u64) -> Result<u64> {
        ops::notices_depth(self).await
    }

    /// As [`Store::lead_outbox`], with a lock of its own: the two may lead apart.
    async fn lead_notices(&self) -> Result<bool> {
        self.lead(&self.notify_lead, self.notify_key).await
    }

    async fn setting(&self, user: UserId, key: &str) -> Result<Option<String>> {
        ops::setting(self, user, key).await
    }

    async fn settings(
        &self,
        user: UserId,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, String)>> {
        ops::settings(self, user, prefix, limit).await
    }

    async fn put_setting(&self, user: UserId, key: &str, value: Option<&str>) -> Result<()> {
        ops::put_setting(self, user, key, value).await
    }

    async fn dead_letter(
        &self,
        events: &[crate::OutboxRecord],
        error: &str,
        at_ms: u64,
    ) -> Result<()> {
        ops::dead_letter(self, events, error, at_ms).await
    }

    async fn dead_letters(&self, after: u64, limit: usize) -> Result<Vec<crate::DeadLetter>> {
        ops::dead_letters(self, after, limit).await
    }

    async fn replay_dead_letter(&self, id: u64) -> Result<()> {
        ops::replay_dead_letter(self, id).await
    }

    async fn set_banned(
        &self,
        user: UserId,
        banned: bool,
        outbox: &[crate::OutboxEvent],
    ) -> Result<()> {
        ops::set_banned(self, user, banned, outbox).await
    }

    async fn set_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: Option<&DeviceId>,
    ) -> Result<()> {
        ops::set_password(self, user, password_hash, keep).await
    }

    async fn device_token(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>> {
        reads::device_token(self, user, device).await
    }

    async fn remove_device(&self, user: UserId, device: &DeviceId) -> Result<()> {
        ops::remove_device(self, user, device).await
    }

    async fn pair(&self, me: UserId, other: UserId) -> Result<Pair> {
        reads::pair(self, me, other).await
    }

    async fn relation(&self, me: UserId, other: UserId) -> Result<Relation> {
        reads::relation(self, me, other).await
    }

    async fn friends(&self, user: UserId, limit: usize) -> Result<Vec<Friend>> {
        reads::friends(self, user, limit).await
    }

    async fn friend_requests(&self, user: UserId, limit: usize) -> Result<FriendRequests> {
        reads::friend_requests(self, user, limit).await
    }

    async fn commit(&self, commit: Commit) -> Result<Committed> {
        commit::commit(self, commit).await
    }

    async fn dedup(&self, sender: UserId, client_msg_id: &str) -> Result<Option<DedupRecord>> {
        reads::dedup(self, sender, client_msg_id).await
    }

    async fn inbox(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<InboxEntry>, u64)> {
        reads::inbox(self, user, after, limit).await
    }

    async fn messages(
        &self,
        conv: ConvId,
        from: u64,
        to: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<Message>> {
        reads::messages(self, conv, from, to, limit, newest_first).await
    }

    async fn conv_head(&self, conv: ConvId) -> Result<u64> {
        reads::conv_head(self, conv).await
    }

    async fn memberships(&self, user: UserId, limit: usize) -> Result<Vec<Membership>> {
        reads::memberships(self, user, limit).await
    }

    async fn conversation_list(&self, user: UserId, limit: usize) -> Result<Vec<ConversationRow>> {
        reads::conversation_list(self, user, limit).await
    }

    async fn read_cursor(&self, user: UserId, conv: ConvId) -> Result<u64> {
        reads::read_cursor(self, user, conv).await
    }

    async fn unread_candidates(
        &self,
        user: UserId,
        limit: usize,
    ) -> Result<Vec<(ConvId, u64, u64)>> {
        reads::unread_candidates(self, user, limit).await
    }

    async fn mention_count(
        &self,
        user: UserId,
        conv: ConvId,
        after_seq: u64,
        cap: u64,
    ) -> Result<u64> {
        reads::mention_count(self, user, conv, after_seq, cap).await
    }

    async fn group(&self, id: GroupId) -> Result<Option<GroupRecord>> {
        reads::group(self, id).await
    }

    async fn group_member(&self, group: GroupId, user: UserId) -> Result<Option<MemberRecord>> {
        reads::group_member(self, group, user).await
    }

    async fn group_members(
        &self,
        group: GroupId,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, MemberRecord)>> {
        reads::group_members(self, group, after, limit).await
    }

    async fn former_member(&self, group: GroupId, user: UserId) -> Result<Option<(u64, u64)>> {
        reads::former_member(self, group, user).await
    }

    async fn invite(&self, group: GroupId, user: UserId) -> Result<Option<UserId>> {
        reads::invite(self, group, user).await
    }
}
