"""Locks and placeholders (apply stage): the commands a side gets about its own rows.

RESTORE: a side changed fields of a linked record that the other side owns; the owner's current
values are read now and written back (so the row converges to them whatever else is in flight),
and each attempt is recorded once in `ofisync.lock_violations`.
ZERO_PLACEHOLDERS: a ticket was captured from a PNR; when the agency turned it on
(`config_crm.ofisync_zero_placeholders`), the file's placeholder tickets go to 0.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from streams.apply.records import BatchResult, assignments, ident, text
from streams.apply.translate import Translator
from streams.apply.unit_of_work import select_rows
from streams.core.contract import ENTITIES
from streams.core.mapping import Mapping
from streams.core.model import Canonical, Command, Entity, Side, canonical, to_db


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


async def restore(
    conn: psycopg.AsyncConnection[Any],
    owner_conn: psycopg.AsyncConnection[Any],
    target: Side,
    translator: Translator,
    cmd: Command,
    result: BatchResult,
) -> None:
    entity = ENTITIES[cmd.entity]
    found = await select_rows(conn, entity, target, ids=[int(cmd.source_key)])
    row = found[0] if found else None
    owner_link = entity.link(target)
    if row is None or owner_link is None or row.get(owner_link) is None:
        return
    owner_row = await _owner_row(owner_conn, entity, target.other, int(row[owner_link]))
    if owner_row is None:
        return
    restored = await translator.owner_values(entity, owner_row)
    updates: dict[str, Any] = {}
    for attempt in cmd.values:
        value = restored.get(attempt.field)
        if value is None:
            continue
        if canonical(value.kind, row[attempt.field]) != value.after:
            updates[attempt.field] = to_db(value.kind, value.after)
        cur = await conn.execute(
            "INSERT INTO ofisync.lock_violations (entity, record_key, field, attempted_value,"
            " restored_value, attempted_by, source_lsn) VALUES (%s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (entity, record_key, field, source_lsn) DO NOTHING",
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
        result.lock_violations += cur.rowcount
    if updates:
        await conn.execute(
            sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
                ident(entity.table(target)), assignments(list(updates))
            ),
            [*updates.values(), row["id"]],
        )


async def _owner_row(
    conn: psycopg.AsyncConnection[Any], entity: Entity, owner: Side, owner_id: int
) -> dict[str, Canonical] | None:
    names = [f.name(owner) for f in entity.fields]
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                sql.SQL(", ").join(ident(n) for n in names), ident(entity.table(owner))
            ),
            (owner_id,),
        )
        row = await cur.fetchone()
    if row is None:
        return None
    return {
        f.name(owner): canonical(f.kind_on(owner), v)
        for f, v in zip(entity.fields, row, strict=True)
    }
