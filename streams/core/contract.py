"""The field contract (CONTRACT.md): which records sync, their two tables, links and numbers, and
which fields of which tables correspond. Declarations only; the rules read them."""

from __future__ import annotations

from collections.abc import Mapping

from streams.core.model import Entity, Field, Kind, Side, Via

CLIENT = Entity(
    name="client",
    erp_table="clientes",
    crm_table="accounts",
    erp_link="crm_id",
    crm_link="erp_id",
    fields=(
        Field("nombre", "name"),
        Field("nif", "tax_id"),
        Field("direccion", "street"),
        Field("codigo_postal", "postal_code"),
        Field("poblacion", "city"),
        Field("provincia", "region"),
        Field("pais", "country"),
        Field("contacto", "contact_name"),
        Field("cargo_contacto", "contact_title"),
        Field("telefono", "phone"),
        Field("movil", "mobile"),
        Field("email", "email"),
        Field("observaciones", "notes"),
    ),
    erp_opt_in="sincronizar_crm",
)

# CRM-own columns of a file (stage, priority, next_follow_up, crm_notes, lead_source) are in
# no Field: they never cross, so nothing can overwrite them.
FILE = Entity(
    name="file",
    erp_table="expedientes",
    crm_table="files",
    erp_link="crm_id",
    crm_link="erp_id",
    fields=(
        Field("cliente_id", "account_id", Kind.INT, via=Via.REF, ref="client"),
        Field(
            "numero",
            "file_number",
            via=Via.NUMBER,
            erp_target="crm_numero",
            crm_target="erp_number",
        ),
        Field("vendedor_id", "owner_username", Kind.INT, Kind.TEXT, via=Via.SELLER),
        Field("sucursal_id", "agency_id", Kind.INT, Kind.TEXT, via=Via.BRANCH),
        Field("descripcion", "title"),
        Field("destino", "destination"),
        Field("fecha_salida", "departure_date", Kind.DATE),
        Field("fecha_regreso", "return_date", Kind.DATE),
        Field("pasajeros", "travellers", Kind.INT),
        Field("importe_total", "total_amount", Kind.DECIMAL),
        Field("estado", "status", via=Via.FILE_STATUS),
    ),
    owner=Side.ERP,
    erp_number="numero",
    crm_number="file_number",
    erp_link_number="crm_numero",
    crm_link_number="erp_number",
)

# A CRM segment becomes a placeholder ticket (billete) in OfiViaje; nothing goes back.
SEGMENT = Entity(
    name="segment",
    erp_table="billetes",
    crm_table="segments",
    erp_link="crm_trayecto_id",
    crm_link=None,
    fields=(
        Field("expediente_id", "file_id", Kind.INT, via=Via.REF, ref="file"),
        Field("tipo", "kind", via=Via.TICKET_KIND),
        Field("origen", "origin"),
        Field("destino", "destination"),
        Field("fecha_salida", "departure_at", Kind.TIMESTAMP),
        Field("transportista", "carrier"),
        Field("numero_servicio", "service_number"),
        Field("pasajero", "passenger_name"),
        Field("importe", "fare", Kind.DECIMAL),
    ),
    sources=(Side.CRM,),
    erp_marker=(("origen_registro", "crm"),),
)

# An OfiViaje document marked G is uploaded to its CRM file (streams/apply/documents.py); its
# content is read from OfiViaje when the upload applies, never carried in a command.
DOCUMENT = Entity(
    name="document",
    erp_table="documentos",
    crm_table="documents",
    erp_link="crm_documento_id",
    crm_link="erp_document_id",
    fields=(
        Field("expediente_id", "file_id", Kind.INT, via=Via.REF, ref="file"),
        Field("tipo", "doc_type"),
        Field("nombre_fichero", "filename"),
        Field("mime", "mime_type"),
    ),
    sources=(Side.ERP,),
    erp_send_when=("estado_sync", "G"),
)

ENTITIES: Mapping[str, Entity] = {e.name: e for e in (CLIENT, FILE, SEGMENT, DOCUMENT)}

# A ticket captured from a PNR (billetes.origen_registro = 'pnr') makes the file's
# placeholders redundant; see rules.pnr_capture.
PNR_TABLE = "billetes"


def entity_for_table(side: Side, table: str) -> Entity | None:
    for e in ENTITIES.values():
        if e.table(side) == table and side in e.sources:
            return e
    return None
