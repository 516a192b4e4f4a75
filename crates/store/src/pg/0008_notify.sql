-- Offline push: notices queued by the commit that caused them (read by the push workers,
-- removed once told), and users' settings (push registrations, mutes, preferences).
CREATE TABLE IF NOT EXISTS notify (
    seq BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL,
    at_ms BIGINT NOT NULL,
    about TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    user_id BIGINT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (user_id, key)
);
