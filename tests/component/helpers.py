"""A person's writes on one side, and the change Debezium would capture from them: the rows read
back from the database (values in canonical form, the sync's jsonb columns as JSON text), the
commit time from PostgreSQL. Then the rules turn the change into the command the sinks apply."""

from __future__ import annotations

import asyncio
import functools
import itertools
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import orjson
import psycopg

from streams.apply.sink import Sink
from streams.core.contract import ENTITIES
from streams.core.model import Canonical, ChangeEvent, Command, Entity, Op, Side, canonical
from streams.core.rules import Skip, to_command
from streams.settings import Settings

T = TypeVar("T")
_lsn = itertools.count(1_000_000, 10)


def tag() -> str:
    return uuid.uuid4().hex[:10]


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """An async test run in an event loop of its own (sinks hold connections of one loop)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


def dsn(settings: Settings, side: Side) -> str:
    return (settings.erp if side is Side.ERP else settings.crm).dsn


def query(settings: Settings, side: Side, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn(settings, side), autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def one(settings: Settings, side: Side, sql: str, params: Any = None) -> Any:
    rows = query(settings, side, sql, params)
    return rows[0][0] if rows and len(rows[0]) == 1 else (rows[0] if rows else None)


def _canonical_row(entity: Entity, side: Side, row: dict[str, Any]) -> dict[str, Canonical]:
    kinds = {f.name(side): f.kind_on(side) for f in entity.fields}
    out: dict[str, Canonical] = {}
    for column, value in row.items():
        if column in ("ofisync_clocks", "ofisync_base"):
            out[column] = None if value is None else orjson.dumps(value).decode()
        elif column in kinds:
            out[column] = canonical(kinds[column], value)
        elif value is None or isinstance(value, bool | int | str):
            out[column] = value
        else:
            out[column] = str(value)
    return out


def _read(conn: psycopg.Connection[Any], table: str, record_id: int) -> dict[str, Any] | None:
    cur = conn.execute(f"SELECT * FROM {table} WHERE id = %s", (record_id,))
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([c.name for c in cur.description or ()], row, strict=True))


def write(
    settings: Settings,
    side: Side,
    entity_name: str,
    statement: str,
    params: Any,
    record_id: int | None = None,
    hold: Callable[[], None] | None = None,
) -> ChangeEvent:
    """A person's INSERT/UPDATE/DELETE of one record of `entity_name` on `side` (an INSERT
    returns the id), committed, as the change Debezium captures. `hold` runs before the commit."""
    entity = ENTITIES[entity_name]
    table = entity.table(side)
    with psycopg.connect(dsn(settings, side)) as conn:
        before = _read(conn, table, record_id) if record_id is not None else None
        cur = conn.execute(statement, params)
        if record_id is None:
            found = cur.fetchone()
            assert found is not None, "an INSERT must say RETURNING id"
            record_id = int(found[0])
        xid = _xid(conn)
        if hold is not None:
            hold()
        conn.commit()
        after = _read(conn, table, record_id)
        commit_us = _commit_us(conn, xid)
    return _event(entity, side, record_id, before, after, commit_us)


def writes_in_one_transaction(
    settings: Settings, side: Side, entity_name: str, record_id: int, statements: Sequence[str]
) -> list[ChangeEvent]:
    """A person's statements on one record (each given its id as its one parameter) in one
    transaction, as the changes Debezium captures: one a statement, with one commit time."""
    entity = ENTITIES[entity_name]
    table = entity.table(side)
    with psycopg.connect(dsn(settings, side)) as conn:
        rows = [_read(conn, table, record_id)]
        for statement in statements:
            conn.execute(statement, (record_id,))
            rows.append(_read(conn, table, record_id))
        xid = _xid(conn)
        conn.commit()
        commit_us = _commit_us(conn, xid)
    return [
        _event(entity, side, record_id, before, after, commit_us)
        for before, after in itertools.pairwise(rows)
    ]


def _xid(conn: psycopg.Connection[Any]) -> int:
    found = conn.execute("SELECT txid_current() % 4294967296").fetchone()
    assert found is not None
    return int(found[0])


def _commit_us(conn: psycopg.Connection[Any], xid: int) -> int:
    found = conn.execute(
        "SELECT (extract(epoch FROM pg_xact_commit_timestamp(%s::text::xid)) * 1e6)::bigint",
        (str(xid),),
    ).fetchone()
    assert found is not None
    return int(found[0])


def _event(
    entity: Entity,
    side: Side,
    record_id: int,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    commit_us: int,
) -> ChangeEvent:
    op = Op.CREATE if before is None else Op.DELETE if after is None else Op.UPDATE
    return ChangeEvent(
        side,
        "public",
        entity.table(side),
        op,
        str(record_id),
        None if before is None else _canonical_row(entity, side, before),
        None if after is None else _canonical_row(entity, side, after),
        next(_lsn),
        commit_us,
        None,
    )


def command(event: ChangeEvent) -> Command:
    """The command the rules make of a captured change (it must make one)."""
    entity = ENTITIES[
        next(e.name for e in ENTITIES.values() if e.table(event.source) == event.table)
    ]
    found = to_command(event, entity)
    assert isinstance(found, Command), found
    return found


def skipped(event: ChangeEvent) -> Skip:
    entity = next(e for e in ENTITIES.values() if e.table(event.source) == event.table)
    found = to_command(event, entity)
    assert isinstance(found, Skip), found
    return found


async def apply(sink: Sink, *commands: Command) -> Any:
    """Applies commands, then what they ask of their source (alignments), as the worker does."""
    return await sink.apply(list(commands))


async def linked_client(settings: Settings, sinks: dict[Side, Sink], name: str) -> tuple[int, int]:
    """An OfiViaje client, checked and carried to the CRM: (client id, account id)."""
    created = write(
        settings,
        Side.ERP,
        "client",
        "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (name,),
    )
    result = await sinks[Side.CRM].apply([command(created)])
    assert result.applied, result
    client = int(created.key)
    account = one(settings, Side.ERP, "SELECT crm_id FROM clientes WHERE id = %s", (client,))
    return client, int(account)
