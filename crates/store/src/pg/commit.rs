//! The commit: one transaction (or, for a message with nothing else, one call of
//! `xinge_append`), its lock order, and the retry of a commit PostgreSQL broke.

use super::PgStore;
use super::sql::{Cached, backend, db, i, json, member, u};
use crate::{Commit, Committed, GroupRecord, MemberRecord, NewMessage, Op, Result, StoreError};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::Json;
use xinge_core::{ConvId, GroupId, MsgId, UserId};
use xinge_proto::api::{Event, InboxEntry, Message};

pub(super) struct Tx<'a> {
    pub(super) tx: deadpool_postgres::Transaction<'a>,
}

impl Tx<'_> {
    pub(super) async fn next_inbox_seq(&self, user: UserId) -> Result<u64> {
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

    pub(super) async fn conv_head(&self, conv: &str) -> Result<u64> {
        let row = self
            .tx
            .q_opt("SELECT head FROM conv_heads WHERE conv = $1", &[&conv])
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| u(r.get(0))))
    }

    pub(super) async fn group(&self, id: GroupId, lock: bool) -> Result<Option<GroupRecord>> {
        let sql = if lock {
            "SELECT rec FROM groups WHERE id = $1 FOR UPDATE"
        } else {
            "SELECT rec FROM groups WHERE id = $1"
        };
        match self.tx.q_opt(sql, &[&i(id.0)]).await.map_err(db)? {
            Some(r) => Ok(Some(json(&r, "rec")?)),
            None => Ok(None),
        }
    }

    pub(super) async fn put_group(&self, rec: &GroupRecord) -> Result<()> {
        let v = serde_json::to_value(rec).map_err(backend)?;
        self.tx
            .ex(
                "INSERT INTO groups (id, rec) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET rec = EXCLUDED.rec",
                &[&i(rec.id.0), &Json(v)],
            )
            .await
            .map_err(db)
            .map(drop)
    }

    pub(super) async fn member(
        &self,
        group: GroupId,
        user: UserId,
    ) -> Result<Option<MemberRecord>> {
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

    pub(super) async fn count_members(&self, group: GroupId, delta: i64) -> Result<()> {
        if let Some(mut rec) = self.group(group, true).await? {
            rec.member_count = rec.member_count.saturating_add_signed(delta);
            self.put_group(&rec).await?;
        }
        Ok(())
    }

    pub(super) async fn exec(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        self.tx.ex(sql, params).await.map_err(db).map(drop)
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
        ConvId::Group(g) => Some(i(g.0)),
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
        Some(new)
            if c.group.is_none()
                && c.events.is_empty()
                && c.outbox.is_empty()
                && c.notify.is_empty() =>
        {
            c.ops
                .iter()
                .map(|op| match op {
                    Op::Join { user, conv } if *conv == new.conv => Some(i(user.0)),
                    _ => None,
                })
                .collect()
        }
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
    pub(super) async fn commit_once(&self, c: Commit) -> Result<Committed> {
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
            outbox,
            notify,
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
                            &[&i(g.group.0)],
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
        super::ops::write_outbox(self, &tx.tx, &outbox, out.message.as_ref(), None).await?;
        super::ops::write_notices(&tx.tx, notify, out.message.as_ref(), now).await?;
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

/// Commits, retrying (a bounded number of times) what [`retry_reason`] says is worth it.
pub(super) async fn commit(store: &PgStore, commit: Commit) -> Result<Committed> {
    let mut attempt = 0;
    loop {
        let result = store.commit_once(commit.clone()).await;
        let why = match &result {
            Err(e) if attempt < 5 => retry_reason(e),
            _ => None,
        };
        let Some(why) = why else { return result };
        if why == "deadlock" {
            store
                .deadlocks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        metrics::counter!("xinge_store_retries_total", "why" => why).increment(1);
        attempt += 1;
    }
}
