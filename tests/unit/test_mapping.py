"""Mapping: folding the captured configuration tables, translations, fallbacks, vocabularies."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from streams.core.mapping import FILE_STATUS, TICKET_KIND, Mapping, translate_word
from streams.core.model import ChangeEvent, Op, Side, Via


def change(
    side: Side,
    table: str,
    op: Op,
    after: dict[str, Any] | None,
    before: dict[str, Any] | None = None,
) -> ChangeEvent:
    row = after or before or {}
    return ChangeEvent(side, "public", table, op, str(row.get("id")), before, after, 1, 1, None)


def loaded() -> Mapping:
    m = Mapping()
    for event in (
        change(Side.ERP, "vendedores", Op.READ, {"id": 1, "crm_usuario": "lgarcia"}),
        change(Side.ERP, "vendedores", Op.READ, {"id": 2, "crm_usuario": None}),
        change(Side.ERP, "sucursales", Op.READ, {"id": 10, "crm_agencia_id": "AG-MAD"}),
        change(Side.ERP, "sucursales", Op.READ, {"id": 11, "crm_agencia_id": None}),
        change(
            Side.ERP,
            "config_crm",
            Op.READ,
            {
                "id": True,
                "sucursal_id": 10,
                "vendedor_id": 1,
                "tipo_expediente": "VAC",
                "serie": "A",
                "ofisync_zero_placeholders": False,
            },
        ),
        change(Side.CRM, "users", Op.READ, {"id": 5, "username": "lgarcia", "agency_id": "AG-MAD"}),
        change(Side.CRM, "users", Op.READ, {"id": 6, "username": "nuevo", "agency_id": None}),
        change(Side.CRM, "agencies", Op.READ, {"id": "AG-MAD"}),
        change(Side.CRM, "agencies", Op.READ, {"id": "AG-NEW"}),
    ):
        assert m.fold(event)
    return m


def test_mapped_sellers_and_branches_translate_both_ways() -> None:
    m = loaded()
    assert m.seller_to_crm(1).value == "lgarcia" and m.seller_to_crm(1).fallback is None
    assert m.seller_to_erp("lgarcia").value == 1
    assert m.branch_to_crm(10).value == "AG-MAD"
    assert m.branch_to_erp("AG-MAD").value == 10


def test_unmapped_values_fall_back_to_the_header_defaults_and_say_so() -> None:
    m = loaded()
    seller = m.seller_to_erp("nuevo")
    assert seller.value == 1 and seller.fallback and "nuevo" in seller.fallback
    branch = m.branch_to_erp("AG-NEW")
    assert branch.value == 10 and branch.fallback and "AG-NEW" in branch.fallback
    # Upwards, the default seller's CRM user stands in for an unmapped seller.
    assert m.seller_to_crm(2).value == "lgarcia" and m.seller_to_crm(2).fallback
    assert m.branch_to_crm(11).value == "AG-MAD" and m.branch_to_crm(11).fallback


def test_what_needs_a_person_is_listed() -> None:
    assert loaded().unmapped() == {
        "crm_users": ["nuevo"],
        "crm_agencies": ["AG-NEW"],
        "sellers": ["2"],
        "branches": ["11"],
    }


def test_changes_and_deletes_take_effect() -> None:
    m = loaded()
    before = {"id": 2, "crm_usuario": None}
    m.fold(change(Side.ERP, "vendedores", Op.UPDATE, {"id": 2, "crm_usuario": "nuevo"}, before))
    assert m.seller_to_erp("nuevo").value == 2
    m.fold(change(Side.ERP, "vendedores", Op.DELETE, None, {"id": 1, "crm_usuario": "lgarcia"}))
    assert m.seller_to_erp("lgarcia").fallback is not None
    renamed = {"id": 6, "username": "nueva", "agency_id": None}
    m.fold(change(Side.CRM, "users", Op.UPDATE, renamed, {"id": 6, "username": "nuevo"}))
    assert "nuevo" not in m.crm_users and "nueva" in m.crm_users


def test_the_zeroing_setting_is_read_from_config_crm() -> None:
    m = loaded()
    assert not m.defaults.zero_placeholders_on_pnr
    m.fold(
        change(Side.ERP, "config_crm", Op.UPDATE, {"id": True, "ofisync_zero_placeholders": True})
    )
    assert m.defaults.zero_placeholders_on_pnr


def test_other_tables_are_not_folded() -> None:
    m = Mapping()
    assert not m.fold(change(Side.ERP, "clientes", Op.CREATE, {"id": 1}))
    assert m.version == 0


OUTSIDE = st.text(max_size=12).filter(
    lambda w: w not in {*FILE_STATUS, *FILE_STATUS.values(), *TICKET_KIND, *TICKET_KIND.values()}
)


@given(st.sampled_from(list(FILE_STATUS)) | OUTSIDE)
def test_file_status_there_and_back_is_the_original(word: str) -> None:
    crm = translate_word(Via.FILE_STATUS, word, Side.CRM)
    assert translate_word(Via.FILE_STATUS, crm, Side.ERP) == word


@given(st.sampled_from(list(TICKET_KIND.values())) | OUTSIDE)
def test_ticket_kind_there_and_back_is_the_original(word: str) -> None:
    erp = translate_word(Via.TICKET_KIND, word, Side.ERP)
    assert translate_word(Via.TICKET_KIND, erp, Side.CRM) == word


@given(st.integers(min_value=1, max_value=50), st.text(min_size=1, max_size=8))
def test_a_mapped_seller_there_and_back_is_the_original(vendedor_id: int, username: str) -> None:
    m = Mapping()
    m.fold(change(Side.ERP, "vendedores", Op.READ, {"id": vendedor_id, "crm_usuario": username}))
    assert m.seller_to_erp(m.seller_to_crm(vendedor_id).value).value == vendedor_id
