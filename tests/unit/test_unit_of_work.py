"""The working set's JSON patches: every value a sink writes becomes text PostgreSQL reads back
into the column's type (the writes themselves are exercised by the integration tests)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.apply.statements import _json, int_array, row_columns
from streams.apply.unit_of_work import too_long
from streams.core.contract import CLIENT, FILE, SEGMENT
from streams.core.model import Kind, Side, to_db


@pytest.mark.parametrize(
    ("kind", "canonical", "text"),
    [
        (Kind.DATE, 20_000, "2024-10-04"),
        (Kind.TIMESTAMP, 1_700_000_000_123, "2023-11-14T22:13:20.123000"),
        (Kind.DECIMAL, "12.30", "12.30"),
        (Kind.INT, 7, 7),
        (Kind.BOOL, True, True),
        (Kind.TEXT, None, None),
    ],
)
def test_a_patch_value_is_the_text_postgresql_parses_into_the_column(
    kind: Kind, canonical: object, text: object
) -> None:
    assert json.loads(_json({"v": to_db(kind, canonical)})) == {"v": text}  # type: ignore[arg-type]


@given(st.text())
def test_text_crosses_a_patch_unchanged(value: str) -> None:
    assert json.loads(_json({"v": value})) == {"v": value}


def test_something_that_is_no_column_value_is_refused() -> None:
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        _json({"v": object()})
    assert _json({"v": Decimal("1")}) == b'{"v":"1"}'
    assert _json({"v": dt.date(2020, 1, 2)}) == b'{"v":"2020-01-02"}'


def test_the_sink_reads_the_synced_fields_the_marker_the_link_and_the_own_number() -> None:
    assert row_columns(CLIENT, Side.CRM)[:2] == ["id", "name"]
    assert "erp_id" in row_columns(CLIENT, Side.CRM)
    assert {"origen_registro", "crm_trayecto_id"} <= set(row_columns(SEGMENT, Side.ERP))
    assert {"numero", "crm_id", "crm_numero"} <= set(row_columns(FILE, Side.ERP))


def test_a_value_too_long_is_named_by_its_column() -> None:
    limits = {("expedientes", "descripcion"): 200, ("clientes", "nif"): 20}
    texts = [
        ("expedientes", "descripcion", "x" * 240),
        ("expedientes", "descripcion", "x" * 250),
        ("expedientes", "notas", "x" * 5000),  # no limit
        ("clientes", "nif", "B12345678"),  # fits
    ]
    assert too_long(texts, limits) == [
        "expedientes.descripcion holds 200 characters, the value has 250"
    ]
    assert too_long([], limits) == []


def test_ids_go_to_postgresql_as_one_array_literal() -> None:
    assert int_array([3, 1, 20]) == "{3,1,20}"
    assert int_array({7: "a write", 8: "another"}) == "{7,8}"  # a batch's patches, by id
    assert int_array([]) == "{}"
