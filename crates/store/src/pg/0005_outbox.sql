-- Events for the app's server, written by the commit that caused them and removed once
-- delivered; and the events whose delivery was given up, until they are replayed.
CREATE TABLE IF NOT EXISTS outbox (
    seq   BIGSERIAL PRIMARY KEY,
    event TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id    BIGSERIAL PRIMARY KEY,
    event TEXT NOT NULL,
    error TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
