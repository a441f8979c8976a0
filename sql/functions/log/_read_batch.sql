-- pgrelay._read_batch(...): the gapless, per-key-ordered read under every consumer.
--
-- The batch is the longest prefix of the candidate window (pgrelay._read_candidates, walk order)
-- that contains everything its members wait for. It is returned in position order; the
-- caller's new cursor is the greatest (xid, position) in it. If the very first candidate waits
-- for a message below the horizon but past the window, the window widens until it is reached,
-- so a small max_messages never stalls a reader (the batch may then exceed it). A candidate held
-- by a message above the horizon ends the batch: it waits for the horizon to pass.
-- p_skip lists positions a subscription already delivered ahead of its cursor: they are
-- neither returned nor waited for.
CREATE OR REPLACE FUNCTION pgrelay._read_batch(
    p_after_xid      xid8,
    p_after_position bigint,
    p_limit          integer,
    p_topics         text[],
    p_partition      integer,
    p_partitions     integer,
    p_skip           bigint[] DEFAULT '{}'
)
RETURNS SETOF pgrelay.message_record
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_window     integer := p_limit;
    v_rows       pgrelay.message_record[];
    v_cut        integer;
    v_count      integer;
    v_held       boolean;
    v_reach_xid  xid8;
    v_reach_pos  bigint;
    r            record;
BEGIN
    LOOP
        v_rows := '{}';
        v_cut := 0;
        v_count := 0;
        v_held := false;
        v_reach_xid := '0';
        v_reach_pos := 0;
        FOR r IN SELECT * FROM pgrelay._read_candidates(p_after_xid, p_after_position, v_window, p_topics,
                                                         p_partition, p_partitions, p_skip) LOOP
            v_count := v_count + 1;
            IF r.held THEN
                v_held := true;
                EXIT;
            END IF;
            v_rows := v_rows || r.message;
            IF r.reach_xid IS NOT NULL AND (r.reach_xid, r.reach_position) > (v_reach_xid, v_reach_pos) THEN
                v_reach_xid := r.reach_xid;
                v_reach_pos := r.reach_position;
            END IF;
            IF (v_reach_xid, v_reach_pos) <= (r.walk_xid, r.walk_position) THEN
                v_cut := v_count;
            END IF;
        END LOOP;
        EXIT WHEN v_cut > 0 OR v_held OR v_count < v_window OR v_window >= 1000000;
        v_window := least(v_window * 4, 1000000);
    END LOOP;

    RETURN QUERY SELECT m.* FROM unnest(v_rows[1:v_cut]) AS m ORDER BY m.position;
END;
$$;
