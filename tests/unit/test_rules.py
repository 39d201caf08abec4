"""Rules: which changes cross, which fields, full pushes vs field updates."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.core.contract import CLIENT, DOCUMENT, FILE, SEGMENT, entity_for_table
from streams.core.model import ChangeEvent, Command, CommandOp, Op, Side
from streams.core.rules import Invalid, Skip, bases_of, pnr_capture, to_command

ERP_ROW = {f.erp: None for f in CLIENT.fields} | {
    "id": 5,
    "nombre": "Ana",
    "sincronizar_crm": True,
    "crm_id": None,
    "email": "a@x.es",
}
CRM_ROW = {f.crm: None for f in CLIENT.fields} | {"id": 9, "name": "Cuenta", "erp_id": None}


def event(
    side: Side, op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> ChangeEvent:
    table = "clientes" if side is Side.ERP else "accounts"
    key = str((after or before or {}).get("id"))
    return ChangeEvent(side, "public", table, op, key, before, after, 100, 200, None)


def test_an_erp_create_is_a_full_push_of_mapped_fields_only() -> None:
    cmd = to_command(event(Side.ERP, Op.CREATE, None, ERP_ROW), CLIENT)
    assert isinstance(cmd, Command)
    assert cmd.full and cmd.op is CommandOp.UPSERT and cmd.target is Side.CRM
    assert {v.field for v in cmd.values} == {f.crm for f in CLIENT.fields}
    assert dict((v.field, v.after) for v in cmd.values)["name"] == "Ana"
    assert cmd.link_key is None and cmd.source_key == "5"


def test_an_unchecked_client_does_not_cross() -> None:
    row = ERP_ROW | {"sincronizar_crm": False}
    assert isinstance(to_command(event(Side.ERP, Op.CREATE, None, row), CLIENT), Skip)
    assert isinstance(
        to_command(event(Side.ERP, Op.UPDATE, row, row | {"email": "b"}), CLIENT), Skip
    )


def test_checking_the_box_pushes_everything() -> None:
    before = ERP_ROW | {"sincronizar_crm": False}
    cmd = to_command(event(Side.ERP, Op.UPDATE, before, ERP_ROW), CLIENT)
    assert isinstance(cmd, Command) and cmd.full


def test_an_update_carries_its_before_image_and_marks_changed_fields() -> None:
    after = ERP_ROW | {"email": "new@x.es", "crm_id": 9}
    cmd = to_command(event(Side.ERP, Op.UPDATE, ERP_ROW | {"crm_id": 9}, after), CLIENT)
    assert isinstance(cmd, Command) and not cmd.full
    assert [(v.field, v.before, v.after) for v in cmd.changed()] == [
        ("email", "a@x.es", "new@x.es")
    ]
    assert cmd.link_key == "9"


def test_an_update_s_changed_fields_carry_its_clock_and_the_one_they_replaced() -> None:
    before = ERP_ROW | {"crm_id": 9, "telefono": "1"}
    after = before | {"email": "new@x.es", "telefono": "2", "ofisync_base": '{"email": 150}'}
    cmd = to_command(event(Side.ERP, Op.UPDATE, before, after), CLIENT)
    assert isinstance(cmd, Command)
    values = {v.field: v for v in cmd.values}
    assert values["email"] == ("email", "a@x.es", "new@x.es", True, 150, 200)
    assert values["phone"] == ("phone", "1", "2", True, None, 200)  # no base on record


def test_a_linked_record_s_update_carries_only_its_changed_fields() -> None:
    # Its target row is there, or gone (then nothing is made again): the rest is not needed.
    before = ERP_ROW | {"crm_id": 9}
    cmd = to_command(event(Side.ERP, Op.UPDATE, before, before | {"email": "n@x.es"}), CLIENT)
    assert isinstance(cmd, Command) and cmd.link_key == "9"
    assert [(v.field, v.changed) for v in cmd.values] == [("email", True)]


def test_an_unlinked_record_s_update_carries_every_field_for_an_insert() -> None:
    # Its link has not come back yet: the target may have no row, and then makes it whole.
    cmd = to_command(event(Side.ERP, Op.UPDATE, ERP_ROW, ERP_ROW | {"email": "n@x.es"}), CLIENT)
    assert isinstance(cmd, Command) and cmd.link_key is None and not cmd.full
    values = {v.field: v for v in cmd.values}
    assert len(values) == len(CLIENT.fields)
    assert values["email"].changed and values["email"].after == "n@x.es"
    assert values["name"] == ("name", "Ana", "Ana", False, None, None)


def test_a_field_changed_twice_in_one_transaction_replaced_this_change_s_own_version() -> None:
    # The trigger names the transaction's own entry as the base (it has no commit time yet):
    # the version the second write replaced is the one the first set, committed with it.
    before = ERP_ROW | {"crm_id": 9}
    bases = '{"email": "x:77", "telefono": "t:5", "movil": false}'
    after = before | {"email": "second@x.es", "telefono": "3", "ofisync_base": bases}
    cmd = to_command(event(Side.ERP, Op.UPDATE, before, after), CLIENT)
    assert isinstance(cmd, Command)
    values = {v.field: v for v in cmd.values}
    assert values["email"].base == 200  # the change's own commit time
    assert values["phone"].base == 5  # a committed version, as the trigger writes it


def test_a_base_is_read_as_the_trigger_writes_it_or_wrote_it_before() -> None:
    row = {"ofisync_base": '{"a": "t:150", "b": 140, "c": "t:", "d": "u:1", "e": true, "f": null}'}
    assert bases_of(row, 200) == {"a": 150, "b": 140, "c": None, "d": None, "e": None, "f": None}


def test_an_update_of_no_synced_field_is_skipped() -> None:
    out = to_command(event(Side.ERP, Op.UPDATE, ERP_ROW, ERP_ROW | {"crm_id": 3}), CLIENT)
    assert isinstance(out, Skip)


def test_every_crm_account_crosses() -> None:
    cmd = to_command(event(Side.CRM, Op.CREATE, None, CRM_ROW), CLIENT)
    assert isinstance(cmd, Command) and cmd.target is Side.ERP and cmd.full
    assert {v.field for v in cmd.values} == {f.erp for f in CLIENT.fields}


def test_deletes_cross_as_deletes_with_the_link() -> None:
    cmd = to_command(event(Side.CRM, Op.DELETE, CRM_ROW | {"erp_id": 5}, None), CLIENT)
    assert isinstance(cmd, Command) and cmd.op is CommandOp.DELETE and cmd.link_key == "5"
    never = ERP_ROW | {"sincronizar_crm": False}
    assert isinstance(to_command(event(Side.ERP, Op.DELETE, never, None), CLIENT), Skip)


def test_a_row_missing_a_synced_column_is_invalid() -> None:
    row = {k: v for k, v in ERP_ROW.items() if k != "nif"}
    out = to_command(event(Side.ERP, Op.CREATE, None, row), CLIENT)
    assert isinstance(out, Invalid) and "nif" in out.reason


values = st.one_of(st.none(), st.text(), st.integers(), st.booleans())


@given(
    st.dictionaries(st.sampled_from([f.erp for f in CLIENT.fields]), values),
    st.dictionaries(st.sampled_from([f.erp for f in CLIENT.fields]), values),
)
def test_mapping_there_and_back_returns_the_original(a: dict[str, Any], b: dict[str, Any]) -> None:
    # Up from a record not linked yet (every field crosses), back from a linked one (only the
    # changed ones do): the same fields come back with the same values.
    before = ERP_ROW | a
    after = ERP_ROW | b
    changed = {f.erp: after[f.erp] for f in CLIENT.fields if before[f.erp] != after[f.erp]}
    up = to_command(event(Side.ERP, Op.UPDATE, before, after), CLIENT)
    if isinstance(up, Skip):
        assert not changed
        return
    assert isinstance(up, Command)
    crm_after = {v.field: v.after for v in up.values} | {"id": 1, "erp_id": 5}
    crm_before = {v.field: v.before for v in up.values} | {"id": 1, "erp_id": 5}
    down = to_command(event(Side.CRM, Op.UPDATE, crm_before, crm_after), CLIENT)
    assert isinstance(down, Command)
    assert {v.field: v.after for v in down.values} == changed


FILE_CRM_ROW = {f.crm: None for f in FILE.fields} | {
    "id": 30,
    "account_id": 9,
    "file_number": "CRM-1",
    "title": "Lisboa",
    "travellers": 2,
    "stage": "lead",
    "erp_id": 77,
    "ofisync_writer": "postgres/crm-web",
}


def file_event(op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None) -> ChangeEvent:
    return ChangeEvent(Side.CRM, "public", "files", op, "30", before, after, 500, 600, None)


def test_a_crm_edit_of_a_linked_file_restores_the_owned_fields_it_touched() -> None:
    after = FILE_CRM_ROW | {"title": "Otra", "stage": "won"}
    cmd = to_command(file_event(Op.UPDATE, FILE_CRM_ROW, after), FILE)
    assert isinstance(cmd, Command)
    assert cmd.op is CommandOp.RESTORE and cmd.target is Side.CRM
    assert [(v.field, v.before, v.after) for v in cmd.values] == [("title", "Lisboa", "Otra")]
    assert cmd.link_key == "77" and cmd.actor == "postgres/crm-web"


def test_a_crm_own_field_change_of_a_linked_file_sends_nothing() -> None:
    after = FILE_CRM_ROW | {"stage": "won"}
    assert isinstance(to_command(file_event(Op.UPDATE, FILE_CRM_ROW, after), FILE), Skip)


def test_a_crm_file_not_linked_yet_goes_down_normally() -> None:
    before = FILE_CRM_ROW | {"erp_id": None}
    cmd = to_command(file_event(Op.UPDATE, before, before | {"title": "Otra"}), FILE)
    assert isinstance(cmd, Command) and cmd.op is CommandOp.UPSERT and cmd.target is Side.ERP
    assert [v.field for v in cmd.changed()] == ["descripcion"]


def test_a_snapshot_of_a_linked_crm_file_does_not_overwrite_the_owner() -> None:
    assert isinstance(to_command(file_event(Op.READ, None, FILE_CRM_ROW), FILE), Skip)


def test_the_crm_number_lands_in_the_link_number_column() -> None:
    cmd = to_command(file_event(Op.CREATE, None, FILE_CRM_ROW | {"erp_id": None}), FILE)
    assert isinstance(cmd, Command)
    assert cmd.value("crm_numero") is not None and cmd.value("crm_numero").after == "CRM-1"  # type: ignore[union-attr]


def ticket(op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None) -> ChangeEvent:
    return ChangeEvent(Side.ERP, "public", "billetes", op, "4", before, after, 700, 800, None)


def test_a_captured_pnr_ticket_asks_for_the_placeholders_to_be_zeroed() -> None:
    row = {"id": 4, "expediente_id": 12, "origen_registro": "pnr", "importe": "10.00"}
    cmd = pnr_capture(ticket(Op.CREATE, None, row))
    assert cmd is not None and cmd.op is CommandOp.ZERO_PLACEHOLDERS
    assert cmd.target is Side.ERP and cmd.values[0].after == 12
    changed = pnr_capture(ticket(Op.UPDATE, row | {"origen_registro": "manual"}, row))
    assert changed is not None
    assert pnr_capture(ticket(Op.UPDATE, row, row | {"importe": "11.00"})) is None
    assert pnr_capture(ticket(Op.CREATE, None, row | {"origen_registro": "crm"})) is None


def test_segments_flow_from_the_crm_only() -> None:
    assert entity_for_table(Side.CRM, "segments") is SEGMENT
    assert entity_for_table(Side.ERP, "billetes") is None


DOC_ROW = {"id": 8, "expediente_id": 3, "tipo": "bono", "nombre_fichero": "b.pdf",
           "mime": "application/pdf", "estado_sync": "P", "crm_documento_id": None}  # fmt: skip


def doc_event(op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None) -> ChangeEvent:
    return ChangeEvent(Side.ERP, "public", "documentos", op, "8", before, after, 900, 901, None)


def test_a_document_goes_up_in_full_only_while_marked_g() -> None:
    assert isinstance(to_command(doc_event(Op.CREATE, None, DOC_ROW), DOCUMENT), Skip)
    marked = DOC_ROW | {"estado_sync": "G"}
    cmd = to_command(doc_event(Op.UPDATE, DOC_ROW, marked), DOCUMENT)
    assert isinstance(cmd, Command) and cmd.full and cmd.target is Side.CRM
    assert {v.field for v in cmd.values} == {"file_id", "doc_type", "filename", "mime_type"}
    # Re-marking an uploaded one sends it again (it replaces the CRM copy).
    done = DOC_ROW | {"estado_sync": "O", "crm_documento_id": 44}
    again = to_command(doc_event(Op.UPDATE, done, done | {"estado_sync": "G"}), DOCUMENT)
    assert isinstance(again, Command) and again.link_key == "44"
    assert isinstance(to_command(doc_event(Op.UPDATE, marked, done), DOCUMENT), Skip)
