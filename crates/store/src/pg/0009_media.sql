-- Media: resumable uploads in progress, the media they became, and the content-addressed
-- blobs media refer to, counted so that a blob no media refers to is collected.
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    owner_id BIGINT NOT NULL,
    length BIGINT NOT NULL,
    "offset" BIGINT NOT NULL,
    metadata TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    media_id TEXT
);
CREATE INDEX IF NOT EXISTS uploads_expiry ON uploads (expires_ms);
CREATE TABLE IF NOT EXISTS media (
    id TEXT PRIMARY KEY,
    owner_id BIGINT NOT NULL,
    record JSONB NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    hash TEXT PRIMARY KEY,
    refs BIGINT NOT NULL,
    unreferenced_ms BIGINT
);
CREATE INDEX IF NOT EXISTS blobs_unreferenced ON blobs (unreferenced_ms)
    WHERE unreferenced_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS media_usage (
    owner_id BIGINT PRIMARY KEY,
    bytes BIGINT NOT NULL
);
