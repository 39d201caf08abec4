-- The sync service's own objects, common to both databases. Idempotent.
-- Everything lives in schema `ofisync` or in columns prefixed `ofisync_` on synced tables.
--
-- What the sink keeps about a record it applies lives in the record's own row, so an applied
-- change writes that row and nothing else (streams/apply/unit_of_work.py):
--   ofisync_clocks        {"column": "x:<xid>" | "t:<µs>"}: which change set each field's
--                         value (a person's transaction id, resolved to its commit time with
--                         pg_xact_commit_timestamp; or the commit time of the change a value
--                         the sync applied came from). Conflicts are decided on them.
--   ofisync_base          for a person's edit, the clocks the fields it changed had before.
--   ofisync_applied_lsn   the source position of the newest change applied to the row: a
--                         redelivered change at or below it does nothing.
--   ofisync_deleted_at    set when the other side's record was deleted: the row is unlinked and
--                         stays out of the sync until a person clears it.
--   ofisync_unlinked_from the other side's id the row was linked to before that delete.
--   ofisync_origin        who wrote the row last when it was not a person (the sink: 'sync'),
--   ofisync_writer        and when it was a person, who (database user/application).

CREATE SCHEMA IF NOT EXISTS ofisync;

-- Written by Debezium's heartbeat action so a quiet database never retains WAL.
CREATE TABLE IF NOT EXISTS ofisync.heartbeat (
    id int PRIMARY KEY,
    beat_at timestamptz NOT NULL DEFAULT now()
);

-- Conflicts found and how they were resolved. One row per change and field: a change applied
-- twice (redelivered after a crash) records nothing twice.
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
DELETE FROM ofisync.conflicts c USING ofisync.conflicts d
 WHERE c.id > d.id AND (c.entity, c.target_key, c.field, c.incoming_source, c.incoming_commit_us)
                     = (d.entity, d.target_key, d.field, d.incoming_source, d.incoming_commit_us);
CREATE UNIQUE INDEX IF NOT EXISTS conflicts_once
    ON ofisync.conflicts (entity, target_key, field, incoming_source, incoming_commit_us);

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

-- Changes that wait: for their parent (a file for its client, a ticket for its file) to be
-- linked on this side, or for a person (a refusal, a record that matches several). Never
-- dropped: retried with back-off, and at once when a parent is linked; a later change of the
-- same record waits behind the earlier one.
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
    command bytea NOT NULL,      -- the encoded command (streams/core/codec.py)
    attempts int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (source, entity, source_key, lsn)
);
CREATE INDEX IF NOT EXISTS parked_parent ON ofisync.parked (parent_entity, parent_key);

-- A clock entry ("x:<xid>" or "t:<µs>") as µs since the epoch. VOLATILE like
-- pg_xact_commit_timestamp, so that PostgreSQL inlines it into the query that calls it.
CREATE OR REPLACE FUNCTION ofisync.clock_us(c text) RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN c LIKE 't:%' THEN substr(c, 3)::bigint
        WHEN c LIKE 'x:%' THEN
            (extract(epoch FROM pg_xact_commit_timestamp(substr(c, 3)::xid)) * 1000000)::bigint
    END
$$;

-- On every write to a synced table: copy the writer's origin into the row (the sink sets
-- `ofisync.origin` on its connections; on PostgreSQL 16+ its transactions also carry a
-- replication origin, so they are never sent at all); for a person's write, name the writer
-- (database user and application name, for the lock-violation record), stamp the fields it
-- changed with this transaction's id and keep, in ofisync_base, the clocks of the values they
-- had: which version of each field the person changed (streams/core/conflicts.py). The other
-- fields' clocks are resolved to commit times on the way, so a captured row carries no
-- transaction id but its own. The sink writes the clocks of the fields it sets itself.
--
-- Each synced table has a trigger function of its own, made by `ofisync.track` from the
-- table's columns: it compares them one by one, where walking both rows as jsonb doubles the
-- cost of a person's UPDATE (docs/performance.md). A column dropped, renamed or retyped under
-- it makes it walk the rows instead (`ofisync.walk_clocks`), so the applications' writes never
-- fail for it; `ofisync doctor` then says to prepare the database again.

