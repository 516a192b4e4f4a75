-- When each device logged in: a user's device list shows it, and the oldest login is the
-- one that goes when an account is past its device limit.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS logged_in_at_ms BIGINT NOT NULL DEFAULT 0;
