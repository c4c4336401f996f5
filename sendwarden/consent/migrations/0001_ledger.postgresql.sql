-- The append-only consent ledger: one global hash chain over every event.
CREATE TABLE consent_events (
    seq          bigint PRIMARY KEY,            -- position in the chain, 1, 2, 3 ...
    account      text NOT NULL,
    recipient    text NOT NULL,                 -- normalised: domain lower-case, IDNA
    list_id      text NOT NULL DEFAULT '',      -- '' = the account's mail in general
    kind         text NOT NULL CHECK (kind IN ('granted', 'revoked', 'refused')),
    occurred_at  timestamptz NOT NULL,
    confirmed_at timestamptz,
    recorded_at  timestamptz NOT NULL,
    recorded_by  text NOT NULL,
    method       text NOT NULL DEFAULT '',
    source       text NOT NULL DEFAULT '',
    ip           text NOT NULL DEFAULT '',
    evidence     text NOT NULL DEFAULT '',
    prev_hash    text NOT NULL,
    hash         text NOT NULL
);

-- The milter's question: the newest applicable event per (account, recipient, list).
CREATE INDEX consent_events_decision
    ON consent_events (account, recipient, list_id, occurred_at, seq) INCLUDE (kind);

-- Support staff's question: everything about one address.
CREATE INDEX consent_events_recipient ON consent_events (recipient);

-- The newest event's seq and hash: deleting the newest rows shows up against it, and
-- appends lock this row (SELECT ... FOR UPDATE) to keep the chain linear.
CREATE TABLE consent_chain (
    id        integer PRIMARY KEY CHECK (id = 1),
    last_seq  bigint NOT NULL,
    last_hash text NOT NULL
);
INSERT INTO consent_chain (id, last_seq, last_hash) VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');

-- Accidental edits fail loudly; deliberate ones (dropping these) are what verify catches.
CREATE FUNCTION consent_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'consent events are append-only';
END
$$;
CREATE TRIGGER consent_events_no_change BEFORE UPDATE OR DELETE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION consent_events_append_only();
CREATE TRIGGER consent_events_no_truncate BEFORE TRUNCATE ON consent_events
    FOR EACH STATEMENT EXECUTE FUNCTION consent_events_append_only();