-- A clock entry as a person's write leaves it: another transaction's "x:" resolved to its commit
-- time; this transaction's own stays "x:", as it has no commit time yet (its own later writes
-- of the row read it as theirs: streams/core/rules.py).
CREATE OR REPLACE FUNCTION ofisync.settled(entry text, clock text) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN entry LIKE 'x:%' AND entry <> clock THEN 't:' || ofisync.clock_us(entry)
                ELSE entry END
$$;

-- The columns a write trigger compares: the table's own, not the sync's.
CREATE OR REPLACE FUNCTION ofisync.stamped_columns(p_table regclass) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(attname::text ORDER BY attnum), '{}') FROM pg_attribute
     WHERE attrelid = p_table AND attnum > 0 AND NOT attisdropped AND attgenerated = ''
       AND attname NOT LIKE 'ofisync\_%'
$$;

-- What a person's update leaves in the row's clocks and base, found by walking both rows as
-- jsonb: the way that holds whatever the table's columns are now.
CREATE OR REPLACE FUNCTION ofisync.walk_clocks(
    new_row jsonb, old_row jsonb, old_clocks jsonb, clock text, OUT clocks jsonb, OUT base jsonb)
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce((SELECT jsonb_object_agg(e.key, ofisync.settled(e.value, clock))
                       FROM jsonb_each_text(old_clocks) e), '{}')
               || coalesce(jsonb_object_agg(n.key, clock), '{}'),
           nullif(jsonb_strip_nulls(
               jsonb_object_agg(n.key, ofisync.settled(old_clocks ->> n.key, clock))), '{}')
      FROM jsonb_each(new_row) n
     WHERE n.value IS DISTINCT FROM old_row -> n.key AND n.key NOT LIKE 'ofisync\_%'
$$;

