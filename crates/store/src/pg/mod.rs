//! The PostgreSQL backend, for the distributed roles. The same contract as the embedded
//! store: a [`Commit`] is one transaction; sequence numbers come from a per-timeline head row
//! that the transaction locks (`INSERT … ON CONFLICT DO UPDATE … RETURNING`), so they are
//! continuous and never reused, and a transaction that does not commit assigned nothing
//! anyone saw. Locks are taken in one order — group row, conversation head, inbox heads by
//! ascending user id (conversation-list joins too) — and a deadlock or a lost race on a
//! unique key is retried (and counted: `xinge_store_retries_total{why}`).

use crate::{
    Commit, Committed, GroupRecord, MemberRecord, Membership, NewMessage, NewUser, Op, Pair,
    Relation, Result, Store, StoreError, UserRecord,
};
use async_trait::async_trait;
use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod};
use serde::de::DeserializeOwned;
use tokio_postgres::types::{Json, ToSql};
use tokio_postgres::{NoTls, Row};
use xinge_core::idgen::IdGen;
use xinge_core::{ConvId, DeviceId, MsgId, UserId};
use xinge_proto::api::{
    Event, Friend, FriendRequestView, FriendRequests, InboxEntry, Message, Role,
};

/// Versioned migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("0001_init.sql")),
    (2, include_str!("0002_append.sql")),
];

fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn db(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Backend(format!("{} ({}): {}", e, d.code().code(), d.message())),
        None => StoreError::Backend(e.to_string()),
    }
}

fn i(v: u64) -> i64 {
    v as i64
}

fn u(v: i64) -> u64 {
    v as u64
}

fn role_str(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

fn role_of(s: &str) -> Role {
    match s {
        "owner" => Role::Owner,
        "admin" => Role::Admin,
        _ => Role::Member,
    }
}

/// Every statement through the connection's statement cache. tokio-postgres prepares a
/// `&str` query afresh on every call — one more round trip, and a parse and plan in
/// PostgreSQL, per statement; a commit runs about ten. Cached, each is prepared once per
/// pooled connection. (The connection's `search_path` is fixed when it opens, so a cached
/// statement always names the same tables.)
#[async_trait]
trait Cached: GenericClient {
    async fn q(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query(&st, params).await
    }

    async fn q_opt(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Option<Row>, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_opt(&st, params).await
    }

    async fn q_one(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.query_one(&st, params).await
    }

    async fn ex(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<u64, tokio_postgres::Error> {
        let st = self.prepare_cached(sql).await?;
        self.execute(&st, params).await
    }
}

impl<C: GenericClient> Cached for C {}

fn member_of(row: &Row) -> MemberRecord {
    MemberRecord {
        role: role_of(row.get::<_, &str>("role")),
        joined_seq: u(row.get("joined_seq")),
        muted: row.get("muted"),
        read_seq: u(row.get("read_seq")),
    }
}

/// A group member, read on a pooled connection or inside a transaction.
async fn member<C: GenericClient>(c: &C, group: u64, user: UserId) -> Result<Option<MemberRecord>> {
    let row = c
        .q_opt(
            "SELECT * FROM gmembers WHERE group_id = $1 AND user_id = $2",
            &[&i(group), &i(user.0)],
        )
        .await
        .map_err(db)?;
    Ok(row.as_ref().map(member_of))
}

fn json<T: DeserializeOwned>(row: &Row, col: &str) -> Result<T> {
    let Json(v): Json<serde_json::Value> = row.try_get(col).map_err(db)?;
    serde_json::from_value(v).map_err(backend)
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    ids: std::sync::Arc<IdGen>,
    /// Commits retried after PostgreSQL broke a deadlock (each had waited
    /// `deadlock_timeout`, 1 s by default, first): the lock order is meant to make this 0.
    deadlocks: std::sync::Arc<std::sync::atomic::AtomicU64>,
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
        };
        store.migrate(&opts.schema).await?;
        Ok(store)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(backend)
    }

    async fn migrate(&self, schema: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        // One migrator at a time across processes.
        tx.execute("SELECT pg_advisory_xact_lock(7100001)", &[])
            .await
            .map_err(db)?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; CREATE TABLE IF NOT EXISTS {schema}.schema_migrations \
             (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        ))
        .await
        .map_err(db)?;
        for (version, sql) in MIGRATIONS {
            let done = tx
                .query_opt(
                    &format!("SELECT 1 FROM {schema}.schema_migrations WHERE version = $1"),
                    &[version],
                )
                .await
                .map_err(db)?;
            if done.is_none() {
                tx.batch_execute(&format!("SET LOCAL search_path = {schema}; {sql}"))
                    .await
                    .map_err(db)?;
                tx.execute(
                    &format!("INSERT INTO {schema}.schema_migrations (version) VALUES ($1)"),
                    &[version],
                )
                .await
                .map_err(db)?;
                tracing::info!(version, "applied migration");
            }
        }
        tx.commit().await.map_err(db)
    }

    /// Drops the schema (tests).
    pub async fn drop_schema(&self, schema: &str) -> Result<()> {
        let c = self.client().await?;
        c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .await
            .map_err(db)
    }
}

// === the commit ===

struct Tx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
}

