//! What each [`Op`] does to the tables, inside the commit's transaction; and the account
//! and device writes, which are single statements outside any [`crate::Commit`].

use super::PgStore;
use super::commit::Tx;
use super::sql::{Cached, backend, db, i, role_str, u};
use crate::{NewUser, Op, Result, StoreError, UserRecord};
use tokio_postgres::types::Json;
use xinge_core::{ConvId, DeviceId, UserId};
use xinge_proto::api::Message;

impl Tx<'_> {
    pub(super) async fn op(&self, op: Op) -> Result<()> {
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
            Op::Redact {
                conv,
                conv_seq,
                body,
            } => {
                let conv = conv.to_string();
                let row = self
                    .tx
                    .q_opt(
                        "SELECT msg FROM messages WHERE conv = $1 AND conv_seq = $2 FOR UPDATE",
                        &[&conv, &i(conv_seq)],
                    )
                    .await
                    .map_err(db)?;
                if let Some(row) = row {
                    let mut msg: Message = super::sql::json(&row, "msg")?;
                    msg.redact(body);
                    let v = serde_json::to_value(&msg).map_err(backend)?;
                    self.exec(
                        "UPDATE messages SET msg = $3 WHERE conv = $1 AND conv_seq = $2",
                        &[&conv, &i(conv_seq), &Json(v)],
                    )
                    .await?;
                }
            }
            Op::ForgetNews { user, convs } => {
                let mut convs: Vec<String> = convs.iter().map(ConvId::to_string).collect();
                convs.sort();
                // The heads' rows are held to the end of the transaction: a message being
                // appended to one of them (its transaction holds the row) is waited for and
                // then seen, and none can be appended before the delete is committed.
                self.exec(
                    "SELECT 1 FROM conv_heads WHERE conv = ANY($1) ORDER BY conv FOR SHARE",
                    &[&convs],
                )
                .await?;
                self.exec(
                    "DELETE FROM news n USING members m \
                     WHERE n.user_id = $1 AND n.conv = ANY($2) \
                       AND m.user_id = n.user_id AND m.conv = n.conv \
                       AND m.read_seq >= COALESCE((SELECT head FROM conv_heads h WHERE h.conv = n.conv), 0)",
                    &[&i(user.0), &convs],
                )
                .await?;
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
                        &[&i(g.0), &i(user.0), &i(seq)],
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
                    &[&i(group.0), &i(user.0), &role_str(role), &i(head)],
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
                    &[&i(group.0), &i(user.0)],
                )
                .await?;
                self.exec(
                    "DELETE FROM gleft WHERE group_id = $1 AND user_id = $2",
                    &[&i(group.0), &i(user.0)],
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
                    &[&i(group.0), &i(user.0), &i(m.joined_seq), &i(left)],
                )
                .await?;
                self.exec(
                    "DELETE FROM gmembers WHERE group_id = $1 AND user_id = $2",
                    &[&i(group.0), &i(user.0)],
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
                    &[&i(group.0), &i(user.0), &role_str(role)],
                )
                .await?;
            }
            Op::SetMuted { group, user, muted } => {
                self.exec(
                    "UPDATE gmembers SET muted = $3 WHERE group_id = $1 AND user_id = $2",
                    &[&i(group.0), &i(user.0), &muted],
                )
                .await?;
            }
            Op::PutInvite { group, user, by } => {
                self.exec(
                    "INSERT INTO invites (group_id, user_id, by_id) VALUES ($1, $2, $3) \
                     ON CONFLICT (group_id, user_id) DO UPDATE SET by_id = EXCLUDED.by_id",
                    &[&i(group.0), &i(user.0), &i(by.0)],
                )
                .await?;
            }
            Op::DeleteInvite { group, user } => {
                self.exec(
                    "DELETE FROM invites WHERE group_id = $1 AND user_id = $2",
                    &[&i(group.0), &i(user.0)],
                )
                .await?;
            }
        }
        Ok(())
    }
}

// === writes outside a commit ===

