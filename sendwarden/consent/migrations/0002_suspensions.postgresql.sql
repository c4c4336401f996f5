-- Account suspensions and their history: staff decisions and abuse evidence, kept
-- in the durable database (Redis only caches the current state). Append-only: a
-- suspension is lifted by a 'lifted' row, never by deleting the 'suspended' one.
CREATE TABLE account_suspensions (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account text NOT NULL,
    action  text NOT NULL CHECK (action IN ('suspended', 'lifted')),
    at      text NOT NULL,                 -- UTC, YYYY-MM-DDTHH:MM:SSZ
    actor   text NOT NULL,                 -- the staff member, or "sendwarden rate limit"
    reason  text NOT NULL DEFAULT ''
);
CREATE INDEX account_suspensions_account ON account_suspensions (account, id);
CREATE FUNCTION account_suspensions_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'suspension history is append-only';
END
$$;
CREATE TRIGGER account_suspensions_no_change BEFORE UPDATE OR DELETE ON account_suspensions
    FOR EACH ROW EXECUTE FUNCTION account_suspensions_append_only();
