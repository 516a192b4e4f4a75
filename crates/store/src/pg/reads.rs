//! The reads: each on a pooled connection, one statement (or two) each.

use super::PgStore;
use super::sql::{Cached, backend, db, i, json, member, member_of, u, user_of};
use crate::{
    ConversationRow, DedupRecord, DeviceRecord, GroupRecord, LIST_MENTIONS_CAP, MemberRecord,
    Membership, Pair, Relation, Result, UserRecord,
};
use tokio_postgres::Row;
use tokio_postgres::types::Json;
use xinge_core::{ConvId, DeviceId, GroupId, MsgId, UserId};
use xinge_proto::api::{Event, Friend, FriendRequestView, FriendRequests, InboxEntry, Message};

pub(super) async fn user(store: &PgStore, id: UserId) -> Result<Option<UserRecord>> {
    let c = store.client().await?;
    let row = c
        .q_opt("SELECT * FROM users WHERE id = $1", &[&i(id.0)])
        .await
        .map_err(db)?;
    Ok(row.map(|r| user_of(&r)))
}

pub(super) async fn user_by_name(store: &PgStore, username: &str) -> Result<Option<UserRecord>> {
    let c = store.client().await?;
    let row = c
        .q_opt("SELECT * FROM users WHERE username = $1", &[&username])
        .await
        .map_err(db)?;
    Ok(row.map(|r| user_of(&r)))
}

pub(super) async fn user_by_external_id(
    store: &PgStore,
    external_id: &str,
) -> Result<Option<UserRecord>> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT * FROM users WHERE external_id = $1",
            &[&external_id],
        )
        .await
        .map_err(db)?;
    Ok(row.map(|r| user_of(&r)))
}

pub(super) async fn device_token(
    store: &PgStore,
    user: UserId,
    device: &DeviceId,
) -> Result<Option<u64>> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT token_id FROM devices WHERE user_id = $1 AND device = $2",
            &[&i(user.0), &device.as_str()],
        )
        .await
        .map_err(db)?;
    Ok(row.map(|r| u(r.get(0))))
}

pub(super) async fn devices(
    store: &PgStore,
    user: UserId,
    limit: usize,
) -> Result<Vec<DeviceRecord>> {
    let c = store.client().await?;
    let rows = c
        .q(
            "SELECT device, token_id, logged_in_at_ms FROM devices WHERE user_id = $1 \
             ORDER BY device LIMIT $2",
            &[&i(user.0), &(limit as i64)],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(DeviceRecord {
                device: DeviceId::parse(r.get(0))?,
                token_id: u(r.get(1)),
                logged_in_at_ms: u(r.get(2)),
            })
        })
        .collect())
}