impl Tx<'_> {
    async fn next_inbox_seq(&self, user: UserId) -> Result<u64> {
        let row = self
            .tx
            .q_one(
                "INSERT INTO inbox_heads (user_id, head) VALUES ($1, 1) \
                 ON CONFLICT (user_id) DO UPDATE SET head = inbox_heads.head + 1 RETURNING head",
                &[&i(user.0)],
            )
            .await
            .map_err(db)?;
        Ok(u(row.get(0)))
    }

    async fn conv_head(&self, conv: &str) -> Result<u64> {
        let row = self
            .tx
            .q_opt("SELECT head FROM conv_heads WHERE conv = $1", &[&conv])
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| u(r.get(0))))
    }

    async fn group(&self, id: u64, lock: bool) -> Result<Option<GroupRecord>> {
        let sql = if lock {
            "SELECT rec FROM groups WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT rec FROM groups WHERE id = $1"
        };
        match self.tx.q_opt(sql, &[&i(id)]).await.map_err(db)? {
            Some(r) => Ok(Some(json(&r, "rec")?)),
            None => Ok(None),
        }
    }

    async fn put_group(&self, rec: &GroupRecord) -> Result<()> {
        let v = serde_json::to_value(rec).map_err(backend)?;
        self.tx
            .ex(
                "INSERT INTO groups (id, rec) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET rec = EXCLUDED.rec",
                &[&i(rec.id), &Json(v)],
            )
            .await
            .map_err(db)
            .map(drop)
    }

    async fn member(&self, group: u64, user: UserId) -> Result<Option<MemberRecord>> {
        member(&self.tx, group, user).await
    }

    async fn append_inbox(
        &self,
        user: UserId,
        at_ms: u64,
        msg: Option<(&str, u64)>,
        ev: Option<&Event>,
    ) -> Result<u64> {
        let seq = self.next_inbox_seq(user).await?;
        let event = match ev {
            Some(e) => Some(Json(serde_json::to_value(e).map_err(backend)?)),
            None => None,
        };
        let (conv, conv_seq) = match msg {
            Some((c, s)) => (Some(c), Some(i(s))),
            None => (None, None),
        };
        self.tx
            .ex(
                "INSERT INTO inbox (user_id, seq, at_ms, conv, conv_seq, event) VALUES ($1, $2, $3, $4, $5, $6)",
                &[&i(user.0), &i(seq), &i(at_ms), &conv, &conv_seq, &event],
            )
            .await
            .map_err(db)?;
        Ok(seq)
    }

    async fn check_group(&self, g: &crate::GroupFanout, ops: &[Op]) -> Result<()> {
        let rec = self.group(g.group, true).await?;
        if rec.is_none()
            && ops
                .iter()
                .any(|o| matches!(o, Op::CreateGroup(r) if r.id == g.group))
        {
            return Ok(()); // created by this very commit
        }
        let sender = match g.sender {
            Some((s, _)) => self.member(g.group, s).await?,
            None => None,
        };
        let mut adding = std::collections::HashSet::new();
        for op in ops {
            if let Op::AddMember { group, user, .. } = op
                && *group == g.group
                && self.member(g.group, *user).await?.is_none()
            {
                adding.insert(*user);
            }
        }
        match g.check(rec.as_ref(), sender.as_ref(), adding.len() as u64) {
            Some(r) => Err(StoreError::Refused(r)),
            None => Ok(()),
        }
    }

    async fn count_members(&self, group: u64, delta: i64) -> Result<()> {
        if let Some(mut rec) = self.group(group, true).await? {
            rec.member_count = rec.member_count.saturating_add_signed(delta);
            self.put_group(&rec).await?;
        }
        Ok(())
    }

    async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        self.tx.ex(sql, params).await.map_err(db).map(drop)
    }

    async fn op(&self, op: Op) -> Result<()> {
        match op {
            Op::SetFriends { a, b, since_ms } => {
                // The lower id's row first, whichever side accepted: two acceptances of
                // one pair at once cannot lock the rows in opposite orders.
                let (a, b) = (a.min(b), a.max(b));
                for (x, y) in [(a, b), (b, a)] {
                    self.exec(
                        "INSERT INTO friends (user_id, peer_id, since_ms) VALUES ($1, $2, $3) \
                         ON CONFLICT (user_id, peer_id) DO UPDATE SET since_ms = EXCLUDED.since_ms",
                        &[&i(x.0), &i(y.0), &i(since_ms)],
                    )
                    .await?;
                    self.exec(
                        "DELETE FROM friend_requests_in WHERE user_id = $1 AND peer_id = $2",
                        &[&i(x.0), &i(y.0)],
                    )
                    .await?;
                    self.exec(
                        "DELETE FROM friend_requests_out WHERE user_id = $1 AND peer_id = $2",
                        &[&i(x.0), &i(y.0)],
                    )
                    .await?;
                }
            }
            Op::RemoveFriends { a, b } => {
                self.exec(
                    "DELETE FROM friends WHERE (user_id = $1 AND peer_id = $2) OR (user_id = $2 AND peer_id = $1)",
                    &[&i(a.0), &i(b.0)],
                )
                .await?;
            }
            Op::PutRequest(view) => {
                let v = Json(serde_json::to_value(&view).map_err(backend)?);
                self.exec(
                    "INSERT INTO friend_requests_in (user_id, peer_id, view) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, peer_id) DO UPDATE SET view = EXCLUDED.view",
                    &[&i(view.to.0), &i(view.from.0), &v],
                )
                .await?;
                self.exec(
                    "INSERT INTO friend_requests_out (user_id, peer_id, view) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, peer_id) DO UPDATE SET view = EXCLUDED.view",
                    &[&i(view.from.0), &i(view.to.0), &v],
                )
                .await?;
            }
            Op::DeleteRequest { from, to } => {
                self.exec(
                    "DELETE FROM friend_requests_in WHERE user_id = $1 AND peer_id = $2",
                    &[&i(to.0), &i(from.0)],
                )
                .await?;
                self.exec(
                    "DELETE FROM friend_requests_out WHERE user_id = $1 AND peer_id = $2",
                    &[&i(from.0), &i(to.0)],
                )
                .await?;
            }
            Op::SetBlock { by, peer, blocked } => {
                if blocked {
                    self.exec("INSERT INTO blocks (user_id, peer_id) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&i(by.0), &i(peer.0)]).await?;
                } else {
                    self.exec(
                        "DELETE FROM blocks WHERE user_id = $1 AND peer_id = $2",
                        &[&i(by.0), &i(peer.0)],
                    )
                    .await?;
                }
            }
            Op::Join { user, conv } => {
                self.exec(
                    "INSERT INTO members (user_id, conv, read_seq) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING",
                    &[&i(user.0), &conv.to_string()],
                )
                .await?;
            }
            Op::AdvanceRead { user, conv, seq } => {
                self.exec(
                    "INSERT INTO members (user_id, conv, read_seq) VALUES ($1, $2, $3) ON CONFLICT (user_id, conv) \
                     DO UPDATE SET read_seq = GREATEST(members.read_seq, EXCLUDED.read_seq)",
                    &[&i(user.0), &conv.to_string(), &i(seq)],
                )
                .await?;
                if let ConvId::Group(g) = conv {
                    self.exec(
                        "UPDATE gmembers SET read_seq = GREATEST(read_seq, $3) WHERE group_id = $1 AND user_id = $2",
                        &[&i(g), &i(user.0), &i(seq)],
                    )
                    .await?;
                }
            }
            Op::CreateGroup(rec) => self.put_group(&rec).await?,
            Op::UpdateGroup { group, patch } => {
                if let Some(mut rec) = self.group(group, true).await? {
                    patch.apply(&mut rec);
                    self.put_group(&rec).await?;
                }
            }
            Op::AddMember { group, user, role } => {
                if self.member(group, user).await?.is_some() {
                    return Ok(());
                }
                let conv = ConvId::Group(group).to_string();
                let head = self.conv_head(&conv).await?;
                self.exec(
                    "INSERT INTO gmembers (group_id, user_id, role, joined_seq, muted, read_seq) VALUES ($1, $2, $3, $4, false, $4)",
                    &[&i(group), &i(user.0), &role_str(role), &i(head)],
                )
                .await?;
                self.exec(
                    "INSERT INTO members (user_id, conv, read_seq) VALUES ($1, $2, $3) \
                     ON CONFLICT (user_id, conv) DO UPDATE SET read_seq = EXCLUDED.read_seq",
                    &[&i(user.0), &conv, &i(head)],
                )
                .await?;
                self.exec(
                    "DELETE FROM invites WHERE group_id = $1 AND user_id = $2",
                    &[&i(group), &i(user.0)],
                )
                .await?;
                self.exec(
                    "DELETE FROM gleft WHERE group_id = $1 AND user_id = $2",
                    &[&i(group), &i(user.0)],
                )
                .await?;
                self.count_members(group, 1).await?;
            }
            Op::RemoveMember { group, user } => {
                let Some(m) = self.member(group, user).await? else {
                    return Ok(());
                };
                let conv = ConvId::Group(group).to_string();
                let left = self.conv_head(&conv).await?;
                self.exec(
                    "INSERT INTO gleft (group_id, user_id, joined_seq, left_seq) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (group_id, user_id) DO UPDATE SET joined_seq = EXCLUDED.joined_seq, left_seq = EXCLUDED.left_seq",
                    &[&i(group), &i(user.0), &i(m.joined_seq), &i(left)],
                )
                .await?;
                self.exec(
                    "DELETE FROM gmembers WHERE group_id = $1 AND user_id = $2",
                    &[&i(group), &i(user.0)],
                )
                .await?;
                self.exec(
                    "DELETE FROM members WHERE user_id = $1 AND conv = $2",
                    &[&i(user.0), &conv],
                )
                .await?;
                self.count_members(group, -1).await?;
            }
            Op::SetRole { group, user, role } => {
                self.exec(
                    "UPDATE gmembers SET role = $3 WHERE group_id = $1 AND user_id = $2",
                    &[&i(group), &i(user.0), &role_str(role)],
                )
                .await?;
            }
            Op::SetMuted { group, user, muted } => {
                self.exec(
                    "UPDATE gmembers SET muted = $3 WHERE group_id = $1 AND user_id = $2",
                    &[&i(group), &i(user.0), &muted],
                )
                .await?;
            }
            Op::PutInvite { group, user, by } => {
                self.exec(
                    "INSERT INTO invites (group_id, user_id, by_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (group_id, user_id) DO UPDATE SET by_id = EXCLUDED.by_id",
                    &[&i(group), &i(user.0), &i(by.0)],
                )
                .await?;
            }
            Op::DeleteInvite { group, user } => {
                self.exec(
                    "DELETE FROM invites WHERE group_id = $1 AND user_id = $2",
                    &[&i(group), &i(user.0)],
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// A message appended by `xinge_append` (0002_append.sql), or the original it repeats.
enum Appended {
    Duplicate(Committed),
    New {
        msg: Message,
        sender_seq: u64,
        recipients: Vec<(UserId, u64)>,
    },
}

/// What `xinge_append` needs besides the message: the users whose conversation list it
/// joins, the inbox owners (ascending, no repeats) and the dedup key.
struct AppendArgs<'a> {
    joins: Vec<i64>,
    recipients: Vec<UserId>,
    now: u64,
    dedup: Option<(UserId, &'a str)>,
}

/// Appends a message in one statement: on a pooled connection it is its own transaction
/// (one round trip); inside a transaction it is one step of it.
async fn append<C: GenericClient>(
    c: &C,
    new: NewMessage,
    msg_id: MsgId,
    args: AppendArgs<'_>,
) -> Result<Appended> {
    let conv = new.conv.to_string();
    let group = match new.conv {
        ConvId::Group(g) => Some(i(g)),
        ConvId::Direct(..) => None,
    };
    // conv_seq is given by the function (it sets the field in the stored JSON too).
    let mut msg = new.into_message(msg_id, 0);
    let v = Json(serde_json::to_value(&msg).map_err(backend)?);
    let mentions: Vec<i64> = msg.mentions.iter().map(|m| i(m.0)).collect();
    let recipients: Vec<i64> = args.recipients.iter().map(|r| i(r.0)).collect();
    let row = c
        .q_one(
            "SELECT * FROM xinge_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            &[
                &conv,
                &i(msg.sender.0),
                &i(msg_id.0),
                &v,
                &args.joins,
                &mentions,
                &msg.mention_all,
                &group,
                &recipients,
                &i(args.now),
                &args.dedup.map(|(s, _)| i(s.0)),
                &args.dedup.map(|(_, cmid)| cmid),
            ],
        )
        .await
        .map_err(db)?;
    let conv_seq = u(row.get("o_conv_seq"));
    let sender_seq = u(row.get("o_sender_seq"));
    if row.get::<_, bool>("o_dup") {
        let message = match row.get::<_, Option<Json<serde_json::Value>>>("o_msg") {
            Some(Json(m)) => Some(serde_json::from_value(m).map_err(backend)?),
            None => None,
        };
        return Ok(Appended::Duplicate(Committed {
            duplicate: true,
            message,
            sender_seq,
            ..Committed::default()
        }));
    }
    let seqs: Vec<i64> = row.get("o_seqs");
    msg.conv_seq = conv_seq;
    Ok(Appended::New {
        msg,
        sender_seq,
        recipients: args
            .recipients
            .into_iter()
            .zip(seqs.into_iter().map(u))
            .collect(),
    })
}

/// A commit that is a message and nothing else but conversation-list joins (every 1:1
/// send): one `xinge_append` call.
struct MessageAlone {
    new: NewMessage,
    joins: Vec<i64>,
    message_to: Vec<UserId>,
    dedup: Option<(UserId, String)>,
}

/// How a commit is written: one call, or a transaction.
enum Shape {
    Alone(MessageAlone),
    Transaction(Commit),
}

/// The commit as a [`MessageAlone`] if it is one.
fn shape(c: Commit) -> Shape {
    let joins: Option<Vec<i64>> = match &c.message {
        Some(new) if c.group.is_none() && c.events.is_empty() => c
            .ops
            .iter()
            .map(|op| match op {
                Op::Join { user, conv } if *conv == new.conv => Some(i(user.0)),
                _ => None,
            })
            .collect(),
        _ => None,
    };
    match (joins, c) {
        (
            Some(mut joins),
            Commit {
                message: Some(new),
                message_to,
                dedup,
                ..
            },
        ) => {
            // Ascending, like every other lock: two first messages of one conversation
            // sent at once from both ends inserted the two membership rows in opposite
            // orders and deadlocked (each waiting 1 s for PostgreSQL to notice).
            joins.sort_unstable();
            joins.dedup();
            Shape::Alone(MessageAlone {
                new,
                joins,
                message_to,
                dedup,
            })
        }
        (_, c) => Shape::Transaction(c),
    }
}

/// Inbox owners in ascending user order, once each: concurrent commits that share
/// recipients lock their inbox heads in the same order and cannot deadlock.
fn in_lock_order(mut users: Vec<UserId>) -> Vec<UserId> {
    users.sort_unstable();
    users.dedup();
    users
}

impl PgStore {
    async fn commit_once(&self, c: Commit) -> Result<Committed> {
        let c = match shape(c) {
            Shape::Alone(alone) => return self.commit_message_alone(alone).await,
            Shape::Transaction(c) => c,
        };
        let mut client = self.client().await?;
        let tx = Tx {
            tx: client.transaction().await.map_err(db)?,
        };
        if let Some((sender, cmid)) = &c.dedup {
            let row = tx
                .tx
                .q_opt("SELECT conv, conv_seq, sender_seq FROM dedup WHERE sender = $1 AND client_msg_id = $2", &[&i(sender.0), cmid])
                .await
                .map_err(db)?;
            if let Some(row) = row {
                let conv: String = row.get(0);
                let msg = tx
                    .tx
                    .q_opt(
                        "SELECT msg FROM messages WHERE conv = $1 AND conv_seq = $2",
                        &[&conv, &row.get::<_, i64>(1)],
                    )
                    .await
                    .map_err(db)?;
                let message = match msg {
                    Some(m) => Some(json::<Message>(&m, "msg")?),
                    None => None,
                };
                return Ok(Committed {
                    duplicate: true,
                    message,
                    sender_seq: u(row.get(2)),
                    ..Committed::default()
                });
            }
        }
        if let Some(g) = &c.group {
            tx.check_group(g, &c.ops).await?;
        }
        let Commit {
            dedup,
            group,
            message,
            message_to,
            events,
            ops,
        } = c;
        for op in ops {
            tx.op(op).await?;
        }
        let now = xinge_core::now_ms();
        let mut out = Committed {
            at_ms: now,
            ..Committed::default()
        };
        if let Some(new) = message {
            let mut recipients = message_to;
            let mut read_fanout = None;
            if let Some(g) = &group {
                let count = tx
                    .group(g.group, false)
                    .await?
                    .map_or(0, |r| r.member_count);
                if count > g.threshold {
                    read_fanout = Some(g.group);
                } else {
                    let rows = tx
                        .tx
                        .q(
                            "SELECT user_id FROM gmembers WHERE group_id = $1",
                            &[&i(g.group)],
                        )
                        .await
                        .map_err(db)?;
                    recipients.extend(rows.iter().map(|r| UserId(u(r.get(0)))));
                }
            }
            let args = AppendArgs {
                joins: vec![],
                recipients: in_lock_order(recipients),
                now,
                dedup: dedup.as_ref().map(|(s, cmid)| (*s, cmid.as_str())),
            };
            match append(&tx.tx, new, MsgId(self.ids.next()), args).await? {
                // A racing send with the same key committed since the check above; this
                // transaction is dropped, so its ops are rolled back with it.
                Appended::Duplicate(d) => return Ok(d),
                Appended::New {
                    msg,
                    sender_seq,
                    recipients,
                } => {
                    out.group_advanced = read_fanout.map(|g| (g, msg.conv_seq));
                    out.sender_seq = sender_seq;
                    out.recipients = recipients;
                    out.message = Some(msg);
                }
            }
        }
        let mut events = events;
        events.sort_by_key(|(u, _)| *u);
        for (user, event) in events {
            let seq = tx.append_inbox(user, now, None, Some(&event)).await?;
            out.entries.push((
                user,
                InboxEntry {
                    seq,
                    at_ms: now,
                    event,
                },
            ));
        }
        tx.tx.commit().await.map_err(db)?;
        Ok(out)
    }

    /// One `xinge_append` call on a pooled connection: one round trip.
    async fn commit_message_alone(&self, alone: MessageAlone) -> Result<Committed> {
        let MessageAlone {
            new,
            joins,
            message_to,
            dedup,
        } = alone;
        let now = xinge_core::now_ms();
        let args = AppendArgs {
            joins,
            recipients: in_lock_order(message_to),
            now,
            dedup: dedup.as_ref().map(|(s, cmid)| (*s, cmid.as_str())),
        };
        let client = self.client().await?;
        match append(&client, new, MsgId(self.ids.next()), args).await? {
            Appended::Duplicate(d) => Ok(d),
            Appended::New {
                msg,
                sender_seq,
                recipients,
            } => Ok(Committed {
                at_ms: now,
                sender_seq,
                recipients,
                message: Some(msg),
                ..Committed::default()
            }),
        }
    }
}

/// Why a failed commit is worth retrying, if it is: a deadlock PostgreSQL broke, or a race —
/// a serialization failure or a unique violation (two commits on the same dedup key or
/// head row). The retry sees the winner's work.
fn retry_reason(e: &StoreError) -> Option<&'static str> {
    match e {
        StoreError::Backend(m) if m.contains("deadlock") => Some("deadlock"),
        StoreError::Backend(m)
            if m.contains("could not serialize") || m.contains("duplicate key") =>
        {
            Some("race")
        }
        _ => None,
    }
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, new: NewUser) -> Result<UserRecord> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "INSERT INTO users (id, username, display_name, password_hash, created_at_ms) \
                 VALUES (nextval('user_ids'), $1, $2, $3, $4) ON CONFLICT (username) DO NOTHING RETURNING id",
                &[&new.username, &new.display_name, &new.password_hash, &i(new.created_at_ms)],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Err(StoreError::Conflict);
        };
        Ok(UserRecord {
            id: UserId(u(row.get(0))),
            username: new.username,
            display_name: new.display_name,
            password_hash: new.password_hash,
            created_at_ms: new.created_at_ms,
        })
    }

    async fn user(&self, id: UserId) -> Result<Option<UserRecord>> {
        let c = self.client().await?;
        let row = c
            .q_opt("SELECT * FROM users WHERE id = $1", &[&i(id.0)])
            .await
            .map_err(db)?;
        Ok(row.map(|r| user_of(&r)))
    }

    async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let c = self.client().await?;
        let row = c
            .q_opt("SELECT * FROM users WHERE username = $1", &[&username])
            .await
            .map_err(db)?;
        Ok(row.map(|r| user_of(&r)))
    }

    async fn set_display_name(&self, id: UserId, display_name: &str) -> Result<()> {
        let c = self.client().await?;
        let n = c
            .ex(
                "UPDATE users SET display_name = $2 WHERE id = $1",
                &[&i(id.0), &display_name],
            )
            .await
            .map_err(db)?;
        if n == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }

    async fn put_device(&self, user: UserId, device: &DeviceId, token_id: u64) -> Result<()> {
        let c = self.client().await?;
        c.ex(
            "INSERT INTO devices (user_id, device, token_id) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id, device) DO UPDATE SET token_id = EXCLUDED.token_id",
            &[&i(user.0), &device.as_str(), &i(token_id)],
        )
        .await
        .map_err(db)
        .map(drop)
    }

    async fn device_token(&self, user: UserId, device: &DeviceId) -> Result<Option<u64>> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "SELECT token_id FROM devices WHERE user_id = $1 AND device = $2",
                &[&i(user.0), &device.as_str()],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| u(r.get(0))))
    }

    async fn remove_device(&self, user: UserId, device: &DeviceId) -> Result<()> {
        let c = self.client().await?;
        c.ex(
            "DELETE FROM devices WHERE user_id = $1 AND device = $2",
            &[&i(user.0), &device.as_str()],
        )
        .await
        .map_err(db)
        .map(drop)
    }

    async fn pair(&self, me: UserId, other: UserId) -> Result<Pair> {
        let c = self.client().await?;
        let row = c
            .q_one(
                "SELECT (SELECT since_ms FROM friends WHERE user_id = $1 AND peer_id = $2), \
                 EXISTS (SELECT 1 FROM blocks WHERE user_id = $1 AND peer_id = $2), \
                 EXISTS (SELECT 1 FROM blocks WHERE user_id = $2 AND peer_id = $1)",
                &[&i(me.0), &i(other.0)],
            )
            .await
            .map_err(db)?;
        Ok(Pair {
            friends_since_ms: row.get::<_, Option<i64>>(0).map(u),
            i_blocked: row.get(1),
            blocked_me: row.get(2),
        })
    }

    async fn relation(&self, me: UserId, other: UserId) -> Result<Relation> {
        let p = self.pair(me, other).await?;
        let c = self.client().await?;
        let out = c
            .q_opt(
                "SELECT view FROM friend_requests_out WHERE user_id = $1 AND peer_id = $2",
                &[&i(me.0), &i(other.0)],
            )
            .await
            .map_err(db)?;
        let inc = c
            .q_opt(
                "SELECT view FROM friend_requests_in WHERE user_id = $1 AND peer_id = $2",
                &[&i(me.0), &i(other.0)],
            )
            .await
            .map_err(db)?;
        Ok(Relation {
            friends_since_ms: p.friends_since_ms,
            i_blocked: p.i_blocked,
            blocked_me: p.blocked_me,
            request_out: out.map(|r| json(&r, "view")).transpose()?,
            request_in: inc.map(|r| json(&r, "view")).transpose()?,
        })
    }

    async fn friends(&self, user: UserId, limit: usize) -> Result<Vec<Friend>> {
        let c = self.client().await?;
        let rows = c
            .q("SELECT peer_id, since_ms FROM friends WHERE user_id = $1 ORDER BY peer_id LIMIT $2", &[&i(user.0), &(limit as i64)])
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| Friend {
                user_id: UserId(u(r.get(0))),
                since_ms: u(r.get(1)),
            })
            .collect())
    }

    async fn friend_requests(&self, user: UserId, limit: usize) -> Result<FriendRequests> {
        let c = self.client().await?;
        let list = |rows: Vec<Row>| -> Result<Vec<FriendRequestView>> {
            rows.iter().map(|r| json(r, "view")).collect()
        };
        let inc = c
            .q(
                "SELECT view FROM friend_requests_in WHERE user_id = $1 ORDER BY peer_id LIMIT $2",
                &[&i(user.0), &(limit as i64)],
            )
            .await
            .map_err(db)?;
        let out = c
            .q(
                "SELECT view FROM friend_requests_out WHERE user_id = $1 ORDER BY peer_id LIMIT $2",
                &[&i(user.0), &(limit as i64)],
            )
            .await
            .map_err(db)?;
        Ok(FriendRequests {
            incoming: list(inc)?,
            outgoing: list(out)?,
        })
    }

    async fn commit(&self, commit: Commit) -> Result<Committed> {
        let mut attempt = 0;
        loop {
            let result = self.commit_once(commit.clone()).await;
            let why = match &result {
                Err(e) if attempt < 5 => retry_reason(e),
                _ => None,
            };
            let Some(why) = why else { return result };
            if why == "deadlock" {
                self.deadlocks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            metrics::counter!("xinge_store_retries_total", "why" => why).increment(1);
            attempt += 1;
        }
    }

    async fn dedup(
        &self,
        sender: UserId,
        client_msg_id: &str,
    ) -> Result<Option<crate::DedupRecord>> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "SELECT conv, conv_seq, msg_id, sender_seq FROM dedup WHERE sender = $1 AND client_msg_id = $2",
                &[&i(sender.0), &client_msg_id],
            )
            .await
            .map_err(db)?;
        row.map(|r| {
            Ok(crate::DedupRecord {
                conv: r.get::<_, &str>(0).parse().map_err(backend)?,
                conv_seq: u(r.get(1)),
                msg_id: MsgId(u(r.get(2))),
                sender_seq: u(r.get(3)),
            })
        })
        .transpose()
    }

    async fn inbox(
        &self,
        user: UserId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<InboxEntry>, u64)> {
        let c = self.client().await?;
        let head = c
            .q_opt(
                "SELECT head FROM inbox_heads WHERE user_id = $1",
                &[&i(user.0)],
            )
            .await
            .map_err(db)?
            .map_or(0, |r| u(r.get(0)));
        let rows = c
            .q(
                "SELECT i.seq, i.at_ms, i.event, m.msg FROM inbox i \
                 LEFT JOIN messages m ON m.conv = i.conv AND m.conv_seq = i.conv_seq \
                 WHERE i.user_id = $1 AND i.seq > $2 ORDER BY i.seq LIMIT $3",
                &[&i(user.0), &i(after.min(i64::MAX as u64)), &(limit as i64)],
            )
            .await
            .map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let event = match r.get::<_, Option<Json<serde_json::Value>>>(3) {
                Some(Json(m)) => Event::Message {
                    message: serde_json::from_value(m).map_err(backend)?,
                },
                None => json(&r, "event")?,
            };
            out.push(InboxEntry {
                seq: u(r.get(0)),
                at_ms: u(r.get(1)),
                event,
            });
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
        let c = self.client().await?;
        let order = if newest_first { "DESC" } else { "ASC" };
        let rows = c
            .q(
                &format!("SELECT msg FROM messages WHERE conv = $1 AND conv_seq BETWEEN $2 AND $3 ORDER BY conv_seq {order} LIMIT $4"),
                &[&conv.to_string(), &i(from.min(i64::MAX as u64)), &i(to.min(i64::MAX as u64)), &(limit as i64)],
            )
            .await
            .map_err(db)?;
        let mut out = rows
            .iter()
            .map(|r| json::<Message>(r, "msg"))
            .collect::<Result<Vec<_>>>()?;
        if newest_first {
            out.reverse();
        }
        Ok(out)
    }

    async fn conv_head(&self, conv: ConvId) -> Result<u64> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "SELECT head FROM conv_heads WHERE conv = $1",
                &[&conv.to_string()],
            )
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| u(r.get(0))))
    }

    async fn memberships(&self, user: UserId, limit: usize) -> Result<Vec<Membership>> {
        let c = self.client().await?;
        let rows = c
            .q(
                "SELECT conv, read_seq FROM members WHERE user_id = $1 LIMIT $2",
                &[&i(user.0), &(limit as i64)],
            )
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let conv: ConvId = r.get::<_, &str>(0).parse().map_err(backend)?;
                Ok(Membership {
                    conv,
                    read_seq: u(r.get(1)),
                })
            })
            .collect()
    }

    async fn read_cursor(&self, user: UserId, conv: ConvId) -> Result<u64> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "SELECT read_seq FROM members WHERE user_id = $1 AND conv = $2",
                &[&i(user.0), &conv.to_string()],
            )
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| u(r.get(0))))
    }

    async fn mention_count(
        &self,
        user: UserId,
        conv: ConvId,
        after_seq: u64,
        cap: u64,
    ) -> Result<u64> {
        let c = self.client().await?;
        let row = c
            .q_one(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM mentions WHERE user_id = $1 AND conv = $2 AND seq > $3 LIMIT $4) a) + \
                        (SELECT count(*) FROM (SELECT 1 FROM gmentions WHERE conv = $2 AND seq > $3 LIMIT $4) b)",
                &[&i(user.0), &conv.to_string(), &i(after_seq.min(i64::MAX as u64)), &i(cap)],
            )
            .await
            .map_err(db)?;
        Ok(u(row.get(0)).min(cap))
    }

    async fn group(&self, id: u64) -> Result<Option<GroupRecord>> {
        let c = self.client().await?;
        match c
            .q_opt("SELECT rec FROM groups WHERE id = $1", &[&i(id)])
            .await
            .map_err(db)?
        {
            Some(r) => Ok(Some(json(&r, "rec")?)),
            None => Ok(None),
        }
    }

    async fn group_member(&self, group: u64, user: UserId) -> Result<Option<MemberRecord>> {
        member(&self.client().await?, group, user).await
    }

    async fn group_members(
        &self,
        group: u64,
        after: Option<UserId>,
        limit: usize,
    ) -> Result<Vec<(UserId, MemberRecord)>> {
        let c = self.client().await?;
        let after = after.map_or(-1, |a| i(a.0));
        let rows = c
            .q("SELECT * FROM gmembers WHERE group_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3", &[&i(group), &after, &(limit as i64)])
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| (UserId(u(r.get("user_id"))), member_of(r)))
            .collect())
    }

    async fn former_member(&self, group: u64, user: UserId) -> Result<Option<(u64, u64)>> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "SELECT joined_seq, left_seq FROM gleft WHERE group_id = $1 AND user_id = $2",
                &[&i(group), &i(user.0)],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| (u(r.get(0)), u(r.get(1)))))
    }

    async fn invite(&self, group: u64, user: UserId) -> Result<Option<UserId>> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "SELECT by_id FROM invites WHERE group_id = $1 AND user_id = $2",
                &[&i(group), &i(user.0)],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| UserId(u(r.get(0)))))
    }
}

