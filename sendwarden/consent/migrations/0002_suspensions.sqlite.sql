-- Account suspensions and their history: staff decisions and abuse evidence, kept
-- in the durable database (Redis only caches the current state). Append-only: a
-- suspension is lifted by a 'lifted' row, never by deleting the 'suspended' one.
CREATE TABLE account_suspensions (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('suspended', 'lifted')),
    at      TEXT NOT NULL,                 -- UTC, YYYY-MM-DDTHH:MM:SSZ
    actor   TEXT NOT NULL,                 -- the staff member, or "sendwarden rate limit"
    reason  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX account_suspensions_account ON account_suspensions (account, id);
CREATE TRIGGER account_suspensions_no_update BEFORE UPDATE ON account_suspensions
BEGIN
    SELECT RAISE(ABORT, 'suspension history is append-only');
END;
CREATE TRIGGER account_suspensions_no_delete BEFORE DELETE ON account_suspensions
BEGIN
    SELECT RAISE(ABORT, 'suspension history is append-only');
END;
