"""The shared vocabulary of the flow: sides, typed change events, commands, and which fields of
which tables correspond (CONTRACT.md's field correspondence).

Values travel in one canonical form from decode to apply, so both sides compare equal values
equally: text → str, integer → int, numeric → str as written by PostgreSQL ("12.30"),
date → days since 1970-01-01, timestamp → ms since 1970-01-01 (naive), boolean → bool
(the forms Debezium emits with `time.precision.mode=connect`, `decimal.handling.mode=string`).

What the worker makes for every captured change (`ChangeEvent`, `Command`, `FieldValue`) are
named tuples, immutable and typed like frozen dataclasses: a frozen dataclass of ten fields takes
3.5 µs to build, a named tuple 1.2, and a change makes several of them.

Two habits of the per-change paths (decode, rules, the sink), each worth a few µs a change in
Python 3.11: an Enum member is read as a module name, not off its class (`Side.ERP` goes through
EnumType's attribute hook, 0.17 µs against 0.02 for a global); and a named tuple built in a loop
is made by `tuple.__new__(T, values)`, not by its generated constructor (about a µs less).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

Canonical = str | int | bool | None

# What the sink sets in `ofisync.origin` (copied into `ofisync_origin` by a trigger) so its own
# writes are recognised when captured: echoes.
SYNC_ORIGIN = "sync"

EPOCH_DATE = dt.date(1970, 1, 1)
EPOCH = dt.datetime(1970, 1, 1)


class Side(StrEnum):
    ERP = "erp"
    CRM = "crm"

    @property
    def other(self) -> Side:
        return _CRM if self is _ERP else _ERP

    @property
    def inbound(self) -> str:
        """The direction of the changes this side receives, as metrics and the dashboard name
        it ("erp_to_crm" for the CRM)."""
        return f"{self.other.value}_to_{self.value}"


_ERP, _CRM = Side.ERP, Side.CRM  # members as module names (see the module docstring)


class Kind(StrEnum):
    TEXT = "text"
    INT = "int"
    DECIMAL = "decimal"
    DATE = "date"
    TIMESTAMP = "timestamp"
    BOOL = "bool"


# Members as module names (see the module docstring): the sink converts a value or two of every
# change both ways.
_TEXT, _INT, _DECIMAL = Kind.TEXT, Kind.INT, Kind.DECIMAL
_DATE, _TIMESTAMP, _BOOL = Kind.DATE, Kind.TIMESTAMP, Kind.BOOL


def canonical(kind: Kind, value: Any) -> Canonical:
    """A database (psycopg) value in canonical form."""
    if value is None:
        return None
    if kind is _TEXT:
        return str(value)
    if kind is _DATE and isinstance(value, dt.date):
        return (value - EPOCH_DATE).days
    if kind is _TIMESTAMP and isinstance(value, dt.datetime):
        delta = value.replace(tzinfo=None) - EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if kind is _DECIMAL:
        return str(value)
    if kind is _INT:
        return int(value)
    if kind is _BOOL:
        return bool(value)
    return str(value)


def to_db(kind: Kind, value: Canonical) -> Any:
    """A canonical value as the Python value psycopg writes into the column."""
    if value is None or kind is _TEXT:
        return value
    if kind is _DATE:
        return EPOCH_DATE + dt.timedelta(days=int(value))
    if kind is _TIMESTAMP:
        return EPOCH + dt.timedelta(milliseconds=int(value))
    if kind is _DECIMAL:
        return Decimal(str(value))
    return value


class Via(StrEnum):
    """How a field's value crosses: as is, or translated on the way (streams/core/mapping.py)."""

    SAME = "same"
    REF = "ref"  # the id of a parent record: resolved through the parent's link column
    SELLER = "seller"  # vendedores.id ↔ users.username
    BRANCH = "branch"  # sucursales.id ↔ agencies.id
    FILE_STATUS = "file_status"  # estado ↔ status vocabularies
    TICKET_KIND = "ticket_kind"  # avion/tren ↔ flight/train
    NUMBER = "number"  # the source's own record number, kept on the target as a link number


@dataclass(frozen=True)
class Field:
    """A pair of corresponding columns. `erp`/`crm` are read on the source side; the target
    column is the same unless `erp_target`/`crm_target` says otherwise (a NUMBER lands in the
    target's link-number column)."""

    erp: str
    crm: str
    kind: Kind = Kind.TEXT
    crm_kind: Kind | None = None  # when the CRM column's type differs (SELLER, BRANCH)
    via: Via = Via.SAME
    ref: str | None = None  # parent entity name, for Via.REF
    erp_target: str | None = None
    crm_target: str | None = None

    def name(self, side: Side) -> str:
        """The column read on `side` when it is the source."""
        return self.erp if side is _ERP else self.crm

    def column(self, side: Side) -> str:
        """The column written on `side` when it is the target."""
        target = self.erp_target if side is _ERP else self.crm_target
        return target or self.name(side)

    def kind_on(self, side: Side) -> Kind:
        return self.crm_kind or self.kind if side is _CRM else self.kind


