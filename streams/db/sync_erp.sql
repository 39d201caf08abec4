-- Sync objects of OfiViaje. Runs after erp.sql and sync.sql. Idempotent.

SELECT ofisync.track('clientes');
SELECT ofisync.track('expedientes');
SELECT ofisync.track('billetes');
SELECT ofisync.track('documentos');

-- What Debezium may read: the synced tables, the mapping/config tables that feed the rules,
-- and the heartbeat. Document content and the CRM password are left out by column lists
-- (which PostgreSQL allows only on tables with the default replica identity).
CREATE OR REPLACE FUNCTION ofisync.published_tables() RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT 'public.clientes, public.expedientes, public.billetes, public.sucursales, '
        || 'public.vendedores, '
        || 'public.config_crm (id, usuario, sucursal_id, vendedor_id, tipo_expediente, serie), '
        || 'public.documentos (id, expediente_id, tipo, nombre_fichero, mime, estado_sync, '
        || 'crm_documento_id, error_sync, ofisync_origin, ofisync_deleted_at), '
        || 'ofisync.heartbeat'
$$;
