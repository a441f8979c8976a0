-- pgrelay._raise(code, fn, argument, problem): raise a pgrelay error.
-- Every validation failure goes through here so messages share one shape:
--   "<function>: argument <name> <problem>"
-- The SQLSTATE is one of pgrelay's PRxxx codes (see README, "Errors"); the argument name is
-- also put in the COLUMN field so clients read it without parsing the message.
CREATE OR REPLACE FUNCTION pgrelay._raise(p_code text, p_function text, p_argument text, p_problem text)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = p_code,
        MESSAGE = format('%s: argument %s %s', p_function, p_argument, p_problem),
        COLUMN = p_argument;
END;
$$;
