-- The sync service's own objects, common to both databases. Idempotent.
-- Everything lives in schema `ofisync` or in columns prefixed `ofisync_` on synced tables.

CREATE SCHEMA IF NOT EXISTS ofisync;

-- Written by Debezium's heartbeat action so a quiet database never retains WAL.
CREATE TABLE IF NOT EXISTS ofisync.heartbeat (
    id int PRIMARY KEY,
    beat_at timestamptz NOT NULL DEFAULT now()
);

-- Exactly-once effect: the newest source position applied per source record, written in
-- the same transaction as the change it guards. A redelivered change at or below it is a no-op.
CREATE TABLE IF NOT EXISTS ofisync.applied (
    source text NOT NULL,          -- 'erp' or 'crm': where the change was captured
    entity text NOT NULL,          -- source table
    source_key text NOT NULL,      -- source primary key
    lsn bigint NOT NULL,
    commit_us bigint NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (source, entity, source_key)
);

-- Per-field logical clocks of synced rows: which change set each field's current value.
-- {"field": "x:<xid>"} for a local write (its commit time is read with
-- pg_xact_commit_timestamp), {"field": "t:<µs>"} for a value applied by the sync, stamped
-- with the source commit time. Conflicts between both sides are decided on these.
CREATE TABLE IF NOT EXISTS ofisync.field_clock (
    tbl text NOT NULL,
    pk text NOT NULL,
    clocks jsonb NOT NULL DEFAULT '{}',
    PRIMARY KEY (tbl, pk)
);

-- Conflicts found and how they were resolved.
CREATE TABLE IF NOT EXISTS ofisync.conflicts (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    entity text NOT NULL,
    target_key text NOT NULL,
    field text NOT NULL,
    incoming_source text NOT NULL,
    incoming_value text,
    incoming_commit_us bigint NOT NULL,
    local_value text,
    local_commit_us bigint,
    policy text NOT NULL,
    winner text NOT NULL            -- 'incoming' or 'local'
);

-- Attempts to change a field that the other side owns (recorded on the side where the
-- attempt was made, when the field is restored). One row per change and field: a redelivered
-- change records nothing twice.
CREATE TABLE IF NOT EXISTS ofisync.lock_violations (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    detected_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    entity text NOT NULL,
    record_key text NOT NULL,
    field text NOT NULL,
    attempted_value text,
    restored_value text,
    attempted_by text
);
ALTER TABLE ofisync.lock_violations ADD COLUMN IF NOT EXISTS source_lsn bigint;
CREATE UNIQUE INDEX IF NOT EXISTS lock_violations_once
    ON ofisync.lock_violations (entity, record_key, field, source_lsn);

-- Changes that wait for their parent (a file for its client, a ticket for its file) to be
-- linked on this side. Never dropped: retried with back-off, and at once when a parent is
-- linked; a later change of the same record waits behind the earlier one.
CREATE TABLE IF NOT EXISTS ofisync.parked (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    parked_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    source text NOT NULL,
    entity text NOT NULL,
    source_key text NOT NULL,
    lsn bigint NOT NULL,
    parent_entity text,
    parent_key text,             -- the parent's id on the change's source side
    waiting_for text NOT NULL,   -- in words, for people
    command bytea NOT NULL,      -- the encoded command (streams/codec.py)
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (source, entity, source_key, lsn)
);
CREATE INDEX IF NOT EXISTS parked_parent ON ofisync.parked (parent_entity, parent_key);

-- On every write to a synced table: copy the writer's origin into the row, so decode can drop
-- the sync's own writes exactly (no echoes); for local writes, name the writer (database user
-- and application name, for the lock-violation record) and stamp the changed fields' clocks
-- with this transaction's id. The sink sets `ofisync.origin` (on its own connection, or SET LOCAL).
-- SECURITY DEFINER: the applications' own roles need no rights on the ofisync schema.
CREATE OR REPLACE FUNCTION ofisync.on_write() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, ofisync AS $$
DECLARE
    writer text := nullif(current_setting('ofisync.origin', true), '');
    changed jsonb;
    new_row jsonb;
    old_row jsonb;
    clock text;
BEGIN
    NEW.ofisync_origin := writer;
    NEW.ofisync_writer := CASE WHEN writer IS NULL THEN
        session_user || coalesce('/' || nullif(current_setting('application_name', true), ''), '')
    END;
    IF writer IS NULL AND TG_OP = 'UPDATE' THEN
        -- Built once per row: inside the query they were built again for every column, which
        -- made this trigger 2.4x dearer for every update an application makes.
        new_row := to_jsonb(NEW);
        old_row := to_jsonb(OLD);
        clock := 'x:' || (txid_current() % 4294967296)::text;
        SELECT jsonb_object_agg(n.key, clock)
          INTO changed
          FROM jsonb_each(new_row) n
         WHERE n.value IS DISTINCT FROM old_row -> n.key
           AND n.key NOT LIKE 'ofisync\_%';
        IF changed IS NOT NULL THEN
            INSERT INTO ofisync.field_clock AS fc (tbl, pk, clocks)
            VALUES (TG_TABLE_NAME, new_row ->> TG_ARGV[0], changed)
            ON CONFLICT (tbl, pk) DO UPDATE SET clocks = fc.clocks || excluded.clocks;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

-- Adds the sync columns and the write trigger to one synced table.
CREATE OR REPLACE FUNCTION ofisync.track(p_table regclass, p_pk text DEFAULT 'id')
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_origin text', p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_deleted_at timestamptz',
                   p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_writer text', p_table);
    EXECUTE format('DROP TRIGGER IF EXISTS ofisync_on_write ON %s', p_table);
    EXECUTE format('CREATE TRIGGER ofisync_on_write BEFORE INSERT OR UPDATE ON %s '
                   'FOR EACH ROW EXECUTE FUNCTION ofisync.on_write(%L)', p_table, p_pk);
END
$$;

-- Creates or updates a publication to exactly the given table list (idempotent, safe while
-- a replication slot streams from it).
CREATE OR REPLACE FUNCTION ofisync.publish(p_name text, p_tables text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_publication WHERE pubname = p_name) THEN
        EXECUTE format('ALTER PUBLICATION %I SET TABLE %s', p_name, p_tables);
    ELSE
        EXECUTE format('CREATE PUBLICATION %I FOR TABLE %s', p_name, p_tables);
    END IF;
END
$$;

-- A clock entry ("x:<xid>" or "t:<µs>") as µs since the epoch. VOLATILE like
-- pg_xact_commit_timestamp, so that PostgreSQL inlines it into the query that calls it: called
-- once per clock instead, it was most of the time of the sink's read of a batch's rows.
CREATE OR REPLACE FUNCTION ofisync.clock_us(c text) RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN c LIKE 't:%' THEN substr(c, 3)::bigint
        WHEN c LIKE 'x:%' THEN
            (extract(epoch FROM pg_xact_commit_timestamp(substr(c, 3)::xid)) * 1000000)::bigint
    END
$$;

-- All field clocks of one row, resolved to µs. The sink reads them in its own query now (a
-- set-returning function calling a volatile one is not inlined; streams/working.py); this stays
-- for workers of an earlier version still running while a deployment upgrades them.
CREATE OR REPLACE FUNCTION ofisync.row_clocks(p_tbl text, p_pk text)
RETURNS TABLE (field text, commit_us bigint) LANGUAGE sql STABLE AS $$
    SELECT e.key, ofisync.clock_us(e.value)
    FROM ofisync.field_clock fc, jsonb_each_text(fc.clocks) e
    WHERE fc.tbl = p_tbl AND fc.pk = p_pk
$$;
