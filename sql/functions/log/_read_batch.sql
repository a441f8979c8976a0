-- pgrelay._read_walk(...): the gapless, per-key-ordered read under every consumer, as an array
-- in walk order ((xid, position): the last element is the caller's next cursor).
-- pgrelay._read_batch(...): the same as rows in position order (delivery order).
--
-- The batch is the longest prefix of the candidate window (pgrelay._read_candidates, walk order)
-- that contains everything its members wait for. It is returned in position order; the
-- caller's new cursor is the greatest (xid, position) in it. If the very first candidate waits
-- for a message below the horizon but past the window, the window widens until it is reached,
-- so a small max_messages never stalls a reader (the batch may then exceed it). A candidate held
-- by a message above the horizon ends the batch: it waits for the horizon to pass.
-- p_skip lists positions a subscription already delivered ahead of its cursor: they are
-- neither returned nor waited for.
CREATE OR REPLACE FUNCTION pgrelay._read_walk(
    p_after_xid      xid8,
    p_after_position bigint,
    p_limit          integer,
    p_topics         text[],
    p_partition      integer,
    p_partitions     integer,
    p_skip           bigint[] DEFAULT '{}'
)
RETURNS pgrelay.message_record[]
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_window integer := p_limit;
    v_rows   pgrelay.message_record[];
    v_cut    bigint;
    v_count  bigint;
    v_held   boolean;
BEGIN
    LOOP
        -- A prefix of length n is valid when every row in it reaches no further than row n and
        -- no row in it is held. (xid, position) pairs are compared as one numeric.
        WITH c AS (
            SELECT r.message, r.held,
                   row_number() OVER (ORDER BY r.walk_xid, r.walk_position) AS rn,
                   r.walk_xid::text::numeric * 9223372036854775808 + r.walk_position AS walk,
                   coalesce(r.reach_xid::text::numeric * 9223372036854775808 + r.reach_position, 0) AS reach
            FROM pgrelay._read_candidates(p_after_xid, p_after_position, v_window, p_topics,
                                          p_partition, p_partitions, p_skip) AS r
        ), w AS (
            SELECT c.*, max(c.reach) OVER (ORDER BY c.rn) AS reached, bool_or(c.held) OVER (ORDER BY c.rn) AS any_held
            FROM c
        ), cut AS (
            SELECT coalesce(max(w.rn) FILTER (WHERE NOT w.any_held AND w.reached <= w.walk), 0) AS n,
                   count(*) AS total, coalesce(bool_or(w.held), false) AS held
            FROM w
        )
        SELECT (SELECT array_agg(w.message ORDER BY w.rn) FROM w WHERE w.rn <= cut.n), cut.n, cut.total, cut.held
          INTO v_rows, v_cut, v_count, v_held
          FROM cut;
        EXIT WHEN v_cut > 0 OR v_held OR v_count < v_window OR v_window >= 1000000;
        v_window := least(v_window * 4, 1000000);
    END LOOP;
    RETURN coalesce(v_rows, '{}');
END;
$$;

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
LANGUAGE sql
STABLE
AS $$
    SELECT m.*
    FROM unnest(pgrelay._read_walk(p_after_xid, p_after_position, p_limit, p_topics, p_partition, p_partitions, p_skip)) AS m
    ORDER BY m.position
$$;