-- Makes the write trigger's function for one table, comparing `columns` one by one.
-- SECURITY DEFINER: the applications' own roles need no rights on the ofisync schema.
CREATE OR REPLACE FUNCTION ofisync.make_write_trigger(p_function text, columns text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    keys text;
    changed text;
    base text;
    settled text;
BEGIN
    SELECT string_agg(quote_literal(c), ', '),
           string_agg(format('CASE WHEN NEW.%I IS DISTINCT FROM OLD.%I THEN clock END', c, c),
                      ', '),
           string_agg(format('CASE WHEN NEW.%I IS DISTINCT FROM OLD.%I'
                             ' THEN ofisync.settled(OLD.ofisync_clocks ->> %L, clock) END',
                             c, c, c), ', '),
           string_agg(format('ofisync.settled(OLD.ofisync_clocks ->> %L, clock)', c), ', ')
      INTO keys, changed, base, settled
      FROM unnest(columns) c;
    EXECUTE format($template$
CREATE OR REPLACE FUNCTION ofisync.%1$I() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, ofisync AS $function$
DECLARE
    writer text := nullif(current_setting('ofisync.origin', true), '');
    clock text;
BEGIN
    NEW.ofisync_origin := writer;
    IF writer IS NOT NULL THEN
        NEW.ofisync_writer := NULL;
        RETURN NEW;
    END IF;
    NEW.ofisync_writer := session_user
        || coalesce('/' || nullif(current_setting('application_name', true), ''), '');
    IF TG_OP = 'INSERT' THEN
        NEW.ofisync_clocks := NULL;
        NEW.ofisync_base := NULL;
        NEW.ofisync_applied_lsn := NULL;
        NEW.ofisync_unlinked_from := NULL;
        RETURN NEW;
    END IF;
    -- A person's edit keeps what the sync knows of the row. Clearing the deleted flag re-links
    -- the record (it crosses as new): it forgets the id it was linked to before.
    NEW.ofisync_applied_lsn := OLD.ofisync_applied_lsn;
    NEW.ofisync_unlinked_from := CASE WHEN NEW.ofisync_deleted_at IS NOT NULL
                                      THEN OLD.ofisync_unlinked_from END;
    clock := 'x:' || (txid_current() %% 4294967296)::text;
    BEGIN
        NEW.ofisync_base := nullif(jsonb_strip_nulls(jsonb_object(ARRAY[%2$s]::text[],
                                                                  ARRAY[%4$s]::text[])), '{}');
        -- Only another transaction's "x:" entries need resolving.
        NEW.ofisync_clocks := CASE WHEN OLD.ofisync_clocks::text LIKE '%%"x:%%'
                                   THEN jsonb_strip_nulls(jsonb_object(ARRAY[%2$s]::text[],
                                                                       ARRAY[%5$s]::text[]))
                                   ELSE coalesce(OLD.ofisync_clocks, '{}') END
                              || jsonb_strip_nulls(jsonb_object(ARRAY[%2$s]::text[],
                                                                ARRAY[%3$s]::text[]));
    EXCEPTION WHEN undefined_column OR datatype_mismatch THEN
        -- The table changed since this function was made (`ofisync doctor` says so).
        SELECT w.clocks, w.base INTO NEW.ofisync_clocks, NEW.ofisync_base
          FROM ofisync.walk_clocks(to_jsonb(NEW), to_jsonb(OLD), OLD.ofisync_clocks, clock) w;
    END;
    RETURN NEW;
END
$function$ $template$, p_function, keys, changed, base, settled);
    EXECUTE format('COMMENT ON FUNCTION ofisync.%I() IS %L', p_function,
                   'ofisync write trigger of columns ' || array_to_string(columns, ','));
END
$$;

-- Adds the sync columns and the write trigger to one synced table.
CREATE OR REPLACE FUNCTION ofisync.track(p_table regclass)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    trigger_function text := 'on_write_' || (SELECT relname FROM pg_class WHERE oid = p_table);
BEGIN
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_origin text', p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_deleted_at timestamptz',
                   p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_writer text', p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_clocks jsonb', p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_base jsonb', p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_applied_lsn bigint', p_table);
    EXECUTE format('ALTER TABLE %s ADD COLUMN IF NOT EXISTS ofisync_unlinked_from bigint',
                   p_table);
    EXECUTE format('CREATE INDEX IF NOT EXISTS %I ON %s (ofisync_unlinked_from)'
                   ' WHERE ofisync_unlinked_from IS NOT NULL',
                   replace(p_table::text, '.', '_') || '_ofisync_unlinked_from', p_table);
    PERFORM ofisync.make_write_trigger(trigger_function, ofisync.stamped_columns(p_table));
    EXECUTE format('DROP TRIGGER IF EXISTS ofisync_on_write ON %s', p_table);
    -- Not run for a write of the sync's to a row the sync last wrote under the same mark: it
    -- would leave such a row as it is, and running it costs a quarter of the sink's UPDATE.
    EXECUTE format('CREATE TRIGGER ofisync_on_write BEFORE INSERT OR UPDATE ON %s '
                   'FOR EACH ROW WHEN (NEW.ofisync_writer IS NOT NULL'
                   ' OR NEW.ofisync_origin IS NULL'
                   ' OR NEW.ofisync_origin IS DISTINCT FROM'
                   ' nullif(current_setting(''ofisync.origin'', true), ''''))'
                   ' EXECUTE FUNCTION ofisync.%I()', p_table, trigger_function);
END
$$;

-- The synced tables whose write trigger compares other columns than the table has now: people's
-- writes to them walk the rows, slower, until the database is prepared again.
CREATE OR REPLACE FUNCTION ofisync.stale_write_triggers() RETURNS SETOF regclass
LANGUAGE sql STABLE AS $$
    SELECT t.tgrelid::regclass FROM pg_trigger t
     WHERE t.tgname = 'ofisync_on_write'
       AND obj_description(t.tgfoid, 'pg_proc') IS DISTINCT FROM
           'ofisync write trigger of columns '
           || array_to_string(ofisync.stamped_columns(t.tgrelid), ',')
$$;

-- Makes the stale write triggers' functions again for the tables' current columns, and says
-- which. Replacing a function takes no lock on its table, so it runs whenever the database is
-- prepared, even where the sync is writing.
CREATE OR REPLACE FUNCTION ofisync.remake_stale_write_triggers() RETURNS SETOF regclass
LANGUAGE plpgsql AS $$
DECLARE
    stale record;
BEGIN
    FOR stale IN SELECT t.tgrelid::regclass AS tbl, p.proname::text AS function
                   FROM pg_trigger t JOIN pg_proc p ON p.oid = t.tgfoid
                  WHERE t.tgname = 'ofisync_on_write'
                    AND t.tgrelid IN (SELECT ofisync.stale_write_triggers())
    LOOP
        PERFORM ofisync.make_write_trigger(stale.function, ofisync.stamped_columns(stale.tbl));
        RETURN NEXT stale.tbl;
    END LOOP;
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

-- The sink's reads resolve a row's clocks with a subquery (RESOLVED_CLOCKS in
-- streams/apply/statements.py), which PostgreSQL plans into the read itself.
DROP FUNCTION IF EXISTS ofisync.clocks_us(jsonb);

-- A tax id as two records are matched on (streams/core/matching.py says the same in Python):
-- upper case, without spaces, dashes, dots and slashes, and without a two-letter country prefix
-- in front of a nine-character Spanish NIF/NIE/CIF ("es-b 1234567-8" → "B12345678").
CREATE OR REPLACE FUNCTION ofisync.tax_key(t text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT nullif(CASE WHEN k ~ '^[A-Z]{2}[0-9A-Z]{9}$' THEN substr(k, 3) ELSE k END, '')
    FROM (SELECT upper(regexp_replace(t, '[\s\-./]', '', 'g')) AS k) s
$$;

-- The replication origins the sink's connections mark their transactions with (PostgreSQL 16+),
-- created by the admin step (streams/apply/connections.py names them), with the rights the sink
-- needs to take one (it stays a non-superuser). One origin per session at a time: a pool per
-- database. Only on PostgreSQL 16+, where pgoutput can leave their transactions out.
CREATE OR REPLACE FUNCTION ofisync.prepare_origins(p_sink text, p_names text[])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    origin text;
BEGIN
    FOREACH origin IN ARRAY p_names LOOP
        IF pg_replication_origin_oid(origin) IS NULL THEN
            PERFORM pg_replication_origin_create(origin);
        END IF;
    END LOOP;
    EXECUTE format('GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text) TO %I',
                   p_sink);
    EXECUTE format('GRANT EXECUTE ON FUNCTION pg_replication_origin_session_reset() TO %I',
                   p_sink);
    -- Only to set the origin timestamp back to none in each write transaction: a session's origin
    -- otherwise gives every transaction the commit time of its first (connections.py).
    EXECUTE format('GRANT EXECUTE ON FUNCTION pg_replication_origin_xact_setup(pg_lsn, timestamptz)'
                   ' TO %I', p_sink);
END
$$;

-- From the schema of earlier versions: field clocks and applied positions kept in tables of
-- their own move into the rows, the clocks resolved to commit times (run by the admin step; a
-- no-op once done). p_targets lists (table, link column, entity, source side) of the synced
-- tables here; a table the sink never writes has no link column.
CREATE OR REPLACE FUNCTION ofisync.move_state_into_rows(p_targets text[][])
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    t text[];
BEGIN
    PERFORM set_config('ofisync.origin', 'upgrade', true);  -- not a person's edit: not sent
    IF to_regclass('ofisync.field_clock') IS NOT NULL THEN
        FOREACH t SLICE 1 IN ARRAY p_targets LOOP
            EXECUTE format(
                'UPDATE public.%I r SET ofisync_clocks = (SELECT jsonb_object_agg(e.key,'
                '   ''t:'' || ofisync.clock_us(e.value)) FROM jsonb_each_text(fc.clocks) e)'
                ' FROM ofisync.field_clock fc'
                ' WHERE fc.tbl = %L AND fc.pk = r.id::text AND r.ofisync_clocks IS NULL',
                t[1], t[1]);
        END LOOP;
        DROP TABLE ofisync.field_clock;
    END IF;
    IF to_regclass('ofisync.applied') IS NOT NULL THEN
        FOREACH t SLICE 1 IN ARRAY p_targets LOOP
            CONTINUE WHEN t[2] IS NULL;
            EXECUTE format(
                'UPDATE public.%I r SET ofisync_applied_lsn = a.lsn FROM ofisync.applied a'
                ' WHERE a.source = %L AND a.entity = %L AND a.source_key = r.%I::text'
                '   AND r.ofisync_applied_lsn IS NULL',
                t[1], t[4], t[3], t[2]);
        END LOOP;
        DROP TABLE ofisync.applied;
    END IF;
    DROP FUNCTION IF EXISTS ofisync.row_clocks(text, text);
END
$$;
