-- The app's own id for a user (admin API), unique when set.
ALTER TABLE users ADD COLUMN IF NOT EXISTS external_id TEXT UNIQUE;
