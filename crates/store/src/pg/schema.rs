//! The schema: versioned migrations, applied in order, each once, under an advisory lock.

use super::PgStore;
use super::sql::db;
use crate::Result;

/// Versioned migrations, applied in order, each once.
pub(super) const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("0001_init.sql")),
    (2, include_str!("0002_append.sql")),
    (3, include_str!("0003_devices.sql")),
    (4, include_str!("0004_banned.sql")),
    (5, include_str!("0005_outbox.sql")),
    (6, include_str!("0006_external_id.sql")),
    (7, include_str!("0007_outbox_ref.sql")),
    (8, include_str!("0008_notify.sql")),
    (9, include_str!("0009_media.sql")),
    (10, include_str!("0010_news.sql")),
];

impl PgStore {
    pub(super) async fn migrate(&self, schema: &str) -> Result<()> {
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