pub(super) async fn create_user(store: &PgStore, new: NewUser) -> Result<UserRecord> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    let row = tx
        .q_opt(
            "INSERT INTO users (id, username, display_name, password_hash, created_at_ms, external_id) \
             VALUES (nextval('user_ids'), $1, $2, $3, $4, $5) ON CONFLICT (username) DO NOTHING RETURNING id",
            &[&new.username, &new.display_name, &new.password_hash, &i(new.created_at_ms), &new.external_id],
        )
        .await
        .map_err(|e| match e.code() {
            // The external id is taken (the username's conflict is the DO NOTHING above).
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => StoreError::Conflict,
            _ => db(e),
        })?;
    let Some(row) = row else {
        return Err(StoreError::Conflict);
    };
    let user = UserRecord {
        id: UserId(u(row.get(0))),
        username: new.username,
        display_name: new.display_name,
        password_hash: new.password_hash,
        created_at_ms: new.created_at_ms,
        banned: false,
        external_id: new.external_id,
    };
    write_outbox(store, &tx, &new.outbox, None, Some(&user)).await?;
    tx.commit().await.map_err(db)?;
    Ok(user)
}

pub(super) async fn set_display_name(
    store: &PgStore,
    id: UserId,
    display_name: &str,
) -> Result<()> {
    let c = store.client().await?;
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

pub(super) async fn put_device(
    store: &PgStore,
    user: UserId,
    device: &DeviceId,
    token_id: u64,
    at_ms: u64,
) -> Result<()> {
    let c = store.client().await?;
    c.ex(
        "INSERT INTO devices (user_id, device, token_id, logged_in_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id, device) DO UPDATE SET token_id = EXCLUDED.token_id, \
         logged_in_at_ms = EXCLUDED.logged_in_at_ms",
        &[&i(user.0), &device.as_str(), &i(token_id), &i(at_ms)],
    )
    .await
    .map_err(db)
    .map(drop)
}

pub(super) async fn remove_device(store: &PgStore, user: UserId, device: &DeviceId) -> Result<()> {
    let c = store.client().await?;
    c.ex(
        "DELETE FROM devices WHERE user_id = $1 AND device = $2",
        &[&i(user.0), &device.as_str()],
    )
    .await
    .map_err(db)
    .map(drop)
}

pub(super) async fn set_password(
    store: &PgStore,
    user: UserId,
    password_hash: &str,
    keep: Option<&DeviceId>,
) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    let n = tx
        .ex(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            &[&i(user.0), &password_hash],
        )
        .await
        .map_err(db)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    // `IS DISTINCT FROM`: with no device to keep ($2 NULL), every device goes.
    tx.ex(
        "DELETE FROM devices WHERE user_id = $1 AND device IS DISTINCT FROM $2",
        &[&i(user.0), &keep.map(DeviceId::as_str)],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

/// Writes `events` to the outbox in transaction `tx` (with the write's message or user,
/// for the events that carry them).
pub(super) async fn write_outbox(
    store: &PgStore,
    tx: &deadpool_postgres::Transaction<'_>,
    events: &[crate::OutboxEvent],
    message: Option<&Message>,
    user: Option<&UserRecord>,
) -> Result<()> {
    let now = xinge_core::now_ms();
    for ev in events {
        // About the write's message: by reference, as the embedded store keeps it.
        if let (crate::OutboxEvent::Message(kind), Some(m)) = (ev, message) {
            let head = crate::types::outbox_head(store.next_id(), kind, now);
            tx.ex(
                "INSERT INTO outbox (event, conv, conv_seq) VALUES ($1, $2, $3)",
                &[&head, &m.conv.to_string(), &i(m.conv_seq)],
            )
            .await
            .map_err(db)?;
        } else if let Some(record) = ev.record(store.next_id(), now, user) {
            tx.ex("INSERT INTO outbox (event) VALUES ($1)", &[&record])
                .await
                .map_err(db)?;
        }
    }
    Ok(())
}

pub(super) async fn set_banned(
    store: &PgStore,
    user: UserId,
    banned: bool,
    outbox: &[crate::OutboxEvent],
) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    let n = tx
        .ex(
            "UPDATE users SET banned = $2 WHERE id = $1",
            &[&i(user.0), &banned],
        )
        .await
        .map_err(db)?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    if banned {
        tx.ex("DELETE FROM devices WHERE user_id = $1", &[&i(user.0)])
            .await
            .map_err(db)?;
    }
    write_outbox(store, &tx, outbox, None, None).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn erase_user(
    store: &PgStore,
    user: UserId,
    username: &str,
    display_name: &str,
    outbox: &[crate::OutboxEvent],
) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    let n = tx
        .ex(
            "UPDATE users SET username = $2, display_name = $3, password_hash = $4, banned = true, \
             external_id = NULL WHERE id = $1",
            &[&i(user.0), &username, &display_name, &crate::NO_PASSWORD],
        )
        .await
        .map_err(|e| match e.code() {
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => StoreError::Conflict,
            _ => db(e),
        })?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    tx.ex("DELETE FROM devices WHERE user_id = $1", &[&i(user.0)])
        .await
        .map_err(db)?;
    write_outbox(store, &tx, outbox, None, None).await?;
    tx.commit().await.map_err(db)
}

pub(super) async fn outbox(store: &PgStore, limit: usize) -> Result<Vec<crate::OutboxRecord>> {
    let c = store.client().await?;
    let rows = c
        .q(
            "SELECT o.seq, o.event, o.conv IS NOT NULL, m.msg::text FROM outbox o \
             LEFT JOIN messages m ON m.conv = o.conv AND m.conv_seq = o.conv_seq \
             ORDER BY o.seq LIMIT $1",
            &[&(limit.min(i64::MAX as usize) as i64)],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .map(|r| {
            let event: String = r.get(1);
            let by_ref: bool = r.get(2);
            crate::OutboxRecord {
                seq: u(r.get(0)),
                event: match by_ref {
                    true => {
                        let message: Option<String> = r.get(3);
                        crate::types::outbox_with_message(&event, message.as_deref())
                    }
                    false => event,
                },
            }
        })
        .collect())
}

pub(super) async fn outbox_done(store: &PgStore, seqs: &[u64]) -> Result<()> {
    let seqs: Vec<i64> = seqs.iter().map(|s| i(*s)).collect();
    let c = store.client().await?;
    c.ex("DELETE FROM outbox WHERE seq = ANY($1)", &[&seqs])
        .await
        .map_err(db)
        .map(drop)
}

pub(super) async fn outbox_depth(store: &PgStore) -> Result<u64> {
    let c = store.client().await?;
    let row = c
        .q_one(
            "SELECT COALESCE(MAX(seq) - MIN(seq) + 1, 0) FROM outbox",
            &[],
        )
        .await
        .map_err(db)?;
    Ok(u(row.get(0)))
}

pub(super) async fn dead_letter(
    store: &PgStore,
    events: &[crate::OutboxRecord],
    error: &str,
    at_ms: u64,
) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    for ev in events {
        tx.ex("DELETE FROM outbox WHERE seq = $1", &[&i(ev.seq)])
            .await
            .map_err(db)?;
        tx.ex(
            "INSERT INTO dead_letters (event, error, at_ms) VALUES ($1, $2, $3)",
            &[&ev.event, &error, &i(at_ms)],
        )
        .await
        .map_err(db)?;
    }
    // Bounded: the oldest beyond `MAX_DEAD_LETTERS` go.
    tx.ex(
        "DELETE FROM dead_letters WHERE id <= (SELECT MAX(id) FROM dead_letters) - $1",
        &[&i(crate::MAX_DEAD_LETTERS)],
    )
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)
}

