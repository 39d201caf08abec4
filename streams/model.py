"""The shared vocabulary of the flow: sides, typed change events, commands, and which fields of
which tables correspond (CONTRACT.md's field correspondence).

Values travel in one canonical form from decode to apply, so both sides compare equal values
equally: text → str, integer → int, numeric → str as written by PostgreSQL ("12.30"),
date → days since 1970-01-01, timestamp → ms since 1970-01-01 (naive), boolean → bool
(the forms Debezium emits with `time.precision.mode=connect`, `decimal.handling.mode=string`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

Canonical = str | int | bool | None

EPOCH_DATE = dt.date(1970, 1, 1)
EPOCH = dt.datetime(1970, 1, 1)


class Side(StrEnum):
    ERP = "erp"
    CRM = "crm"

    @property
    def other(self) -> Side:
        return Side.CRM if self is Side.ERP else Side.ERP


class Kind(StrEnum):
    TEXT = "text"
    INT = "int"
    DECIMAL = "decimal"
    DATE = "date"
    TIMESTAMP = "timestamp"
    BOOL = "bool"


def canonical(kind: Kind, value: Any) -> Canonical:
    """A database (psycopg) value in canonical form."""
    if value is None:
        return None
    if kind is Kind.DATE and isinstance(value, dt.date):
        return (value - EPOCH_DATE).days
    if kind is Kind.TIMESTAMP and isinstance(value, dt.datetime):
        delta = value.replace(tzinfo=None) - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if kind is Kind.DECIMAL:
        return str(value)
    if kind is Kind.INT:
        return int(value)
    if kind is Kind.BOOL:
        return bool(value)
    return str(value)


def to_db(kind: Kind, value: Canonical) -> Any:
    """A canonical value as the Python value psycopg writes into the column."""
    if value is None:
        return None
    if kind is Kind.DATE:
        return EPOCH_DATE + dt.timedelta(days=int(value))
    if kind is Kind.TIMESTAMP:
        return EPOCH + dt.timedelta(milliseconds=int(value))
    if kind is Kind.DECIMAL:
        return Decimal(str(value))
    return value


@dataclass(frozen=True)
class Field:
    erp: str
    crm: str
    kind: Kind = Kind.TEXT

    def name(self, side: Side) -> str:
        return self.erp if side is Side.ERP else self.crm


@dataclass(frozen=True)
class Entity:
    """A synced record type and its two tables."""

    name: str
    erp_table: str
    crm_table: str
    erp_link: str  # column of the ERP row holding the CRM id
    crm_link: str  # column of the CRM row holding the ERP id
    fields: tuple[Field, ...]
    # The ERP check box that opts a record in; None: every record syncs.
    erp_opt_in: str | None = None

    def table(self, side: Side) -> str:
        return self.erp_table if side is Side.ERP else self.crm_table

    def link(self, side: Side) -> str:
        """The column on `side`'s table that holds the other side's id."""
        return self.erp_link if side is Side.ERP else self.crm_link


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

ENTITIES: Mapping[str, Entity] = {e.name: e for e in (CLIENT,)}


def entity_for_table(side: Side, table: str) -> Entity | None:
    for e in ENTITIES.values():
        if e.table(side) == table:
            return e
    return None


class Op(StrEnum):
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # initial snapshot


@dataclass(frozen=True)
class ChangeEvent:
    """One captured row change, decoded from Debezium's envelope. Values are canonical."""

    source: Side
    schema: str
    table: str
    op: Op
    key: str
    before: Mapping[str, Canonical] | None
    after: Mapping[str, Canonical] | None
    lsn: int
    commit_us: int
    origin: str | None  # set when the sync itself wrote this change (an echo)

    @property
    def row(self) -> Mapping[str, Canonical]:
        """The newest image: after, or before for a delete."""
        return self.after if self.after is not None else (self.before or {})


class CommandOp(StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"


@dataclass(frozen=True)
class FieldValue:
    """A field of the target table: the source's value before and after, and whether it changed."""

    field: str
    before: Canonical
    after: Canonical
    changed: bool


@dataclass(frozen=True)
class Command:
    """What the sink must do to the target side, derived from one source change."""

    source: Side
    entity: str
    op: CommandOp
    source_key: str
    link_key: str | None  # the target's id as the source row knows it
    lsn: int
    commit_us: int
    full: bool  # create / opt-in / snapshot: every field, no before-image check
    values: tuple[FieldValue, ...]

    @property
    def target(self) -> Side:
        return self.source.other

    @property
    def kafka_key(self) -> bytes:
        return f"{self.entity}:{self.source.value}:{self.source_key}".encode()

    def changed(self) -> tuple[FieldValue, ...]:
        return tuple(v for v in self.values if v.changed or self.full)
