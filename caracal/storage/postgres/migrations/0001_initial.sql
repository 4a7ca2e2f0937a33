-- Caracal schema version 1: the ledger, its head, checkpoints, registries, caches.
-- Applied by caracal.storage.postgres.migrations in one transaction, in the session's current schema.

-- The ledger: one row per event, ``line`` holds the exact canonical line bytes (without the newline) that
-- the file backend would write; verification, proofs and exports read only ``line``.
CREATE TABLE caracal_ledger (
    event_id bigint PRIMARY KEY CHECK (event_id > 0),
    line bytea NOT NULL
);

-- The head: one row, locked FOR UPDATE by every append step (it serializes appends; a row lock, unlike an
-- advisory lock, is scoped to this schema's table). ``last_event_id`` is the last committed event;
-- ``last_leaf`` its RFC 9162 leaf hash (informative).
CREATE TABLE caracal_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_event_id bigint NOT NULL DEFAULT 0 CHECK (last_event_id >= 0),
    last_leaf bytea
);
INSERT INTO caracal_head (singleton, last_event_id) VALUES (true, 0);

-- The ledger is append-only: rows are never updated or deleted by Caracal, and the database refuses it
-- too (an owner can still disable the trigger: tamper evidence, not tamper proofing, is verify's job).
CREATE FUNCTION caracal_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Caracal ledger is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER caracal_ledger_append_only BEFORE UPDATE OR DELETE ON caracal_ledger
    FOR EACH ROW EXECUTE FUNCTION caracal_ledger_append_only();
CREATE TRIGGER caracal_ledger_no_truncate BEFORE TRUNCATE ON caracal_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION caracal_ledger_append_only();

-- Signed checkpoints, one per tree size; ``seq`` is the order they were stored in (followers read "after
-- seq N"; inserts are serialized by a table lock so seq order is commit order). ``record`` is the JSON
-- record the file backend writes.
CREATE TABLE caracal_checkpoints (
    size bigint PRIMARY KEY CHECK (size >= 0),
    seq bigint NOT NULL UNIQUE,
    record bytea NOT NULL
);

-- Registries (agents, policies, prices, apikeys): one JSON document each. ``body`` NULL means "never
-- written" (the registry's default). ``version`` grows by one with every change.
CREATE TABLE caracal_documents (
    name text PRIMARY KEY,
    body bytea,
    version bigint NOT NULL DEFAULT 0
);

-- Sealed caches (Merkle frontier, budget snapshot): losing one costs a rebuild, never data.
CREATE TABLE caracal_caches (
    name text PRIMARY KEY,
    body bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Facts about this Caracal database (free-form key/value).
CREATE TABLE caracal_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO caracal_meta (key, value) VALUES ('created_at', clock_timestamp()::text);
