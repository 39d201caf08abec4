-- Sync objects of OfiViaje. Runs after erp.sql and sync.sql. Idempotent.

SELECT ofisync.track('clientes');
SELECT ofisync.track('expedientes');
SELECT ofisync.track('billetes');
SELECT ofisync.track('documentos');
-- The one write trigger function every table shared before each had its own.
DROP FUNCTION IF EXISTS ofisync.on_write();
SELECT ofisync.move_state_into_rows(ARRAY[
    ['clientes', 'crm_id', 'client', 'crm'],
    ['expedientes', 'crm_id', 'file', 'crm'],
    ['billetes', 'crm_trayecto_id', 'segment', 'crm'],
    ['documentos', NULL, 'document', 'erp']]);

-- A client the CRM creates is first looked for among OfiViaje's unlinked ones, by tax id.
CREATE INDEX IF NOT EXISTS clientes_ofisync_tax_key
    ON public.clientes (ofisync.tax_key(nif)) WHERE crm_id IS NULL;

-- The agency's choice: when real tickets are captured from a PNR, set the file's placeholder
-- tickets (made from CRM segments) to 0 automatically. Off by default: the agency may prefer
-- to do it by hand.
ALTER TABLE public.config_crm
    ADD COLUMN IF NOT EXISTS ofisync_zero_placeholders boolean NOT NULL DEFAULT false;

-- Numbers of files created from the CRM: the year, then a sequence marked C (from the CRM),
-- so they never collide with OfiViaje's own numbering. At least five digits, and more once the
-- sequence needs them (lpad alone cuts longer ones: the 100,000th file repeated the 10,000th).
CREATE SEQUENCE IF NOT EXISTS ofisync.file_number_seq;
CREATE OR REPLACE FUNCTION ofisync.next_file_number() RETURNS text LANGUAGE sql AS $$
    SELECT to_char(current_date, 'YYYY') || '/C' || lpad(n, greatest(5, length(n)), '0')
    FROM (SELECT nextval('ofisync.file_number_seq')::text AS n) s
$$;

-- Files that hold both placeholder tickets with an amount and tickets captured from a PNR:
-- the placeholders should be 0 (automatic when config_crm.ofisync_zero_placeholders is on).
CREATE OR REPLACE VIEW ofisync.files_with_placeholders_and_pnr AS
    SELECT e.id AS expediente_id, e.numero,
           count(*) FILTER (WHERE b.origen_registro = 'crm') AS placeholders,
           sum(b.importe) FILTER (WHERE b.origen_registro = 'crm') AS placeholder_amount,
           count(*) FILTER (WHERE b.origen_registro = 'pnr') AS pnr_tickets
    FROM public.expedientes e JOIN public.billetes b ON b.expediente_id = e.id
    GROUP BY e.id, e.numero
    HAVING count(*) FILTER (WHERE b.origen_registro = 'pnr') > 0
       AND coalesce(sum(b.importe) FILTER (WHERE b.origen_registro = 'crm'), 0) <> 0;

-- What Debezium may read: the synced tables, the mapping/config tables that feed the rules,
-- and the heartbeat. Document content and the CRM password are left out by column lists
-- (which PostgreSQL allows only on tables with the default replica identity).
CREATE OR REPLACE FUNCTION ofisync.published_tables() RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'public.clientes, public.expedientes, public.billetes, public.sucursales, '
        || 'public.vendedores, '
        || 'public.config_crm (id, usuario, sucursal_id, vendedor_id, tipo_expediente, serie, '
        || 'ofisync_zero_placeholders), '
        || 'public.documentos (id, expediente_id, tipo, nombre_fichero, mime, estado_sync, '
        || 'crm_documento_id, error_sync, ofisync_origin, ofisync_deleted_at, ofisync_writer), '
        || 'ofisync.heartbeat'
$$;

-- Least privilege: what the sync's two roles may do in OfiViaje (see streams/secrets.py).
-- The sink reads and writes the synced tables and the sync's schema; it cannot read config_crm
-- (the CRM password) nor change sellers or branches. The capture role reads what is published.
CREATE OR REPLACE FUNCTION ofisync.grant_sync_roles(p_sink text, p_capture text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public, ofisync TO %I, %I', p_sink, p_capture);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON public.clientes, public.expedientes, '
                   'public.billetes, public.documentos TO %I', p_sink);
    EXECUTE format('GRANT DELETE ON public.billetes TO %I', p_sink);  -- placeholders only
    EXECUTE format('GRANT SELECT ON public.sucursales, public.vendedores TO %I', p_sink);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ofisync TO %I',
                   p_sink);
    -- UPDATE: a replay that writes rows back with their own ids moves the sequence past them.
    EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, ofisync TO %I',
                   p_sink);
    EXECUTE format('GRANT SELECT ON public.clientes, public.expedientes, public.billetes, '
                   'public.sucursales, public.vendedores, public.config_crm, public.documentos '
                   'TO %I', p_capture);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON ofisync.heartbeat TO %I', p_capture);
END
$$;
