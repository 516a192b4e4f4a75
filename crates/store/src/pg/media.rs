//! Media metadata on PostgreSQL (0009_media.sql): uploads, media records (JSONB), blob
//! reference counts and per-owner usage. A media write is one transaction; blob rows are
//! locked in hash order so that two writes sharing blobs cannot deadlock.

use super::PgStore;
use super::sql::{Cached, backend, db, i, u};
use crate::media::{MediaRecord, MediaStore, UploadRecord};
use crate::{Result, StoreError};
use async_trait::async_trait;
use tokio_postgres::Row;
use xinge_core::UserId;

fn upload_of(r: &Row) -> UploadRecord {
    UploadRecord {
        id: r.get("id"),
        owner: UserId(u(r.get("owner_id"))),
        length: u(r.get("length")),
        offset: u(r.get("offset")),
        metadata: r.get("metadata"),
        created_ms: u(r.get("created_ms")),
        expires_ms: u(r.get("expires_ms")),
        media: r.get("media_id"),
    }
}

fn media_of(r: &Row) -> Result<MediaRecord> {
    serde_json::from_value(r.get("record")).map_err(backend)
}

/// The blobs of a record, sorted: the lock order.
fn sorted_blobs(m: &MediaRecord) -> Vec<&str> {
    let mut b: Vec<&str> = m.blobs().collect();
    b.sort_unstable();
    b
}

const UPLOAD_COLUMNS: &str =
    "id, owner_id, length, \"offset\", metadata, created_ms, expires_ms, media_id";

#[async_trait]
impl MediaStore for PgStore {
    async fn put_upload(&self, up: &UploadRecord) -> Result<()> {
        let c = self.client().await?;
        c.ex(
            "INSERT INTO uploads (id, owner_id, length, \"offset\", metadata, created_ms, expires_ms, media_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO UPDATE \
             SET \"offset\" = EXCLUDED.\"offset\", media_id = EXCLUDED.media_id, expires_ms = EXCLUDED.expires_ms",
            &[
                &up.id,
                &i(up.owner.0),
                &i(up.length),
                &i(up.offset),
                &up.metadata,
                &i(up.created_ms),
                &i(up.expires_ms),
                &up.media,
            ],
        )
        .await
        .map_err(db)
        .map(drop)
    }

    async fn upload(&self, id: &str) -> Result<Option<UploadRecord>> {
        let c = self.client().await?;
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = $1");
        let row = c.q_opt(&sql, &[&id]).await.map_err(db)?;
        Ok(row.as_ref().map(upload_of))
    }

    async fn remove_upload(&self, id: &str) -> Result<()> {
        let c = self.client().await?;
        c.ex("DELETE FROM uploads WHERE id = $1", &[&id])
            .await
            .map_err(db)
            .map(drop)
    }

    async fn expired_uploads(&self, now_ms: u64, limit: usize) -> Result<Vec<UploadRecord>> {
        let c = self.client().await?;
        let sql = format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE expires_ms < $1 ORDER BY expires_ms, id LIMIT $2"
        );
        let rows = c
            .q(&sql, &[&i(now_ms), &(limit.min(i64::MAX as usize) as i64)])
            .await
            .map_err(db)?;
        Ok(rows.iter().map(upload_of).collect())
    }

    async fn add_media(&self, m: &MediaRecord) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let record = serde_json::to_value(m).map_err(backend)?;
        let inserted = tx
            .ex(
                "INSERT INTO media (id, owner_id, record) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
                &[&m.id, &i(m.owner.0), &record],
            )
            .await
            .map_err(db)?;
        if inserted == 0 {
            return Err(StoreError::Conflict);
        }
        for hash in sorted_blobs(m) {
            tx.ex(
                "INSERT INTO blobs (hash, refs, unreferenced_ms) VALUES ($1, 1, NULL) \
                 ON CONFLICT (hash) DO UPDATE SET refs = blobs.refs + 1, unreferenced_ms = NULL",
                &[&hash],
            )
            .await
            .map_err(db)?;
        }
        tx.ex(
            "INSERT INTO media_usage (owner_id, bytes) VALUES ($1, $2) \
             ON CONFLICT (owner_id) DO UPDATE SET bytes = media_usage.bytes + EXCLUDED.bytes",
            &[&i(m.owner.0), &i(m.charged())],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn media(&self, id: &str) -> Result<Option<MediaRecord>> {
        let c = self.client().await?;
        let row = c
            .q_opt("SELECT record FROM media WHERE id = $1", &[&id])
            .await
            .map_err(db)?;
        row.as_ref().map(media_of).transpose()
    }

    async fn remove_media(&self, id: &str, at_ms: u64) -> Result<Option<MediaRecord>> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let row = tx
            .q_opt("DELETE FROM media WHERE id = $1 RETURNING record", &[&id])
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let m = media_of(&row)?;
        for hash in sorted_blobs(&m) {
            tx.ex(
                "UPDATE blobs SET refs = GREATEST(refs - 1, 0), \
                 unreferenced_ms = CASE WHEN refs <= 1 THEN COALESCE(unreferenced_ms, $2) END \
                 WHERE hash = $1",
                &[&hash, &i(at_ms)],
            )
            .await
            .map_err(db)?;
        }
        tx.ex(
            "UPDATE media_usage SET bytes = GREATEST(bytes - $2, 0) WHERE owner_id = $1",
            &[&i(m.owner.0), &i(m.charged())],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(m))
    }

    async fn media_usage(&self, owner: UserId) -> Result<u64> {
        let c = self.client().await?;
        let row = c
            .q_opt(
                "SELECT bytes FROM media_usage WHERE owner_id = $1",
                &[&i(owner.0)],
            )
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| u(r.get(0))))
    }

    async fn blob_refs(&self, hash: &str) -> Result<u64> {
        let c = self.client().await?;
        let row = c
            .q_opt("SELECT refs FROM blobs WHERE hash = $1", &[&hash])
            .await
            .map_err(db)?;
        Ok(row.map_or(0, |r| u(r.get(0))))
    }

    async fn unreferenced_blobs(&self, before_ms: u64, limit: usize) -> Result<Vec<String>> {
        let c = self.client().await?;
        let rows = c
            .q(
                "SELECT hash FROM blobs WHERE unreferenced_ms < $1 AND refs = 0 \
                 ORDER BY unreferenced_ms, hash LIMIT $2",
                &[&i(before_ms), &(limit.min(i64::MAX as usize) as i64)],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    async fn forget_blob(&self, hash: &str) -> Result<bool> {
        let c = self.client().await?;
        let n = c
            .ex("DELETE FROM blobs WHERE hash = $1 AND refs = 0", &[&hash])
            .await
            .map_err(db)?;
        Ok(n > 0)
    }
}
