-- xinge schema, version 10: the 1:1 conversations that may hold unread messages for a
-- user, so that the badge of a notification (the user's unread messages) is summed over
-- those instead of over every conversation. `xinge_append` adds the recipient's row with
-- each 1:1 message (nothing when it is there already); a read of the set drops the rows of
-- conversations it found read up to their head, holding the head's row so that no message
-- can land in between (ops.rs, `ForgetNews`). Otherwise the function is as in version 2.
CREATE TABLE IF NOT EXISTS news (
    user_id BIGINT NOT NULL,
    conv    TEXT NOT NULL,
    PRIMARY KEY (user_id, conv)
);

CREATE OR REPLACE FUNCTION xinge_append(
    p_conv        TEXT,
    p_sender      BIGINT,
    p_msg_id      BIGINT,
    p_msg         JSONB,
    p_joins       BIGINT[],  -- users to add to the conversation list (1:1: both sides)
    p_mentions    BIGINT[],
    p_mention_all BOOLEAN,
    p_group       BIGINT,    -- the group, for the sender's member read cursor; NULL for 1:1
    p_recipients  BIGINT[],  -- inbox owners, ascending, without repeats
    p_now         BIGINT,
    p_dedup       BIGINT,    -- the dedup key (p_dedup, p_cmid): the sending user and
    p_cmid        TEXT       -- their client_msg_id; NULL for none
) RETURNS TABLE (o_dup BOOLEAN, o_conv_seq BIGINT, o_sender_seq BIGINT, o_seqs BIGINT[], o_msg JSONB)
LANGUAGE plpgsql AS $$
DECLARE
    v_d      RECORD;
    v_seq    BIGINT;
    v_s      BIGINT;
    v_r      BIGINT;
    v_seqs   BIGINT[] := '{}';
    v_mine   BIGINT := 0;
BEGIN
    IF p_cmid IS NOT NULL THEN
        SELECT x.conv, x.conv_seq, x.sender_seq INTO v_d
            FROM dedup x WHERE x.sender = p_dedup AND x.client_msg_id = p_cmid;
        IF FOUND THEN
            RETURN QUERY SELECT true, v_d.conv_seq, v_d.sender_seq, '{}'::BIGINT[],
                (SELECT m.msg FROM messages m WHERE m.conv = v_d.conv AND m.conv_seq = v_d.conv_seq);
            RETURN;
        END IF;
    END IF;
    INSERT INTO members (user_id, conv, read_seq)
        SELECT j, p_conv, 0 FROM unnest(p_joins) AS j ON CONFLICT DO NOTHING;
    INSERT INTO conv_heads AS h (conv, head) VALUES (p_conv, 1)
        ON CONFLICT (conv) DO UPDATE SET head = h.head + 1 RETURNING h.head INTO v_seq;
    p_msg := jsonb_set(p_msg, '{conv_seq}', to_jsonb(v_seq));
    INSERT INTO messages (conv, conv_seq, msg) VALUES (p_conv, v_seq, p_msg);
    INSERT INTO mentions (user_id, conv, seq)
        SELECT m, p_conv, v_seq FROM unnest(p_mentions) AS m ON CONFLICT DO NOTHING;
    IF p_mention_all THEN
        INSERT INTO gmentions (conv, seq) VALUES (p_conv, v_seq) ON CONFLICT DO NOTHING;
    END IF;
    -- The sender has read what they sent.
    INSERT INTO members AS mb (user_id, conv, read_seq) VALUES (p_sender, p_conv, v_seq)
        ON CONFLICT (user_id, conv) DO UPDATE SET read_seq = GREATEST(mb.read_seq, EXCLUDED.read_seq);
    IF p_group IS NOT NULL THEN
        UPDATE gmembers g SET read_seq = GREATEST(g.read_seq, v_seq)
            WHERE g.group_id = p_group AND g.user_id = p_sender;
    END IF;
    FOREACH v_r IN ARRAY p_recipients LOOP
        INSERT INTO inbox_heads AS ih (user_id, head) VALUES (v_r, 1)
            ON CONFLICT (user_id) DO UPDATE SET head = ih.head + 1 RETURNING ih.head INTO v_s;
        INSERT INTO inbox (user_id, seq, at_ms, conv, conv_seq, event)
            VALUES (v_r, v_s, p_now, p_conv, v_seq, NULL);
        v_seqs := v_seqs || v_s;
        IF v_r = p_sender THEN
            v_mine := v_s;
        END IF;
    END LOOP;
    -- A 1:1 message: the recipient's conversation may hold unread messages for them.
    IF left(p_conv, 1) = 'd' THEN
        INSERT INTO news (user_id, conv)
            SELECT r, p_conv FROM unnest(p_recipients) AS r WHERE r <> p_sender
            ON CONFLICT DO NOTHING;
    END IF;
    IF p_cmid IS NOT NULL THEN
        INSERT INTO dedup (sender, client_msg_id, conv, conv_seq, msg_id, sender_seq)
            VALUES (p_dedup, p_cmid, p_conv, v_seq, p_msg_id, v_mine);
    END IF;
    RETURN QUERY SELECT false, v_seq, v_mine, v_seqs, NULL::JSONB;
END
$$;
