-- Users the app's server banned (admin API): no login, no token, until unbanned.
ALTER TABLE users ADD COLUMN IF NOT EXISTS banned BOOLEAN NOT NULL DEFAULT false;
