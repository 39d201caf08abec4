"""Write-back (apply stage): what a batch writes into its source database once the target has
committed: the target ids (and numbers) into the source rows that were linked, documents marked
uploaded or given a reason, both as the sync (never captured); and the boxes of parents the source
must sync first, checked as a person would (captured, so the parent crosses). Idempotent: a
crash between the target's commit and these is repaired when the batch is redelivered.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

import psycopg
from psycopg import sql

from streams.apply import documents, parent_links, parking
from streams.apply.connections import SinkConnections, keep_commit_time, pipelined_transaction
from streams.apply.results import BatchResult
from streams.apply.statements import ident
from streams.core.contract import ENTITIES
from streams.core.model import Command, Side


async def write_back(conns: SinkConnections, target: Side, result: BatchResult) -> None:
    if result.opt_ins:
        person = await conns.person()
        async with person.transaction():
            for entity, parent_id in result.opt_ins:
                assert entity.erp_opt_in is not None
                await person.execute(
                    sql.SQL("UPDATE {} SET {} = true WHERE id = %s AND NOT {}").format(
                        ident(entity.table(target.other)),
                        ident(entity.erp_opt_in),
                        ident(entity.erp_opt_in),
                    ),
                    (parent_id,),
                )
    if not (result.links or result.uploaded or result.document_notes):
        return
    conn = await conns.source()
    # Nothing here reads a result: the whole transaction goes in one round trip.
    async with pipelined_transaction(conn):
        await keep_commit_time(conn)
        await documents.write_notes(conn, result.document_notes)
        await documents.mark_uploaded(conn, result.uploaded)
        await _link_back(conn, result.links)
        # Now both sides know these parents: children another worker parked may go.
        await parent_links.notify(
            conn,
            [
                parent
                for cmd, target_id, _ in result.links
                for parent in parking.linked_parents(cmd, target, target_id)
            ],
        )


async def _link_back(
    conn: psycopg.AsyncConnection[Any], links: Sequence[tuple[Command, int, str | None]]
) -> None:
    """The target ids (and own numbers) written into their source rows, one UPDATE per table;
    rows that already hold them are not written."""
    by_table: dict[tuple[str, Side], dict[int, tuple[int, str | None]]] = {}
    for cmd, target_id, number in links:
        rows = by_table.setdefault((cmd.entity, cmd.source), {})
        earlier = rows.get(int(cmd.source_key))
        rows[int(cmd.source_key)] = (target_id, number or (earlier[1] if earlier else None))
    for (name, side), rows in by_table.items():
        await conn.execute(
            _link_back_sql(name, side),
            (list(rows), [r[0] for r in rows.values()], [r[1] for r in rows.values()]),
        )


@cache
def _link_back_sql(name: str, side: Side) -> str:
    entity = ENTITIES[name]
    link, number = entity.link(side), entity.link_number(side)
    assert link is not None
    assigned: list[tuple[sql.Composable, sql.Composable]] = [(ident(link), sql.SQL("v.target_id"))]
    if number:  # a number not known keeps what the row holds
        assigned.append((ident(number), sql.SQL("coalesce(v.number, t.{})").format(ident(number))))
    return (
        sql.SQL(
            "UPDATE {table} AS t SET {sets}"
            " FROM unnest(%s::bigint[], %s::bigint[], %s::text[]) AS v(id, target_id, number)"
            " WHERE t.id = v.id AND ({columns}) IS DISTINCT FROM ({values})"
        )
        .format(
            table=ident(entity.table(side)),
            sets=sql.SQL(", ").join(sql.SQL("{} = {}").format(c, v) for c, v in assigned),
            columns=sql.SQL(", ").join(sql.SQL("t.{}").format(c) for c, _ in assigned),
            values=sql.SQL(", ").join(v for _, v in assigned),
        )
        .as_string()
    )
