//! Helpers every PostgreSQL statement goes through: errors, integer and role
//! conversions, the statement cache, and rows decoded into records.

use crate::{MemberRecord, Result, StoreError, UserRecord};
use async_trait::async_trait;
use deadpool_postgres::GenericClient;
use serde::de::DeserializeOwned;
use tokio_postgres::Row;
use tokio_postgres::types::{Json, ToSql};
use xinge_core::{GroupId, UserId};
use xinge_proto::api::Role;

pub(super) fn backend<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub(super) fn db(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(d) => StoreError::Backend(format!("{} ({}): {}", e, d.code().code(), d.message())),
        None => StoreError::Backend(e.to_string()),
    }
}

pub(super) fn i(v: u64) -> i64 {
    v as i64
}

pub(super) fn u(v: i64) -> u64 {
    v as u64
}

pub(super) fn role_str(r: Role) -> &'static str {
    match r {
        Role::Owner => "owner",
        Role::Admin => "admin",
        Role::Member => "member",
    }
}

pub(super) fn role_of(s: &str) -> Role {
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
pub(super) trait Cached: GenericClient {
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

pub(super) fn member_of(row: &Row) -> MemberRecord {
    MemberRecord {
        role: role_of(row.get::<_, &str>("role")),
        joined_seq: u(row.get("joined_seq")),
        muted: row.get("muted"),
        read_seq: u(row.get("read_seq")),
    }
}

/// A group member, read on a pooled connection or inside a transaction.
pub(super) async fn member<C: GenericClient>(
    c: &C,
    group: GroupId,
    user: UserId,
) -> Result<Option<MemberRecord>> {
    let row = c
        .q_opt(
            "SELECT * FROM gmembers WHERE group_id = $1 AND user_id = $2",
            &[&i(group.0), &i(user.0)],
        )
        .await
        .map_err(db)?;
    Ok(row.as_ref().map(member_of))
}

pub(super) fn json<T: DeserializeOwned>(row: &Row, col: &str) -> Result<T> {
    let Json(v): Json<serde_json::Value> = row.try_get(col).map_err(db)?;
    serde_json::from_value(v).map_err(backend)
}

pub(super) fn user_of(r: &Row) -> UserRecord {
    UserRecord {
        id: UserId(u(r.get("id"))),
        username: r.get("username"),
        display_name: r.get("display_name"),
        password_hash: r.get("password_hash"),
        created_at_ms: u(r.get("created_at_ms")),
        banned: r.get("banned"),
        external_id: r.get("external_id"),
    }
}