pub(super) async fn pair(store: &PgStore, me: UserId, other: UserId) -> Result<Pair> {
    let c = store.client().await?;
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

pub(super) async fn relation(store: &PgStore, me: UserId, other: UserId) -> Result<Relation> {
    let p = pair(store, me, other).await?;
    let c = store.client().await?;
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

pub(super) async fn friends(store: &PgStore, user: UserId, limit: usize) -> Result<Vec<Friend>> {
    let c = store.client().await?;
    let rows = c
        .q(
            "SELECT peer_id, since_ms FROM friends WHERE user_id = $1 ORDER BY peer_id LIMIT $2",
            &[&i(user.0), &(limit as i64)],
        )
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

pub(super) async fn friend_requests(
    store: &PgStore,
    user: UserId,
    limit: usize,
) -> Result<FriendRequests> {
    let c = store.client().await?;
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

pub(super) async fn dedup(
    store: &PgStore,
    sender: UserId,
    client_msg_id: &str,
) -> Result<Option<DedupRecord>> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT conv, conv_seq, msg_id, sender_seq FROM dedup WHERE sender = $1 AND client_msg_id = $2",
            &[&i(sender.0), &client_msg_id],
        )
        .await
        .map_err(db)?;
    row.map(|r| {
        Ok(DedupRecord {
            conv: r.get::<_, &str>(0).parse().map_err(backend)?,
            conv_seq: u(r.get(1)),
            msg_id: MsgId(u(r.get(2))),
            sender_seq: u(r.get(3)),
        })
    })
    .transpose()
}

pub(super) async fn inbox(
    store: &PgStore,
    user: UserId,
    after: u64,
    limit: usize,
) -> Result<(Vec<InboxEntry>, u64)> {
    let c = store.client().await?;
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

pub(super) async fn messages(
    store: &PgStore,
    conv: ConvId,
    from: u64,
    to: u64,
    limit: usize,
    newest_first: bool,
) -> Result<Vec<Message>> {
    if from > to || limit == 0 {
        return Ok(Vec::new());
    }
    let c = store.client().await?;
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

pub(super) async fn conv_head(store: &PgStore, conv: ConvId) -> Result<u64> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT head FROM conv_heads WHERE conv = $1",
            &[&conv.to_string()],
        )
        .await
        .map_err(db)?;
    Ok(row.map_or(0, |r| u(r.get(0))))
}

pub(super) async fn memberships(
    store: &PgStore,
    user: UserId,
    limit: usize,
) -> Result<Vec<Membership>> {
    let c = store.client().await?;
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

pub(super) async fn read_cursor(store: &PgStore, user: UserId, conv: ConvId) -> Result<u64> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT read_seq FROM members WHERE user_id = $1 AND conv = $2",
            &[&i(user.0), &conv.to_string()],
        )
        .await
        .map_err(db)?;
    Ok(row.map_or(0, |r| u(r.get(0))))
}

/// See `Store::unread_candidates`: one statement, the user's rows of `news` with their
/// heads and cursors, and their groups as `conversation_list` reads them (a range of the
/// members key: group conversations are `g…`, 1:1 ones `d…`).
pub(super) async fn unread_candidates(
    store: &PgStore,
    user: UserId,
    limit: usize,
) -> Result<Vec<(ConvId, u64, u64)>> {
    let c = store.client().await?;
    let rows = c
        .q(
            "(SELECT n.conv, COALESCE(h.head, 0) AS head, COALESCE(m.read_seq, 0) AS read_seq \
              FROM news n \
              LEFT JOIN conv_heads h ON h.conv = n.conv \
              LEFT JOIN members m ON m.user_id = n.user_id AND m.conv = n.conv \
              WHERE n.user_id = $1 LIMIT $2) \
             UNION ALL \
             (SELECT m.conv, \
                     CASE WHEN gm.user_id IS NULL THEN LEAST(COALESCE(h.head, 0), gl.left_seq) \
                          ELSE COALESCE(h.head, 0) END, \
                     m.read_seq \
              FROM members m \
              LEFT JOIN conv_heads h ON h.conv = m.conv \
              LEFT JOIN gmembers gm ON gm.group_id = substr(m.conv, 2)::BIGINT AND gm.user_id = $1 \
              LEFT JOIN gleft gl ON gl.group_id = substr(m.conv, 2)::BIGINT AND gl.user_id = $1 \
              WHERE m.user_id = $1 AND m.conv >= 'g' AND m.conv < 'h' AND m.conv LIKE 'g%' \
                AND (gm.user_id IS NOT NULL OR gl.user_id IS NOT NULL) \
              LIMIT $2)",
            &[&i(user.0), &(limit as i64)],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let conv: ConvId = r.get::<_, &str>(0).parse().map_err(backend)?;
            Ok((conv, u(r.get(1)), u(r.get(2))))
        })
        .collect()
}

pub(super) async fn mention_count(
    store: &PgStore,
    user: UserId,
    conv: ConvId,
    after_seq: u64,
    cap: u64,
) -> Result<u64> {
    let c = store.client().await?;
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

pub(super) async fn group(store: &PgStore, id: GroupId) -> Result<Option<GroupRecord>> {
    let c = store.client().await?;
    match c
        .q_opt("SELECT rec FROM groups WHERE id = $1", &[&i(id.0)])
        .await
        .map_err(db)?
    {
        Some(r) => Ok(Some(json(&r, "rec")?)),
        None => Ok(None),
    }
}

pub(super) async fn group_member(
    store: &PgStore,
    group: GroupId,
    user: UserId,
) -> Result<Option<MemberRecord>> {
    member(&store.client().await?, group, user).await
}

pub(super) async fn group_members(
    store: &PgStore,
    group: GroupId,
    after: Option<UserId>,
    limit: usize,
) -> Result<Vec<(UserId, MemberRecord)>> {
    let c = store.client().await?;
    let after = after.map_or(-1, |a| i(a.0));
    let rows = c
        .q(
            "SELECT * FROM gmembers WHERE group_id = $1 AND user_id > $2 ORDER BY user_id LIMIT $3",
            &[&i(group.0), &after, &(limit as i64)],
        )
        .await
        .map_err(db)?;
    Ok(rows
        .iter()
        .map(|r| (UserId(u(r.get("user_id"))), member_of(r)))
        .collect())
}

pub(super) async fn former_member(
    store: &PgStore,
    group: GroupId,
    user: UserId,
) -> Result<Option<(u64, u64)>> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT joined_seq, left_seq FROM gleft WHERE group_id = $1 AND user_id = $2",
            &[&i(group.0), &i(user.0)],
        )
        .await
        .map_err(db)?;
    Ok(row.map(|r| (u(r.get(0)), u(r.get(1)))))
}

