-- An event about a message keeps the message by reference: `event` holds the event
-- without its data, and the message is read from `messages` when the outbox is read.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS conv TEXT;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS conv_seq BIGINT;
