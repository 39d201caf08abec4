"""Verify's comparison of one linked pair: the same rules the sync applies."""

from __future__ import annotations

from streams.core.contract import CLIENT, FILE
from streams.core.mapping import Mapping
from streams.core.model import Canonical, ChangeEvent, Op, Side
from streams.ops.verify import Links, compare_pair


def mapping() -> Mapping:
    m = Mapping()
    rows: list[tuple[str, dict[str, Canonical]]] = [
        ("vendedores", {"id": 1, "crm_usuario": "lgarcia"}),
        ("vendedores", {"id": 2, "crm_usuario": None}),
        ("sucursales", {"id": 10, "crm_agencia_id": "AG-MAD"}),
        ("config_crm", {"id": True, "sucursal_id": 10, "vendedor_id": 1}),
    ]
    for table, row in rows:
        m.fold(ChangeEvent(Side.ERP, "public", table, Op.READ, "", None, row, 0, 0, None))
    return m


LINKS = Links({"client": {7: 70}, "file": {}})
ERP_FILE: dict[str, Canonical] = {
            "id": 5, "cliente_id": 7, "numero": "2026/000001", "crm_numero": "CRM-9",
            "vendedor_id": 1, "sucursal_id": 10, "descripcion": "Roma", "destino": "Roma",
            "fecha_salida": 1, "fecha_regreso": 2, "pasajeros": 2, "importe_total": "10.00",
            "estado": "confirmado", "crm_id": 9}  # fmt: skip
CRM_FILE: dict[str, Canonical] = {
            "id": 9, "account_id": 70, "file_number": "CRM-9", "erp_number": "2026/000001",
            "owner_username": "lgarcia", "agency_id": "AG-MAD", "title": "Roma",
            "destination": "Roma", "departure_date": 1, "return_date": 2, "travellers": 2,
            "total_amount": "10.00", "status": "confirmed", "erp_id": 5}  # fmt: skip


def test_a_pair_in_sync_has_no_difference() -> None:
    assert compare_pair(FILE, ERP_FILE, CRM_FILE, mapping(), LINKS) == []


def test_each_kind_of_difference_is_named_with_both_values() -> None:
    crm = CRM_FILE | {"status": "open", "account_id": 71, "title": "Milán", "erp_number": "x"}
    found = {
        d.field: (d.erp_value, d.crm_value)
        for d in compare_pair(FILE, ERP_FILE, crm, mapping(), LINKS)
    }
    assert found == {
        "estado / status": ("confirmado", "open"),
        "cliente_id / account_id": (7, 71),
        "descripcion / title": ("Roma", "Milán"),
        "numero / file_number": ("2026/000001", "CRM-9"),
    }


def test_a_mapping_fallback_on_either_side_is_consistent() -> None:
    # Down from the CRM: an unmapped owner became the default seller.
    crm = CRM_FILE | {"owner_username": "nobody"}
    assert compare_pair(FILE, ERP_FILE, crm, mapping(), LINKS) == []
    # Up from OfiViaje: an unmapped seller went up as the default seller's CRM user.
    erp = ERP_FILE | {"vendedor_id": 2}
    assert compare_pair(FILE, erp, CRM_FILE, mapping(), LINKS) == []


def test_clients_compare_field_by_field() -> None:
    erp: dict[str, Canonical] = {f.erp: "x" for f in CLIENT.fields}
    erp["id"] = 1
    crm: dict[str, Canonical] = {f.crm: "x" for f in CLIENT.fields}
    crm |= {"id": 2, "city": "y"}
    [diff] = compare_pair(CLIENT, erp, crm, mapping(), LINKS)
    assert diff.field == "poblacion / city"
