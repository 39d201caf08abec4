"""Reapply (apply stage): a side's own changes applied to that side again, by `ofisync replay`
after the side was restored from a backup. The sync's own writes are never captured (PostgreSQL
16+ does not send them; on older servers they are dropped as echoes), so what a side's people did
since the backup can only come back from that side's own captured history.

Each field takes the value the change left where nothing newer holds it (the clock rule, as
history: streams/core/conflicts.py). A record the backup does not have is written again with its
own id (and the id sequence moved past it). Its link to the other side is taken from the other
side, which still knows it (the sync's link-backs were never captured). A record a person deleted
since the backup is flagged, as the other side's pair already is: a person decides.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from streams.apply.records import Records, own_kinds
from streams.apply.results import BatchResult
from streams.apply.statements import CLOCKS, DELETED, ident
from streams.apply.unit_of_work import WorkingSet
from streams.core.conflicts import Current, Incoming, decide
from streams.core.contract import ENTITIES
from streams.core.model import Command, Entity, Side, canonical, to_db


async def reapply(
    ws: WorkingSet,
    records: Records,
    cmd: Command,
    result: BatchResult,
    other: psycopg.AsyncConnection[Any],
) -> None:
    entity = ENTITIES[cmd.entity]
    side = ws.target
    link = entity.link(side)
    row = await ws.find(entity, cmd)
    if not cmd.values:  # a delete
        if row is None or row[DELETED]:
            result.noops += 1
        else:
            ws.update(entity, row, {link: None} if link else {}, unlinked=True)
        return
    kinds = own_kinds(entity, side)
    if row is None:
        columns = {v.field: to_db(kinds[v.field], v.after) for v in cmd.values}
        if link is not None:
            columns[link] = await _other_link(other, entity, side, int(cmd.source_key))
        clocks = {v.field: v.clock if cmd.full else cmd.commit_us for v in cmd.values}
        await ws.insert(entity, columns, clocks, None, own_id=int(cmd.source_key))
        result.applied.append(cmd)
        return
    if row[DELETED]:
        result.flagged += 1
        return
    policy = records.policy_for(entity)
    updates: dict[str, Any] = {}
    stamps: dict[str, int | None] = {}
    for v in cmd.values:
        at = v.clock if cmd.full else cmd.commit_us
        current = Current(canonical(kinds[v.field], row[v.field]), row[CLOCKS].get(v.field))
        decision = decide(
            Incoming(side, v.before, v.after, at or 0, cmd.full, True, v.base), current, policy
        )
        if decision.apply:
            updates[v.field] = to_db(kinds[v.field], v.after)
        if decision.apply or decision.restamp:
            stamps[v.field] = at
    if link is not None and row[link] is None:
        linked = await _other_link(other, entity, side, int(cmd.source_key))
        if linked is not None:
            updates[link] = linked
    if not updates and not stamps:
        result.noops += 1
        return
    ws.update(entity, row, updates, stamps)
    result.applied.append(cmd)


async def _other_link(
    other: psycopg.AsyncConnection[Any], entity: Entity, side: Side, own_id: int
) -> int | None:
    """The id of the record linked to `own_id` on the other side, if it has one."""
    other_link = entity.link(side.other)
    if other_link is None:
        return None
    async with other.transaction():
        cur = await other.execute(
            sql.SQL("SELECT id FROM {} WHERE {} = %s").format(
                ident(entity.table(side.other)), ident(other_link)
            ),
            (own_id,),
        )
        found = await cur.fetchone()
    return None if found is None else int(found[0])
