"""Canonical values: database values and Debezium's forms meet in one representation."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.contract import ENTITIES
from streams.core.model import Command, CommandOp, Kind, Side, canonical, to_db
from streams.settings import Settings, SettingsError


def test_known_debezium_forms() -> None:
    assert canonical(Kind.DATE, dt.date(1970, 1, 2)) == 1
    assert canonical(Kind.TIMESTAMP, dt.datetime(1970, 1, 1, 0, 0, 1)) == 1000
    assert canonical(Kind.DECIMAL, Decimal("12.30")) == "12.30"
    assert canonical(Kind.TEXT, None) is None


def test_each_kind_s_canonical_form_and_database_value() -> None:
    assert canonical(Kind.TEXT, 12) == "12" and canonical(Kind.TEXT, "a") == "a"
    assert canonical(Kind.INT, Decimal("7")) == 7 and canonical(Kind.INT, True) == 1
    assert canonical(Kind.BOOL, 1) is True and canonical(Kind.BOOL, 0) is False
    assert canonical(Kind.DECIMAL, 5) == "5"
    assert to_db(Kind.TEXT, "a") == "a" and to_db(Kind.INT, 7) == 7 and to_db(Kind.BOOL, 0) == 0
    assert to_db(Kind.DATE, None) is None and to_db(Kind.DECIMAL, "1.5") == Decimal("1.5")


@given(st.dates())
def test_dates_round_trip(d: dt.date) -> None:
    assert to_db(Kind.DATE, canonical(Kind.DATE, d)) == d


@given(st.datetimes(min_value=dt.datetime(1900, 1, 1)))
def test_timestamps_round_trip_to_the_millisecond(t: dt.datetime) -> None:
    t = t.replace(microsecond=t.microsecond // 1000 * 1000)
    assert to_db(Kind.TIMESTAMP, canonical(Kind.TIMESTAMP, t)) == t


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=2, max_value=10**9, min_value=-(10**9)
    )
)
def test_decimals_round_trip(d: Decimal) -> None:
    assert to_db(Kind.DECIMAL, canonical(Kind.DECIMAL, d)) == d


def test_settings_defaults_are_the_contract_s() -> None:
    s = Settings.from_env({})
    assert str(s.erp.endpoint) == "127.0.0.1:55432" and s.erp.dbname == "ofiviaje"
    assert str(s.crm.endpoint) == "127.0.0.1:55433" and s.crm.dbname == "oficrm"
    assert str(s.kafka) == "127.0.0.1:9092" and str(s.connect) == "127.0.0.1:8083"
    assert str(s.web) == "127.0.0.1:6066"


def test_the_stack_runs_one_worker_unless_told_and_no_more_than_the_partitions() -> None:
    assert Settings.from_env({}).workers == 1
    assert Settings.from_env({"OFISYNC_WORKERS": "2"}).workers == 2
    assert Settings.from_env({"OFISYNC_WORKERS": "6", "OFISYNC_PARTITIONS": "6"}).workers == 6
    with pytest.raises(SettingsError, match="OFISYNC_WORKERS='0' must be a whole number"):
        Settings.from_env({"OFISYNC_WORKERS": "0"})
    with pytest.raises(SettingsError, match="OFISYNC_WORKERS=5 is more than OFISYNC_PARTITIONS=4"):
        Settings.from_env({"OFISYNC_WORKERS": "5"})


def test_passwords_stay_out_of_repr_and_safe_dsn() -> None:
    s = Settings.from_env({"OFISYNC_ERP_DSN": "postgresql://u:s3cret@127.0.0.1:5/db"})
    assert "s3cret" not in repr(s) and "s3cret" not in s.erp.safe_dsn
    assert s.erp.password == "s3cret"


def test_equal_entities_hash_alike_and_share_their_caches() -> None:
    for entity in ENTITIES.values():
        copy = dataclasses.replace(entity)
        assert copy is not entity and copy == entity and hash(copy) == hash(entity)
        assert copy.crossing(Side.ERP) == entity.crossing(Side.ERP)
    assert len({hash(e) for e in ENTITIES.values()}) == len(ENTITIES)


@pytest.mark.parametrize("source", list(Side))
def test_upserts_and_deletes_go_to_the_other_side_and_the_rest_to_the_source(source: Side) -> None:
    crossing = {CommandOp.UPSERT, CommandOp.DELETE}
    for op in CommandOp:
        cmd = Command(source, "client", op, "1", None, 1, 1, full=False, values=())
        assert cmd.target is (source.other if op in crossing else source), op
    assert Side.ERP.other is Side.CRM and Side.CRM.other is Side.ERP


def test_each_side_reads_and_writes_its_own_columns() -> None:
    entity = ENTITIES["client"]
    assert (entity.table(Side.ERP), entity.table(Side.CRM)) == (entity.erp_table, entity.crm_table)
    assert (entity.link(Side.ERP), entity.link(Side.CRM)) == (entity.erp_link, entity.crm_link)
    assert entity.erp_table != entity.crm_table and entity.erp_link != entity.crm_link
    seller = next(f for e in ENTITIES.values() for f in e.fields if f.crm_kind is not None)
    assert seller.kind_on(Side.CRM) is seller.crm_kind and seller.kind_on(Side.ERP) is seller.kind
    assert seller.crm_kind is not seller.kind
    renamed = next(f for e in ENTITIES.values() for f in e.fields if f.erp != f.crm)
    assert (renamed.name(Side.ERP), renamed.name(Side.CRM)) == (renamed.erp, renamed.crm)
