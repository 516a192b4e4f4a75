-- xinge schema, version 1. Every table's primary key starts with its distribution column
-- (user_id for per-user data, conv for timelines, group_id for groups), so the schema maps
-- onto a sharded PostgreSQL (Citus: create_distributed_table on that column) unchanged.

CREATE SEQUENCE user_ids;

CREATE TABLE users (
    id            BIGINT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id  BIGINT NOT NULL,
    device   TEXT NOT NULL,
    token_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, device)
);

CREATE TABLE friends (
    user_id  BIGINT NOT NULL,
    peer_id  BIGINT NOT NULL,
    since_ms BIGINT NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);

-- A pending request is kept on both sides, each keyed by its owner.
CREATE TABLE friend_requests_in (
    user_id BIGINT NOT NULL,
    peer_id BIGINT NOT NULL,
    view    JSONB NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);
CREATE TABLE friend_requests_out (
    user_id BIGINT NOT NULL,
    peer_id BIGINT NOT NULL,
    view    JSONB NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);

CREATE TABLE blocks (
    user_id BIGINT NOT NULL,
    peer_id BIGINT NOT NULL,
    PRIMARY KEY (user_id, peer_id)
);

-- Sequence allocation: one row per timeline, locked by the transaction that appends.
CREATE TABLE inbox_heads (user_id BIGINT PRIMARY KEY, head BIGINT NOT NULL);
CREATE TABLE conv_heads (conv TEXT PRIMARY KEY, head BIGINT NOT NULL);

CREATE TABLE inbox (
    user_id  BIGINT NOT NULL,
    seq      BIGINT NOT NULL,
    at_ms    BIGINT NOT NULL,
    conv     TEXT,     -- with conv_seq: a message, by reference
    conv_seq BIGINT,
    event    JSONB,    -- otherwise: the event itself
    PRIMARY KEY (user_id, seq)
);

CREATE TABLE messages (
    conv     TEXT NOT NULL,
    conv_seq BIGINT NOT NULL,
    msg      JSONB NOT NULL,
    PRIMARY KEY (conv, conv_seq)
);

CREATE TABLE dedup (
    sender        BIGINT NOT NULL,
    client_msg_id TEXT NOT NULL,
    conv          TEXT NOT NULL,
    conv_seq      BIGINT NOT NULL,
    msg_id        BIGINT NOT NULL,
    sender_seq    BIGINT NOT NULL,
    PRIMARY KEY (sender, client_msg_id)
);

-- A user's conversation list and read cursors.
CREATE TABLE members (
    user_id  BIGINT NOT NULL,
    conv     TEXT NOT NULL,
    read_seq BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv)
);

CREATE TABLE groups (id BIGINT PRIMARY KEY, rec JSONB NOT NULL);

CREATE TABLE gmembers (
    group_id   BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    role       TEXT NOT NULL,
    joined_seq BIGINT NOT NULL,
    muted      BOOLEAN NOT NULL,
    read_seq   BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE gleft (
    group_id   BIGINT NOT NULL,
    user_id    BIGINT NOT NULL,
    joined_seq BIGINT NOT NULL,
    left_seq   BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE invites (
    group_id BIGINT NOT NULL,
    user_id  BIGINT NOT NULL,
    by_id    BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);

CREATE TABLE mentions (
    user_id BIGINT NOT NULL,
    conv    TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv, seq)
);
CREATE TABLE gmentions (
    conv TEXT NOT NULL,
    seq  BIGINT NOT NULL,
    PRIMARY KEY (conv, seq)
);