pub(super) async fn dead_letters(
    store: &PgStore,
    after: u64,
    limit: usize,
) -> Result<Vec<crate::DeadLetter>> {
    let c = store.client().await?;
    let rows = c
        .q(
            "SELECT id, event, error, at_ms FROM dead_letters WHERE id > $1 ORDER BY id LIMIT $2",
            &[&i(after), &(limit.min(i64::MAX as usize) as i64)],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .map(|r| crate::DeadLetter {
            id: u(r.get(0)),
            event: r.get(1),
            error: r.get(2),
            at_ms: u(r.get(3)),
        })
        .collect())
}

pub(super) async fn replay_dead_letter(store: &PgStore, id: u64) -> Result<()> {
    let mut c = store.client().await?;
    let tx = c.transaction().await.map_err(db)?;
    let row = tx
        .q_opt(
            "DELETE FROM dead_letters WHERE id = $1 RETURNING event",
            &[&i(id)],
        )
        .await
        .map_err(db)?;
    let Some(row) = row else {
        return Err(StoreError::NotFound);
    };
    let event: String = row.get(0);
    tx.ex("INSERT INTO outbox (event) VALUES ($1)", &[&event])
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)
}

/// Queues `notices` in transaction `tx`; one about the write's message takes its place
/// (none without a message: a duplicate).
pub(super) async fn write_notices(
    tx: &deadpool_postgres::Transaction<'_>,
    notices: Vec<crate::Notice>,
    message: Option<&Message>,
    at_ms: u64,
) -> Result<()> {
    for n in notices {
        let about = match (n.about, message) {
            (crate::NoticeAbout::Message { .. }, Some(m)) => crate::NoticeAbout::Message {
                conv: m.conv,
                conv_seq: m.conv_seq,
            },
            (crate::NoticeAbout::Message { .. }, None) => continue,
            (about, _) => about,
        };
        let about = serde_json::to_string(&about).map_err(backend)?;
        tx.ex(
            "INSERT INTO notify (user_id, at_ms, about) VALUES ($1, $2, $3)",
            &[&i(n.user.0), &i(at_ms), &about],
        )
        .await
        .map_err(db)?;
    }
    Ok(())
}

