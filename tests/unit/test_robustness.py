"""No input crashes the pure rules: arbitrary captured rows through every entity's rules and the
whole capture step, arbitrary configuration rows through the mapping, arbitrary field values
through the conflict rule. Each answers with a command or a reason."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.core.conflicts import Current, Incoming, Policy, decide
from streams.core.contract import ENTITIES
from streams.core.decode import DecodeError, Ignored, decode
from streams.core.mapping import CRM_CONFIG_TABLES, ERP_CONFIG_TABLES, Mapping
from streams.core.model import ChangeEvent, Command, Op, Side, Via
from streams.core.routing import Echo, replayed, route
from streams.core.rules import Invalid, Skip, to_command

canonical = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.text(max_size=40)
)


def columns(side: Side) -> list[str]:
    names = {"id", "ofisync_origin", "ofisync_writer", "sincronizar_crm", "estado_sync"}
    for e in ENTITIES.values():
        names |= {f.name(side) for f in e.fields}
        names |= {c for c in (e.link(side), e.number(side), e.link_number(side)) if c}
    return sorted(names)


def rows(side: Side) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(columns(side)), canonical)


@settings(max_examples=300)
@given(
    st.sampled_from(list(ENTITIES.values())),
    st.sampled_from(list(Side)),
    st.sampled_from(list(Op)),
    st.one_of(st.none(), rows(Side.ERP), rows(Side.CRM)),
    st.one_of(st.none(), rows(Side.ERP), rows(Side.CRM)),
)
def test_no_row_crashes_the_rules(
    entity: Any, side: Side, op: Op, before: dict[str, Any] | None, after: dict[str, Any] | None
) -> None:
    event = ChangeEvent(side, "public", entity.table(side), op, "1", before, after, 1, 1, None)
    assert isinstance(to_command(event, entity), Command | Skip | Invalid)


@settings(max_examples=300)
@given(
    st.sampled_from(
        [
            "clientes",
            "expedientes",
            "billetes",
            "documentos",
            "accounts",
            "files",
            "segments",
            "sucursales",
        ]
    ),
    st.sampled_from(list(Op)),
    st.one_of(st.none(), rows(Side.ERP)),
    st.one_of(st.none(), rows(Side.ERP)),
    st.booleans(),
)
def test_no_envelope_crashes_the_capture_step(
    table: str, op: Op, before: Any, after: Any, replay: bool
) -> None:
    side = (
        "erp"
        if table in ("clientes", "expedientes", "billetes", "documentos", "sucursales")
        else "crm"
    )
    envelope = {
        "op": op.value,
        "before": before,
        "after": after,
        "source": {"schema": "public", "table": table, "lsn": 5, "ts_us": 7},
    }
    key = json.dumps({"id": 1}).encode()
    topic, value = f"t.{side}.public.{table}", json.dumps(envelope).encode()
    if not replay:
        outcome = route(topic, key, value, "t")
        assert isinstance(outcome, Command | Skip | Invalid | DecodeError | Ignored | Echo)
        return
    event = decode(topic, key, value, "t")
    if isinstance(event, ChangeEvent):
        found = replayed(event)
        assert isinstance(found, list | Skip | Invalid | DecodeError | Ignored | Echo)
        assert not isinstance(found, list) or all(c.replay for c in found)


@given(
    st.sampled_from(
        [(Side.ERP, t) for t in ERP_CONFIG_TABLES] + [(Side.CRM, t) for t in CRM_CONFIG_TABLES]
    ),
    st.sampled_from(list(Op)),
    st.dictionaries(
        st.sampled_from(
            [
                "id",
                "crm_usuario",
                "crm_agencia_id",
                "sucursal_id",
                "vendedor_id",
                "tipo_expediente",
                "serie",
                "ofisync_zero_placeholders",
                "username",
                "agency_id",
            ]
        ),
        canonical,
    ),
    canonical,
)
def test_no_configuration_row_crashes_the_mapping(
    table: tuple[Side, str], op: Op, row: dict[str, Any], probe: Any
) -> None:
    mapping = Mapping()
    side, name = table
    mapping.fold(ChangeEvent(side, "public", name, op, "1", row, row, 1, 1, None))
    for via in (Via.SELLER, Via.BRANCH, Via.FILE_STATUS, Via.TICKET_KIND):
        for to in Side:
            mapping.translate(via, probe, to)
    assert isinstance(mapping.unmapped(), dict)


@given(
    canonical,
    canonical,
    canonical,
    canonical,
    st.integers(0, 2**62),
    st.integers(0, 2**62),
    st.booleans(),
    st.booleans(),
    st.sampled_from(list(Policy)),
)
def test_no_values_crash_the_conflict_rule(
    before: Any,
    after: Any,
    current: Any,
    _: Any,
    commit: int,
    clock: int,
    full: bool,
    replay: bool,
    policy: Policy,
) -> None:
    decision = decide(
        Incoming(Side.CRM, before, after, commit, full, replay), Current(current, clock), policy
    )
    assert not (decision.conflict and current == after)
