-- The append-only consent ledger: one global hash chain over every event.
CREATE TABLE consent_events (
    seq          INTEGER PRIMARY KEY,           -- position in the chain, 1, 2, 3 ...
    account      TEXT NOT NULL,
    recipient    TEXT NOT NULL,                 -- normalised: domain lower-case, IDNA
    list_id      TEXT NOT NULL DEFAULT '',      -- '' = the account's mail in general
    kind         TEXT NOT NULL CHECK (kind IN ('granted', 'revoked', 'refused')),
    occurred_at  TEXT NOT NULL,                 -- UTC, YYYY-MM-DDTHH:MM:SS.ffffffZ
    confirmed_at TEXT,
    recorded_at  TEXT NOT NULL,
    recorded_by  TEXT NOT NULL,
    method       TEXT NOT NULL DEFAULT '',
    source       TEXT NOT NULL DEFAULT '',
    ip           TEXT NOT NULL DEFAULT '',
    evidence     TEXT NOT NULL DEFAULT '',
    prev_hash    TEXT NOT NULL,
    hash         TEXT NOT NULL
);

-- The milter's question: the newest applicable event per (account, recipient, list).
-- Covering (seq is the rowid, implicit in every index), so no table lookups.
CREATE INDEX consent_events_decision
    ON consent_events (account, recipient, list_id, occurred_at, kind);

-- Support staff's question: everything about one address.
CREATE INDEX consent_events_recipient ON consent_events (recipient);

-- The newest event's seq and hash: deleting the newest rows shows up against it, and
-- appends lock it to keep the chain linear.
CREATE TABLE consent_chain (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    last_seq  INTEGER NOT NULL,
    last_hash TEXT NOT NULL
);
INSERT INTO consent_chain (id, last_seq, last_hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Accidental edits fail loudly; deliberate ones (dropping these) are what verify catches.
CREATE TRIGGER consent_events_no_update BEFORE UPDATE ON consent_events
BEGIN
    SELECT RAISE(ABORT, 'consent events are append-only');
END;
CREATE TRIGGER consent_events_no_delete BEFORE DELETE ON consent_events
BEGIN
    SELECT RAISE(ABORT, 'consent events are append-only');
END;
