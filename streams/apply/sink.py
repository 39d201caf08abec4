"""Sink (apply stage): where commands become writes in one target database (psycopg 3).

One transaction per batch (streams/apply/batch.py) on a session whose writes are all the sync's
own (streams/apply/connections.py): on PostgreSQL 16+ they are never captured, on older servers
their capture is dropped as an echo. What the sync keeps about a record (its position, its
clocks) is written in the record's row in the same transaction, so a redelivered change does
nothing. After the target commits, links and document states go back to the source
(streams/apply/write_back.py).

The values of a command are the source's; they are put in the target's terms here
(streams/apply/translate.py), with the mapping as it is when the command applies. One use of the
sessions at a time: the batches of live changes, of commands (retries, replays) and the releases
of parked changes take turns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import psycopg

from streams.apply import documents, parking
from streams.apply.batch import BatchTransaction, uploads
from streams.apply.connections import SinkConnections, keep_commit_time
from streams.apply.parking import ParentKey
from streams.apply.records import Records
from streams.apply.results import PERMANENT, BatchResult
from streams.apply.write_back import write_back
from streams.core.conflicts import Policy
from streams.core.mapping import Mapping as SyncMapping
from streams.core.model import Command, Side
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
        connections: SinkConnections,
        policy: Policy,
        mapping: Callable[[], SyncMapping] = SyncMapping,
    ) -> None:
        self.target = target
        self.connections = connections
        self.mapping = mapping
        self.records = Records(target, policy, mapping, connections.limits)
        self._lock = asyncio.Lock()

    @property
    def target_dsn(self) -> str:
        return self.connections.target_dsn

    def backend_pids(self, side: Side) -> list[int]:
        return self.connections.backend_pids(side)

    async def close(self) -> None:
        await self.connections.close()

    @asynccontextmanager
    async def _exclusive(self, commands: Sequence[Command] = ()) -> AsyncIterator[None]:
        """One use of the sessions at a time; an unreachable database becomes a TransientError
        (after telling the user about the documents of `commands`)."""
        async with self._lock:
            try:
                yield
            except psycopg.errors.TransactionRollback as exc:  # a deadlock, not an outage
                raise Contended(str(exc).strip().splitlines()[0]) from exc
            except psycopg.OperationalError as exc:
                await self.connections.drop()
                await self._note_unreachable(commands)
                raise TransientError(str(exc).strip().splitlines()[0]) from exc

    async def apply(
        self, commands: Sequence[Command], parked: Mapping[int, int] | None = None
    ) -> BatchResult:
        """Applies a batch. `parked` maps id(command) to its parked row, for released ones."""
        commands = parents_first(commands)  # streams/core/order.py
        async with self._exclusive(commands):
            conns = self.connections
            conn = await conns.target()
            limits = await conns.text_limits()

            def batch(careful: bool) -> BatchTransaction:
                return BatchTransaction(
                    conn, conns.source, self.records, self.mapping(), limits, careful
                )

            try:
                result = await batch(careful=False).run(commands, parked or {})
            except PERMANENT:
                result = await batch(careful=True).run(commands, parked or {})
            await write_back(conns, self.target, result)
            return result

    async def _note_unreachable(self, commands: Sequence[Command]) -> None:
        """Documents that cannot go up now say so in OfiViaje (when OfiViaje is reachable)."""
        waiting = [int(c.source_key) for c in commands if uploads(c) and self.target is Side.CRM]
        if not waiting:
            return
        try:
            conn = await self.connections.source()
            async with conn.transaction():
                await keep_commit_time(conn)
                await documents.write_notes(conn, [(d, documents.CRM_UNREACHABLE) for d in waiting])
        except psycopg.Error:
            await self.connections.drop()

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
        return await self._read(self.connections.target, lambda c: parking.due(c, parents))

    async def parked_count(self) -> int:
        return await self._read(self.connections.target, parking.count)

    async def document_backlog(self) -> tuple[int, int]:
        """OfiViaje documents marked G, and how many of them carry an error (CRM sink)."""
        return await self._read(self.connections.source, documents.backlog)
