-- pgrelay._message_id(position): the id of the message at that log position, an RFC 9562
-- version-8 uuid: 60 random bits, then the variant, then the position (62 bits).
--
-- Unique because the position is (every message takes its own from message_position_seq, which
-- never cycles; 2^62 positions are out of reach); the random bits keep ids of different
-- databases (or of one database reinstalled) apart, as random ids did. It replaces
-- gen_random_uuid(), which reads the operating system's strong random source through OpenSSL on
-- every call: 5-10 us per message here, against well under 1 us for random() and the formatting.
-- The random bits come from random(), which is seeded per session from the strong source; a
-- session that calls setseed() repeats them, and its ids stay unique through the position.
-- LANGUAGE sql bodies, so that they are inlined into the INSERTs that call them.
--
-- pgrelay._message_id(position, random_high, random_low): the same id from two values of
-- random() drawn by the caller. Immutable, so a query that draws the randoms and takes the
-- position in one subquery can compute the id one level up without that level counting as
-- volatile: the CDC capture's INSERT ... SELECT then plans one subquery scan fewer.
CREATE OR REPLACE FUNCTION pgrelay._message_id(p_position bigint, p_random_high double precision, p_random_low double precision)
RETURNS uuid
LANGUAGE sql
IMMUTABLE
PARALLEL SAFE
AS $$
    SELECT encode(int8send((floor(p_random_high * 281474976710656)::int8 << 16) | 32768 | floor(p_random_low * 4096)::int8)
                  || int8send((p_position & 4611686018427387903) | (-9223372036854775808)::int8), 'hex')::uuid
$$;

-- The one-argument form is inlined into publish (and the batch writers), where each function in
-- the expression is set up again in every transaction: so it has as few as give the same layout
-- (16 function calls against 19 before): no floor() (the casts round instead: the
-- 12-bit draw is scaled by 4095 so that it cannot carry into the version, and a 48-bit draw that
-- rounds up to 2^48 shifts out of the word), and no mask on the position (positions are below
-- 2^62; above it the id would still be unique, only its variant bits would change).
CREATE OR REPLACE FUNCTION pgrelay._message_id(p_position bigint)
RETURNS uuid
LANGUAGE sql
VOLATILE
PARALLEL RESTRICTED
AS $$
    SELECT encode(int8send(((((random() * 281474976710656)::int8) << 16) | ((random() * 4095)::int8)) | 32768)
                  || int8send(p_position | (-9223372036854775808)::int8), 'hex')::uuid
$$;