fn user_of(r: &Row) -> UserRecord {
    UserRecord {
        id: UserId(u(r.get("id"))),
        username: r.get("username"),
        display_name: r.get("display_name"),
        password_hash: r.get("password_hash"),
        created_at_ms: u(r.get("created_at_ms")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PostgreSQL to test against; CI sets nothing and gets the machine's own.
    fn url() -> String {
        std::env::var("XINGE_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
    }

    /// Options for a test's own schema on the test PostgreSQL.
    fn options(schema: &str, pool_size: usize, node_id: u16) -> PgOptions {
        PgOptions {
            url: url(),
            schema: schema.into(),
            pool_size,
            node_id,
        }
    }

    /// A client of the test PostgreSQL, or None (having said so) where there is none and
    /// this is not CI.
    async fn reachable(test: &str) -> Option<tokio_postgres::Client> {
        match tokio_postgres::connect(&url(), NoTls).await {
            Ok((client, conn)) => {
                tokio::spawn(conn);
                Some(client)
            }
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!(
                    "SKIPPED {test}: PostgreSQL is not reachable at {} ({e}); CI requires it",
                    url()
                );
                None
            }
            Err(e) => panic!(
                "PostgreSQL is required under CI and is not reachable at {}: {e}",
                url()
            ),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_suite_passes_on_postgres() {
        let schema = format!("xinge_test_{}", std::process::id());
        let opts = options(&schema, 8, 3);
        if reachable("conformance_suite_passes_on_postgres")
            .await
            .is_none()
        {
            return;
        }
        let store = PgStore::connect(&opts).await.unwrap();
        crate::conformance::run(&store).await;
        // Migrations are idempotent: connecting again applies nothing and keeps the data.
        let again = PgStore::connect(&opts).await.unwrap();
        assert!(again.user(UserId(1)).await.unwrap().is_some());
        store.drop_schema(&schema).await.unwrap();
    }

    /// A schema made by an earlier release (migration 1 only, a message already sent) is
    /// upgraded in place when a new process connects: the message's retry is still
    /// recognised, and sequences go on from where they were.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_version_1_schema_is_upgraded_in_place() {
        let Some(raw) = reachable("a_version_1_schema_is_upgraded_in_place").await else {
            return;
        };
        let schema = format!("xinge_test_up_{}", std::process::id());
        raw.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; SET search_path = {schema}; \
             CREATE TABLE schema_migrations (version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now()); \
             {} \
             INSERT INTO schema_migrations (version) VALUES (1);",
            MIGRATIONS[0].1
        ))
        .await
        .unwrap();
        // What release 1 wrote for a first message from 1 to 2 (client_msg_id "old").
        let (a, b) = (UserId(1), UserId(2));
        let conv = ConvId::direct(a, b);
        let old = NewMessage {
            conv,
            sender: a,
            sender_device: None,
            client_msg_id: "old".into(),
            sent_at_ms: 1,
            mentions: vec![],
            mention_all: false,
            body: xinge_proto::api::MessageBody::Content {
                content: serde_json::json!({ "text": "old" }),
            },
        }
        .into_message(MsgId(77), 1);
        let c = conv.to_string();
        raw.execute(
            "INSERT INTO messages (conv, conv_seq, msg) VALUES ($1, 1, $2)",
            &[&c, &Json(serde_json::to_value(&old).unwrap())],
        )
        .await
        .unwrap();
        raw.batch_execute(&format!(
            "INSERT INTO conv_heads VALUES ('{c}', 1); INSERT INTO inbox_heads VALUES (1, 1), (2, 1); \
             INSERT INTO inbox (user_id, seq, at_ms, conv, conv_seq) VALUES (1, 1, 1, '{c}', 1), (2, 1, 1, '{c}', 1); \
             INSERT INTO members VALUES (1, '{c}', 1), (2, '{c}', 0); \
             INSERT INTO dedup VALUES (1, 'old', '{c}', 1, 77, 1);"
        ))
        .await
        .unwrap();
        let opts = options(&schema, 2, 4);
        let store = PgStore::connect(&opts).await.unwrap();
        let again = crate::conformance::send(&store, a, b, "old").await;
        assert!(again.duplicate);
        assert_eq!(
            again.message.map(|m| (m.msg_id, m.conv_seq)),
            Some((MsgId(77), 1))
        );
        let new = crate::conformance::send(&store, a, b, "new").await;
        assert!(!new.duplicate);
        assert_eq!(new.message.map(|m| m.conv_seq), Some(2));
        assert_eq!(new.recipients, vec![(a, 2), (b, 2)]);
        let versions = raw
            .query(
                &format!("SELECT version FROM {schema}.schema_migrations ORDER BY version"),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(
            versions
                .iter()
                .map(|r| r.get::<_, i32>(0))
                .collect::<Vec<_>>(),
            MIGRATIONS.iter().map(|(v, _)| *v).collect::<Vec<_>>()
        );
        store.drop_schema(&schema).await.unwrap();
    }

    /// Two users who have never talked send each other their first message at the same
    /// moment: neither may deadlock (PostgreSQL would break it, and the retry would hide
    /// it, but only after `deadlock_timeout` — a second). A transaction holding one of the
    /// two membership rows makes both sends wait at their first join, then lets go, so
    /// that they meet inside the function; with the joins taken in the caller's order
    /// (sender first) half of such meetings deadlocked.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_messages_from_both_ends_do_not_deadlock() {
        let Some(raw) = reachable("first_messages_from_both_ends_do_not_deadlock").await else {
            return;
        };
        let schema = format!("xinge_test_dl_{}", std::process::id());
        const PAIRS: u64 = 8;
        let opts = options(&schema, 2 * PAIRS as usize, 5);
        let store = std::sync::Arc::new(PgStore::connect(&opts).await.unwrap());
        let pairs: Vec<_> = (0..PAIRS)
            .map(|p| (UserId(1_000 + 2 * p), UserId(1_001 + 2 * p)))
            .collect();
        raw.batch_execute(&format!("SET search_path = {schema}; BEGIN"))
            .await
            .unwrap();
        for (a, b) in &pairs {
            raw.execute(
                "INSERT INTO members (user_id, conv, read_seq) VALUES ($1, $2, 0)",
                &[&i(b.0), &ConvId::direct(*a, *b).to_string()],
            )
            .await
            .unwrap();
        }
        let mut sends = tokio::task::JoinSet::new();
        for (a, b) in pairs {
            for (from, to) in [(a, b), (b, a)] {
                let store = store.clone();
                sends.spawn(
                    async move { crate::conformance::send(&*store, from, to, "first").await },
                );
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        raw.batch_execute("ROLLBACK").await.unwrap();
        let mut sent = 0;
        while let Some(done) = sends.join_next().await {
            assert!(!done.unwrap().duplicate);
            sent += 1;
        }
        assert_eq!(sent, 2 * PAIRS);
        assert_eq!(store.deadlocks(), 0, "first messages deadlocked");
        store.drop_schema(&schema).await.unwrap();
    }
}