pub(super) async fn notices(
    store: &PgStore,
    after: u64,
    limit: usize,
) -> Result<Vec<crate::NoticeRecord>> {
    let c = store.client().await?;
    let rows = c
        .q(
            "SELECT seq, user_id, at_ms, about FROM notify WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&i(after), &(limit.min(i64::MAX as usize) as i64)],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let about: String = r.get(3);
            Ok(crate::NoticeRecord {
                seq: u(r.get(0)),
                user: UserId(u(r.get(1))),
                at_ms: u(r.get(2)),
                about: serde_json::from_str(&about).map_err(backend)?,
            })
        })
        .collect()
}

pub(super) async fn notices_done(store: &PgStore, seqs: &[u64]) -> Result<()> {
    let seqs: Vec<i64> = seqs.iter().map(|s| i(*s)).collect();
    let c = store.client().await?;
    c.ex("DELETE FROM notify WHERE seq = ANY($1)", &[&seqs])
        .await
        .map_err(db)
        .map(drop)
}

pub(super) async fn notices_depth(store: &PgStore) -> Result<u64> {
    let c = store.client().await?;
    let row = c
        .q_one(
            "SELECT COALESCE(MAX(seq) - MIN(seq) + 1, 0) FROM notify",
            &[],
        )
        .await
        .map_err(db)?;
    Ok(u(row.get(0)))
}

pub(super) async fn setting(store: &PgStore, user: UserId, key: &str) -> Result<Option<String>> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT value FROM settings WHERE user_id = $1 AND key = $2",
            &[&i(user.0), &key],
        )
        .await
        .map_err(db)?;
    Ok(row.map(|r| r.get(0)))
}

pub(super) async fn settings(
    store: &PgStore,
    user: UserId,
    prefix: &str,
    limit: usize,
) -> Result<Vec<(String, String)>> {
    let c = store.client().await?;
    // A range, not LIKE: the prefix is the caller's text, `%` and `_` included.
    let rows = c
        .q(
            "SELECT key, value FROM settings WHERE user_id = $1 AND key >= $2 \
             AND left(key, length($2)) = $2 ORDER BY key COLLATE \"C\" LIMIT $3",
            &[&i(user.0), &prefix, &(limit.min(i64::MAX as usize) as i64)],
        )
        .await
        .map_err(db)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub(super) async fn put_setting(
    store: &PgStore,
    user: UserId,
    key: &str,
    value: Option<&str>,
) -> Result<()> {
    let c = store.client().await?;
    let user = i(user.0);
    match value {
        Some(v) => {
            c.ex(
                "INSERT INTO settings (user_id, key, value) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, key) DO UPDATE SET value = EXCLUDED.value",
                &[&user, &key, &v],
            )
            .await
        }
        None => {
            c.ex(
                "DELETE FROM settings WHERE user_id = $1 AND key = $2",
                &[&user, &key],
            )
            .await
        }
    }
    .map_err(db)
    .map(drop)
}
