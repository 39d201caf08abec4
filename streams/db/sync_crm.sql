-- Sync objects of OfiCrmTravel. Runs after crm.sql and sync.sql. Idempotent.

SELECT ofisync.track('accounts');
SELECT ofisync.track('files');
SELECT ofisync.track('segments');
SELECT ofisync.track('documents');
-- The one write trigger function every table shared before each had its own.
DROP FUNCTION IF EXISTS ofisync.on_write();
SELECT ofisync.move_state_into_rows(ARRAY[
    ['accounts', 'erp_id', 'client', 'erp'],
    ['files', 'erp_id', 'file', 'erp'],
    ['segments', NULL, 'segment', 'crm'],
    ['documents', 'erp_document_id', 'document', 'erp']]);

-- An account OfiViaje creates is first looked for among the CRM's unlinked ones, by tax id.
CREATE INDEX IF NOT EXISTS accounts_ofisync_tax_key
    ON public.accounts (ofisync.tax_key(tax_id)) WHERE erp_id IS NULL;

-- What Debezium may read: the synced tables, agencies and users (mapping), the heartbeat.
-- Document content is left out by a column list.
CREATE OR REPLACE FUNCTION ofisync.published_tables() RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'public.accounts, public.files, public.segments, public.agencies, public.users, '
        || 'public.documents (id, file_id, doc_type, filename, mime_type, erp_document_id, '
        || 'uploaded_at, ofisync_origin, ofisync_deleted_at, ofisync_writer), '
        || 'ofisync.heartbeat'
$$;

-- Least privilege: what the sync's two roles may do in the CRM (see streams/secrets.py).
CREATE OR REPLACE FUNCTION ofisync.grant_sync_roles(p_sink text, p_capture text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public, ofisync TO %I, %I', p_sink, p_capture);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON public.accounts, public.files, '
                   'public.segments, public.documents TO %I', p_sink);
    EXECUTE format('GRANT SELECT ON public.agencies, public.users TO %I', p_sink);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA ofisync TO %I',
                   p_sink);
    -- UPDATE: a replay that writes rows back with their own ids moves the sequence past them.
    EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public, ofisync TO %I',
                   p_sink);
    EXECUTE format('GRANT SELECT ON public.accounts, public.files, public.segments, '
                   'public.agencies, public.users, public.documents TO %I', p_capture);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON ofisync.heartbeat TO %I', p_capture);
END
$$;
