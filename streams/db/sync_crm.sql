-- Sync objects of OfiCrmTravel. Runs after crm.sql and sync.sql. Idempotent.

SELECT ofisync.track('accounts');
SELECT ofisync.track('files');
SELECT ofisync.track('segments');
SELECT ofisync.track('documents');

-- What Debezium may read: the synced tables, agencies and users (mapping), the heartbeat.
-- Document content is left out by a column list.
CREATE OR REPLACE FUNCTION ofisync.published_tables() RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'public.accounts, public.files, public.segments, public.agencies, public.users, '
        || 'public.documents (id, file_id, doc_type, filename, mime_type, erp_document_id, '
        || 'uploaded_at, ofisync_origin, ofisync_deleted_at, ofisync_writer), '
        || 'ofisync.heartbeat'
$$;
