"""Apply: the edge where commands become writes in the target database (psycopg 3).

One transaction per batch, on a connection whose writes are all marked as the sync's own
(`ofisync.origin`), so the capture of these writes is dropped as an echo. The batch's rows are
read and written set-wise through its working set (streams/working.py). Each command is guarded
by the source position recorded in `ofisync.applied` in the same transaction (exactly-once
effect); when the target cannot hold a command the batch runs again command by command, each in
a savepoint, so only that one becomes a dead letter while the rest commits; a command whose
parent is not linked here yet is parked (streams/parking.py). Links back to the source row are
written after the target commits and are idempotent, so a crash between the two is repaired by
redelivery.

The values of a command are the source's; they are put in the target's terms here
(streams/translate.py), with the mapping as it is when the command applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache
from typing import Any, TypeVar

import psycopg
from psycopg import sql

from streams.apply import documents, parking
from streams.apply import ownership as locks
from streams.apply import parent_links as linked
from streams.apply.parking import ParentKey, RecordKey, Waiting
from streams.apply.records import PERMANENT, Applied, BatchResult, Rows, ident
from streams.apply.translate import Translator
from streams.apply.unit_of_work import WorkingSet, json_rows, too_long
from streams.core.conflicts import Policy
from streams.core.contract import DOCUMENT, ENTITIES
from streams.core.mapping import Mapping as SyncMapping
from streams.core.model import SELF_TARGETED, SYNC_ORIGIN, Command, CommandOp, Side
from streams.core.order import parents_first

log = logging.getLogger("ofisync.sink")

T = TypeVar("T")


class TransientError(RuntimeError):
    """The database cannot be reached now; retry the whole batch later."""


class Contended(TransientError):
    """PostgreSQL rolled the batch back to break a deadlock with another writer (another
    worker's sink, or an application): the connection is fine and the batch can go again."""


class Sink:
    """Applies commands to one side; writes link-backs to the other."""

    def __init__(
        self,
        target: Side,
        target_dsn: str,
        source_dsn: str,
        policy: Policy,
        mapping: Callable[[], SyncMapping] = SyncMapping,
    ) -> None:
        self.target = target
        self.target_dsn = target_dsn
        self.source_dsn = source_dsn
        self.mapping = mapping
        self.rows = Rows(target, policy, mapping)
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._source_conn: psycopg.AsyncConnection[Any] | None = None
        # apply() and release() share the connections: one at a time.
        self._lock = asyncio.Lock()
        self._limits: dict[tuple[str, str], int] | None = None  # text columns' lengths

    async def _connect(self, dsn: str) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=5)
        await conn.execute("SET application_name = 'ofisync-sink'")
        await conn.commit()
        return conn

    async def conn(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            conn = await self._connect(self.target_dsn)
            # Everything this connection writes is the sync's own (a round trip per batch less
            # than SET LOCAL; the source connection also writes as a person, see _write_back).
            await conn.execute(f"SET ofisync.origin = '{SYNC_ORIGIN}'")
            await conn.commit()
            self._conn = conn
        return self._conn

    def backend_pids(self, side: Side) -> list[int]:
        """The server process of this sink's open connection to `side`'s database (what its
        notifications come from, streams/linked.py)."""
        conn = self._conn if side is self.target else self._source_conn
        return [] if conn is None or conn.closed else [conn.info.backend_pid]

    async def source_conn(self) -> psycopg.AsyncConnection[Any]:
        if self._source_conn is None or self._source_conn.closed:
            self._source_conn = await self._connect(self.source_dsn)
        return self._source_conn

    async def close(self) -> None:
        for c in (self._conn, self._source_conn):
            if c is not None and not c.closed:
                await c.close()

    @asynccontextmanager
    async def _exclusive(self, commands: Sequence[Command] = ()) -> AsyncIterator[None]:
        """One use of the connections at a time; an unreachable database becomes a
        TransientError (after telling the user about the documents of `commands`)."""
        async with self._lock:
            try:
                yield
            except psycopg.errors.TransactionRollback as exc:  # a deadlock, not an outage
                raise Contended(str(exc).strip().splitlines()[0]) from exc
            except psycopg.OperationalError as exc:
                await self._drop_connections()
                await self._note_unreachable(commands)
                raise TransientError(str(exc).strip().splitlines()[0]) from exc

    async def apply(
        self, commands: Sequence[Command], parked: Mapping[int, int] | None = None
    ) -> BatchResult:
        """Applies a batch. `parked` maps id(command) to its parked row, for released ones."""
        commands = parents_first(commands)  # streams/order.py
        async with self._exclusive(commands):
            try:
                # Optimistic: no savepoint per command. A command the target cannot hold
                # aborts the transaction; then the batch runs again, each command in its
                # own savepoint, so only that one becomes a dead letter.
                result = await self._apply_batch(commands, parked or {}, careful=False)
            except PERMANENT:
                result = await self._apply_batch(commands, parked or {}, careful=True)
            await self._write_back(result)
            return result

    async def _note_unreachable(self, commands: Sequence[Command]) -> None:
        """Documents that cannot go up now say so in OfiViaje (when OfiViaje is reachable)."""
        waiting = [
            int(c.source_key)
            for c in commands
            if c.entity == DOCUMENT.name and c.op is CommandOp.UPSERT and self.target is Side.CRM
        ]
        if not waiting:
            return
        try:
            conn = await self.source_conn()
            async with conn.transaction():
                await conn.execute(f"SET LOCAL ofisync.origin = '{SYNC_ORIGIN}'")
                await documents.write_notes(conn, [(d, documents.CRM_UNREACHABLE) for d in waiting])
        except psycopg.Error:
            await self._drop_connections()

    async def _read(
        self,
        connection: Callable[[], Awaitable[psycopg.AsyncConnection[Any]]],
        read: Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]],
    ) -> T:
        async with self._exclusive():
            conn = await connection()
            found = await read(conn)
            await conn.commit()
            return found

    async def due(self, parents: Sequence[ParentKey] = ()) -> list[tuple[int, Command]]:
        """The parked changes to try now: parent just linked, or back-off run out."""
        return await self._read(self.conn, lambda conn: parking.due(conn, parents))

    async def parked_count(self) -> int:
        return await self._read(self.conn, parking.count)

    async def document_backlog(self) -> tuple[int, int]:
        """OfiViaje documents marked G, and how many of them carry an error (CRM sink)."""
        return await self._read(self.source_conn, documents.backlog)

    async def _drop_connections(self) -> None:
        for c in (self._conn, self._source_conn):
            if c is not None:
                await c.close()

    async def _apply_batch(
        self, commands: Sequence[Command], parked: Mapping[int, int], careful: bool
    ) -> BatchResult:
        result = BatchResult()
        conn = await self.conn()
        ws = WorkingSet(conn, self.target)
        translator = Translator(ws, self.target, self.mapping())
        async with conn.transaction():
            positions, waiting = await self._record_states(conn, commands, parked.values())
            await ws.load([c for c in commands if _row_write(c)])
            claimed = await parking.claim(conn, parked.values())
            moves = parking.Moves()
            for cmd in commands:
                parked_id = parked.get(id(cmd))
                key = parking.record_key(cmd)
                if parked_id is not None and parked_id not in claimed:
                    waiting.add(key)  # another worker releases it; the record's later ones wait
                    continue
                if cmd.op in SELF_TARGETED:
                    # These write the target themselves: what waits goes first, and what was
                    # read may be stale after them.
                    await ws.flush()
                    own = (
                        locks.zero_placeholders(conn, cmd, translator.mapping)
                        if cmd.op is CommandOp.ZERO_PLACEHOLDERS
                        else locks.restore(
                            conn, await self.source_conn(), self.target, translator, cmd, result
                        )
                    )
                    if await self._guarded(ws, cmd, result, own, careful) is not _DEAD:
                        result.applied.append(cmd)
                    ws.forget()
                    continue
                if positions.get(key, -1) >= cmd.lsn:
                    result.duplicates += 1
                    if parked_id is not None:
                        moves.unpark(parked_id)
                    elif cmd.op is CommandOp.UPSERT and cmd.link_key is None:
                        # The link-back may have been lost in a crash after the commit.
                        row = await ws.find(ENTITIES[cmd.entity], cmd)
                        if row is not None:
                            self._linked(result, cmd, row)
                    continue
                if key in waiting:
                    if parked_id is None:
                        moves.park(cmd, None)
                        result.parked += 1
                    continue
                if _row_write(cmd):
                    work = self.rows.apply_one(ws, translator, cmd, result)
                else:
                    await ws.flush()  # its file may be one this batch inserts
                    work = documents.upload(conn, await self.source_conn(), translator, cmd, result)
                outcome = await self._guarded(ws, cmd, result, work, careful)
                if isinstance(outcome, Waiting):
                    waiting.add(key)
                    if parked_id is None:
                        moves.park(cmd, outcome)
                        result.parked += 1
                    else:
                        moves.still_waiting(parked_id, outcome)
                    continue
                if parked_id is not None:
                    moves.unpark(parked_id)
                if outcome is _DEAD:
                    continue
                positions[key] = cmd.lsn
                result.positions[key] = (cmd.lsn, cmd.commit_us)
                result.applied.append(cmd)
                if isinstance(outcome, Applied):
                    self._linked(result, cmd, {"id": outcome.target_id}, outcome.number)
            await ws.flush()
            await parking.write(conn, moves)
            await self._record(conn, result)
        # Own numbers generated by the inserts are known once they are flushed.
        result.links = [
            (cmd, target_id, number or ws.numbers.get((self._table(cmd), target_id)))
            for cmd, target_id, number in result.links
        ]
        result.fallbacks += translator.fallbacks
        return result

    def _table(self, cmd: Command) -> str:
        return ENTITIES[cmd.entity].table(self.target)

    async def _record(self, conn: psycopg.AsyncConnection[Any], result: BatchResult) -> None:
        """The batch's applied positions, in one statement, in the same transaction as the
        writes they guard."""
        if not result.positions:
            return
        await conn.execute(
            "INSERT INTO ofisync.applied (source, entity, source_key, lsn, commit_us)"
            " SELECT * FROM jsonb_to_recordset(%s::jsonb)"
            "  AS v(source text, entity text, source_key text, lsn bigint, commit_us bigint)"
            " ON CONFLICT (source, entity, source_key) DO UPDATE"
            " SET lsn = excluded.lsn, commit_us = excluded.commit_us,"
            " applied_at = clock_timestamp()",
            (
                json_rows(
                    [
                        {"source": s, "entity": e, "source_key": k, "lsn": lsn, "commit_us": us}
                        for (s, e, k), (lsn, us) in result.positions.items()
                    ]
                ),
            ),
        )

    def _linked(
        self, result: BatchResult, cmd: Command, row: Mapping[str, Any], number: Any = None
    ) -> None:
        target_id = int(row["id"])
        result.linked += parking.linked_parents(cmd, self.target, target_id)
        entity = ENTITIES[cmd.entity]
        if entity.erp_send_when is not None:
            result.uploaded.append((int(cmd.source_key), target_id))
            return
        if entity.link(cmd.source) is None:
            return
        number_column = entity.number(self.target)
        if number is None and number_column:
            number = row.get(number_column)
        if cmd.link_key != str(target_id):
            result.links.append((cmd, target_id, None if number is None else str(number)))

    async def _guarded(
        self, ws: WorkingSet, cmd: Command, result: BatchResult, work: Any, careful: bool
    ) -> Any:
        """Careful: runs one command and writes what it queued in a savepoint, where a permanent
        error rolls back just those and makes the command a dead letter. Otherwise the writes
        wait for the batch's flush, where an error aborts the batch."""
        if not careful:
            return await work
        try:
            async with ws.conn.transaction():
                outcome = await work
                await ws.flush()
                return outcome
        except PERMANENT as exc:
            reason = f"{type(exc).__name__}: {exc}".strip()
            if isinstance(exc, psycopg.errors.StringDataRightTruncation):
                with contextlib.suppress(psycopg.Error):  # the details are a courtesy
                    found = too_long(ws.pending_texts(), await self._text_limits(ws.conn))
                    if found:
                        reason += f" ({'; '.join(found)}: shorten it at the source)"
            ws.forget()
            result.dead.append((cmd, reason))
            return _DEAD

    async def _text_limits(self, conn: psycopg.AsyncConnection[Any]) -> dict[tuple[str, str], int]:
        """The most characters each limited text column of the target holds (read once)."""
        if self._limits is None:
            cur = await conn.execute(
                "SELECT table_name, column_name, character_maximum_length"
                " FROM information_schema.columns"
                " WHERE table_schema = 'public' AND character_maximum_length IS NOT NULL"
            )
            self._limits = {(t, c): n for t, c, n in await cur.fetchall()}
        return self._limits

    async def _record_states(
        self,
        conn: psycopg.AsyncConnection[Any],
        commands: Sequence[Command],
        releasing: Iterable[int],
    ) -> tuple[dict[RecordKey, int], set[RecordKey]]:
        """For the batch's records, in one statement: the position last applied to each, and
        which have changes parked (other than the parked rows being released)."""
        keys = sorted({parking.record_key(c) for c in commands})
        cur = await conn.execute(
            "SELECT k.s, k.e, k.k, a.lsn, EXISTS (SELECT FROM ofisync.parked p"
            "  WHERE p.source = k.s AND p.entity = k.e AND p.source_key = k.k"
            "  AND p.id <> ALL(%s::bigint[]))"
            " FROM jsonb_to_recordset(%s::jsonb) AS k(s text, e text, k text)"
            " LEFT JOIN ofisync.applied a"
            "  ON a.source = k.s AND a.entity = k.e AND a.source_key = k.k",
            (list(releasing), json_rows([{"s": s, "e": e, "k": k} for s, e, k in keys])),
        )
        positions, waiting = {}, set()
        for source, entity, key, lsn, has_parked in await cur.fetchall():
            if lsn is not None:
                positions[(source, entity, key)] = int(lsn)
            if has_parked:
                waiting.add((source, entity, key))
        return positions, waiting

    async def _write_back(self, result: BatchResult) -> None:
        """After the target committed: link ids (and numbers) back into the source rows and
        mark uploaded documents, as the sync (no echo); and check the box of parents the source
        must sync first, as a person would (captured, so the parent goes across)."""
        if not (result.links or result.opt_ins or result.uploaded or result.document_notes):
            return
        conn = await self.source_conn()
        if result.opt_ins:
            async with conn.transaction():
                for entity, parent_id in result.opt_ins:
                    assert entity.erp_opt_in is not None
                    await conn.execute(
                        sql.SQL("UPDATE {} SET {} = true WHERE id = %s AND NOT {}").format(
                            ident(entity.table(self.target.other)),
                            ident(entity.erp_opt_in),
                            ident(entity.erp_opt_in),
                        ),
                        (parent_id,),
                    )
        if not (result.links or result.uploaded or result.document_notes):
            return
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ofisync.origin = '{SYNC_ORIGIN}'")
            await documents.write_notes(conn, result.document_notes)
            await documents.mark_uploaded(conn, result.uploaded)
            await _link_back(conn, result.links)
            # Now both sides know these parents: children another worker parked may go.
            await linked.notify(
                conn,
                [
                    parent
                    for cmd, target_id, _ in result.links
                    for parent in parking.linked_parents(cmd, self.target, target_id)
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


_DEAD = object()


def _row_write(cmd: Command) -> bool:
    """Commands applied through the working set: row upserts and deletes (a document upload
    streams its content itself; restores and zeroing write their own rows)."""
    return cmd.op not in SELF_TARGETED and not (
        cmd.entity == DOCUMENT.name and cmd.op is CommandOp.UPSERT
    )
