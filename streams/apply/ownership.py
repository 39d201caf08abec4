"""Ownership and placeholders (apply stage): the commands a side gets about its own rows.

RESTORE: a side changed fields of a linked record that the other side owns; the owner's current
values are read now and written back (so the row converges to them whatever else is in flight),
and each attempt is recorded once in `ofisync.lock_violations`.
ALIGN: a full push met newer values on the other side (an opt-in, a snapshot, a record matched);
the source record takes them, the same way but with nothing to record.
Both copy the other side's clocks with its values, so both sides hold one version of each field.
ZERO_PLACEHOLDERS: a ticket was captured from a PNR; when the agency turned it on
(`config_crm.ofisync_zero_placeholders`), the file's placeholder tickets go to 0.
"""

from __future__ import annotations

from typing import Any

import orjson
import psycopg
from psycopg import sql

from streams.apply.results import BatchResult, text
from streams.apply.statements import CLOCKS, RESOLVED_CLOCKS, ident
from streams.apply.translate import Translator
from streams.apply.unit_of_work import select_rows
from streams.core.contract import ENTITIES
from streams.core.mapping import Mapping
from streams.core.model import Canonical, Command, CommandOp, Entity, Side, canonical, to_db


async def zero_placeholders(
    conn: psycopg.AsyncConnection[Any], cmd: Command, mapping: Mapping
) -> None:
    if not mapping.defaults.zero_placeholders_on_pnr or not cmd.values:
        return
    await conn.execute(
        "UPDATE billetes SET importe = 0 WHERE expediente_id = %s"
        " AND origen_registro = 'crm' AND importe IS DISTINCT FROM 0",
        (cmd.values[0].after,),
    )


async def take_other_values(
    conn: psycopg.AsyncConnection[Any],
    other_conn: psycopg.AsyncConnection[Any],
    side: Side,
    translator: Translator,
    cmd: Command,
    result: BatchResult,
) -> None:
    """RESTORE or ALIGN `cmd`'s fields of a record on `side` from its pair on the other side."""
    entity = ENTITIES[cmd.entity]
    found = await select_rows(conn, entity, side, ids=[int(cmd.source_key)])
    row = found[0] if found else None
    link = entity.link(side)
    if row is None or link is None or row.get(link) is None:
        return
    other = await _other_row(other_conn, entity, side.other, int(row[link]))
    if other is None:
        return
    values = await translator.other_values(entity, *other)
    updates: dict[str, Any] = {}
    stamps: dict[str, str] = {}
    for attempt in cmd.values:
        value = values.get(attempt.field)
        if value is None:
            continue
        if canonical(value.kind, row[attempt.field]) != value.after:
            updates[attempt.field] = to_db(value.kind, value.after)
        if value.clock is not None and row[CLOCKS].get(attempt.field) != value.clock:
            stamps[attempt.field] = f"t:{value.clock}"
        if cmd.op is CommandOp.RESTORE:
            cur = await conn.execute(
                "INSERT INTO ofisync.lock_violations (entity, record_key, field, attempted_value,"
                " restored_value, attempted_by, source_lsn) VALUES (%s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (entity, record_key, field, source_lsn) DO NOTHING RETURNING 1",
                (
                    entity.name,
                    cmd.source_key,
                    attempt.field,
                    text(attempt.after),
                    text(value.after),
                    cmd.actor,
                    cmd.lsn,
                ),
            )
            # What was recorded is read back, not counted from the status: in a pipelined
            # batch the status is not there until the results are.
            result.lock_violations += len(await cur.fetchall())
    if updates or stamps:
        assigned: list[sql.Composable] = [sql.SQL("{} = %s").format(ident(c)) for c in updates]
        assigned.append(sql.SQL("ofisync_clocks = coalesce(ofisync_clocks, '{}') || %s::jsonb"))
        await conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
                ident(entity.table(side)), sql.SQL(", ").join(assigned)
            ),
            [*updates.values(), orjson.dumps(stamps).decode(), row["id"]],
        )


async def _other_row(
    conn: psycopg.AsyncConnection[Any], entity: Entity, side: Side, other_id: int
) -> tuple[dict[str, Canonical], dict[str, int]] | None:
    """A record's current values on `side` (canonical) and the clocks of its fields."""
    names = [f.name(side) for f in entity.fields]
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL("SELECT {}, {} FROM {} WHERE id = %s").format(
                sql.SQL(", ").join(ident(n) for n in names),
                sql.SQL(RESOLVED_CLOCKS),
                ident(entity.table(side)),
            ),
            (other_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    values = {
        f.name(side): canonical(f.kind_on(side), v)
        for f, v in zip(entity.fields, row[:-1], strict=True)
    }
    clocks = {k: int(v) for k, v in (row[-1] or {}).items() if v is not None}
    return values, clocks