@dataclass(frozen=True)
class Entity:
    """A synced record type and its two tables."""

    name: str
    erp_table: str
    crm_table: str
    erp_link: str  # column of the ERP row holding the CRM id
    crm_link: str | None  # column of the CRM row holding the ERP id (None: not linked back)
    fields: tuple[Field, ...]
    # The ERP check box that opts a record in; None: every record syncs.
    erp_opt_in: str | None = None
    # Sides whose changes are captured and sent to the other side.
    sources: tuple[Side, ...] = (Side.ERP, Side.CRM)
    # The side that owns the synced fields once the record is linked: the other side's
    # changes to them are undone (a lock), and its value wins any conflict.
    owner: Side | None = None
    # Each side's own record number, and the column where the other side keeps it.
    erp_number: str | None = None
    crm_number: str | None = None
    erp_link_number: str | None = None
    crm_link_number: str | None = None
    # A record the sync created on OfiViaje carries these values, and later changes reach it
    # only while they still hold (a placeholder ticket that became a real one is left alone).
    erp_marker: tuple[tuple[str, str], ...] = ()
    # An OfiViaje record crosses (always in full) only while this column holds this value.
    erp_send_when: tuple[str, str] | None = None

    def __hash__(self) -> int:
        # Entities key caches asked on every change (`crossing`, `by_column`); the hash a frozen
        # dataclass makes walks every field each time (3 % of the worker while it catches up).
        # Equal entities have equal names, so this agrees with equality.
        return hash(self.name)

    def table(self, side: Side) -> str:
        return self.erp_table if side is _ERP else self.crm_table

    def link(self, side: Side) -> str | None:
        """The column on `side`'s table that holds the other side's id."""
        return self.erp_link if side is _ERP else self.crm_link

    def number(self, side: Side) -> str | None:
        return self.erp_number if side is _ERP else self.crm_number

    def link_number(self, side: Side) -> str | None:
        """The column on `side`'s table that keeps the other side's record number."""
        return self.erp_link_number if side is _ERP else self.crm_link_number

    def marker(self, side: Side) -> dict[str, str]:
        return dict(self.erp_marker) if side is _ERP and self.erp_marker else {}

    @property
    def parent(self) -> Field | None:
        return next((f for f in self.fields if f.via is Via.REF), None)

    def crossing(self, source: Side) -> tuple[tuple[str, str], ...]:
        """(column read on `source`, column written on the other side) for every field; the
        rules walk it for every change, so it is computed once per entity and side."""
        return _crossing(self, source)

    def by_column(self, side: Side) -> dict[str, Field]:
        """The fields by their column on `side` (computed once per entity and side)."""
        return _by_column(self, side)

    def read(self, source: Side) -> frozenset[str]:
        """The columns read on `source` (computed once per entity and side)."""
        return _read(self, source)


@cache
def _by_column(entity: Entity, side: Side) -> dict[str, Field]:
    return {f.column(side): f for f in entity.fields}


@cache
def _read(entity: Entity, source: Side) -> frozenset[str]:
    return frozenset(f.name(source) for f in entity.fields)


@cache
def _crossing(entity: Entity, source: Side) -> tuple[tuple[str, str], ...]:
    return tuple((f.name(source), f.column(source.other)) for f in entity.fields)


class Op(StrEnum):
    CREATE = "c"
    UPDATE = "u"
    DELETE = "d"
    READ = "r"  # initial snapshot


class ChangeEvent(NamedTuple):
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
    # Undo a change the source side may not make (a lock): the record is written back on the
    # source side itself from its owner's current values.
    RESTORE = "restore"
    # A real ticket was captured: the file's placeholder tickets on the same side go to 0.
    ZERO_PLACEHOLDERS = "zero_placeholders"
    # A side's own change applied to that side again (`ofisync replay` after a restore): the
    # record takes the values it had after the change, where nothing newer holds them.
    REAPPLY = "reapply"
    # The other side kept newer values than a full push carried (an opt-in, a snapshot, a record
    # matched): the source record takes them, so both sides hold the same.
    ALIGN = "align"


# What goes to the other side; every other op is about the source's own record.
_UPSERT, _DELETE = CommandOp.UPSERT, CommandOp.DELETE


class FieldValue(NamedTuple):
    """A field of the target table: the source's value before and after, whether it changed,
    and the clocks of those values on the source (the commit times of the changes that set
    them; None: never set since the record was created)."""

    field: str
    before: Canonical
    after: Canonical
    changed: bool
    base: int | None = None  # the clock of `before`: which version of the field was changed
    clock: int | None = None  # the clock of `after` (a full push carries each field's own)


class Command(NamedTuple):
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
    actor: str | None = None  # who made the source change, when known (lock violations)
    replay: bool = False  # history: re-sent by `ofisync replay` or a dead letter retried

    @property
    def target(self) -> Side:
        source, op = self.source, self.op
        if op is _UPSERT or op is _DELETE:
            return _CRM if source is _ERP else _ERP
        return source

    @property
    def origin_key(self) -> tuple[str, str, str, int]:
        """The change a command came from (several commands may come from one)."""
        return (self.source.value, self.entity, self.source_key, self.lsn)

    @property
    def kafka_key(self) -> bytes:
        return f"{self.entity}:{self.source.value}:{self.source_key}".encode()

    def changed(self) -> tuple[FieldValue, ...]:
        """The values that changed: all of them in a full push."""
        if self.full:
            return self.values
        return tuple([v for v in self.values if v.changed])

    def value(self, field_name: str) -> FieldValue | None:
        return next((v for v in self.values if v.field == field_name), None)