pub(super) async fn invite(
    store: &PgStore,
    group: GroupId,
    user: UserId,
) -> Result<Option<UserId>> {
    let c = store.client().await?;
    let row = c
        .q_opt(
            "SELECT by_id FROM invites WHERE group_id = $1 AND user_id = $2",
            &[&i(group.0), &i(user.0)],
        )
        .await
        .map_err(db)?;
    Ok(row.map(|r| UserId(u(r.get(0)))))
}

/// One statement for the whole list (a list of 1,000 conversations was 3,000 to 6,000
/// round trips read one conversation at a time): the memberships as `memberships` reads
/// them, each joined with its head, the user's group membership or former membership, the
/// message at the readable head, the group record and the two capped mention counts.
pub(super) async fn conversation_list(
    store: &PgStore,
    user: UserId,
    limit: usize,
) -> Result<Vec<ConversationRow>> {
    let c = store.client().await?;
    let rows = c
        .q(
            "WITH m AS ( \
                 SELECT conv, read_seq, \
                        CASE WHEN conv LIKE 'g%' THEN substr(conv, 2)::BIGINT END AS gid \
                 FROM members WHERE user_id = $1 LIMIT $2 \
             ), r AS ( \
                 SELECT m.conv, m.read_seq, m.gid, \
                        CASE WHEN m.gid IS NOT NULL AND gm.user_id IS NULL \
                             THEN LEAST(COALESCE(h.head, 0), gl.left_seq) \
                             ELSE COALESCE(h.head, 0) END AS head \
                 FROM m \
                 LEFT JOIN conv_heads h ON h.conv = m.conv \
                 LEFT JOIN gmembers gm ON gm.group_id = m.gid AND gm.user_id = $1 \
                 LEFT JOIN gleft gl ON gl.group_id = m.gid AND gl.user_id = $1 \
                 WHERE m.gid IS NULL OR gm.user_id IS NOT NULL OR gl.user_id IS NOT NULL \
             ) \
             SELECT r.conv, r.read_seq, r.head, msg.msg, g.rec->>'name' AS name, \
                    CASE WHEN r.gid IS NULL THEN 0 ELSE \
                      (SELECT count(*) FROM (SELECT 1 FROM mentions \
                         WHERE user_id = $1 AND conv = r.conv AND seq > r.read_seq LIMIT $3) a) + \
                      (SELECT count(*) FROM (SELECT 1 FROM gmentions \
                         WHERE conv = r.conv AND seq > r.read_seq LIMIT $3) b) \
                    END AS mentions \
             FROM r \
             LEFT JOIN messages msg ON msg.conv = r.conv AND msg.conv_seq = r.head \
             LEFT JOIN groups g ON g.id = r.gid",
            &[&i(user.0), &(limit as i64), &i(LIST_MENTIONS_CAP)],
        )
        .await
        .map_err(db)?;
    rows.iter()
        .map(|r| {
            let last_message = match r.get::<_, Option<Json<serde_json::Value>>>("msg") {
                Some(Json(m)) => Some(serde_json::from_value::<Message>(m).map_err(backend)?),
                None => None,
            };
            Ok(ConversationRow {
                conv: r.get::<_, &str>("conv").parse().map_err(backend)?,
                read_seq: u(r.get("read_seq")),
                head: u(r.get("head")),
                last_message,
                name: r.get("name"),
                unread_mentions: u(r.get("mentions")).min(LIST_MENTIONS_CAP),
            })
        })
        .collect()
}
