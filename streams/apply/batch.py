"""Batch (apply stage): one transaction of the target database over a batch of commands.

In order: which of the batch's records have changes parked (they wait behind them), the rows of
the batch read and locked set-wise, the records new ones may match, the parked changes being
released claimed; then each command in turn (streams/apply/records.py, documents, ownership,
reapply), their writes flushed set-wise, and the parked changes moved. The batch is optimistic: a
command the target cannot hold aborts the transaction, and the sink runs the batch again
`careful`, each command in a savepoint of its own, so only that one becomes a dead letter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import psycopg

from streams.apply import documents, ownership, parking
from streams.apply.connections import keep_commit_time, pipelined_transaction
from streams.apply.parking import RecordKey, Waiting
from streams.apply.reapply import reapply
from streams.apply.records import Duplicate, Held, Records, Rejected
from streams.apply.results import PERMANENT, Applied, BatchResult
from streams.apply.statements import flagged_sql, json_rows
from streams.apply.translate import Translator
from streams.apply.unit_of_work import WorkingSet, too_long
from streams.core.contract import DOCUMENT, ENTITIES
from streams.core.mapping import Mapping as SyncMapping
from streams.core.model import Command, CommandOp

Connection = psycopg.AsyncConnection[Any]

_DEAD = object()
# Members as module names (streams/core/model.py says why): asked several times a change.
_UPSERT, _DELETE, _REAPPLY = CommandOp.UPSERT, CommandOp.DELETE, CommandOp.REAPPLY
_OWN_ROWS = frozenset((CommandOp.RESTORE, CommandOp.ALIGN, CommandOp.ZERO_PLACEHOLDERS))


def uploads(cmd: Command) -> bool:
    """A document's upload: it streams its content itself (COPY), outside the unit of work."""
    return cmd.op is _UPSERT and cmd.entity == DOCUMENT.name


def row_write(cmd: Command) -> bool:
    """Commands applied through the unit of work: row upserts and deletes (a document upload
    streams its content itself; the commands a side gets about its own rows write their own)."""
    return (cmd.op is _UPSERT or cmd.op is _DELETE) and not uploads(cmd)


class BatchTransaction:
    def __init__(
        self,
        conn: Connection,
        source: Callable[[], Awaitable[Connection]],
        records: Records,
        mapping: SyncMapping,
        limits: Mapping[tuple[str, str], int],
        careful: bool,
    ) -> None:
        self.conn = conn
        self.source = source
        self.records = records
        self.target = records.target
        self.ws = WorkingSet(conn, self.target)
        self.translator = Translator(self.ws, self.target, mapping)
        self.limits = limits
        self.careful = careful
        self.result = BatchResult()
        self.moves = parking.Moves()
        self.waiting: set[RecordKey] = set()
        self.claimed: set[int] = set()
        self.flagged_at_source: set[RecordKey] = set()

    async def run(self, commands: Sequence[Command], parked: Mapping[int, int]) -> BatchResult:
        """Applies `commands` (`parked`: id(command) → its parked row, for released ones)."""
        async with self._transaction(commands):
            await keep_commit_time(self.conn)
            waiting = await _start_waiting(self.conn, commands, parked.values())
            writes = [c for c in commands if row_write(c) or c.op is _REAPPLY]
            self.flagged_at_source = await self._flagged_at_source(commands)
            await self.ws.load(writes)
            self.waiting = {(s, e, k) for s, e, k in await waiting.fetchall()}
            await self.records.prepare(self.ws)
            self.claimed = await parking.claim(self.conn, parked.values())
            for cmd in commands:
                await self._one(cmd, parked.get(id(cmd)))
            await self.ws.flush()
            await parking.write(self.conn, self.moves)
        numbers = await self.ws.generated_numbers()
        result = self.result
        result.links = [
            (cmd, target_id, number or numbers.get((self._table(cmd), target_id)))
            for cmd, target_id, number in result.links
        ]
        result.fallbacks.update(self.translator.fallbacks)
        return result

    def _transaction(
        self, commands: Sequence[Command]
    ) -> contextlib.AbstractAsyncContextManager[Any]:
        """A careful batch needs each command's error in its own savepoint, and a document's
        upload streams COPY, which a pipeline cannot carry; any other batch is one pipeline."""
        if self.careful or any(uploads(c) for c in commands):
            return self.conn.transaction()
        return pipelined_transaction(self.conn)

    async def _flagged_at_source(self, commands: Sequence[Command]) -> set[RecordKey]:
        """The replayed upserts whose source record is flagged now (the other side deleted its
        pair since): the sync's flag is never captured, so only the source says so."""
        by_entity: dict[str, set[int]] = {}
        for cmd in commands:
            if cmd.replay and cmd.op is CommandOp.UPSERT and cmd.target is not cmd.source:
                by_entity.setdefault(cmd.entity, set()).add(int(cmd.source_key))
        if not by_entity:
            return set()
        source = await self.source()
        found: set[RecordKey] = set()
        async with source.transaction():
            for name, ids in by_entity.items():
                entity = ENTITIES[name]
                cur = await source.execute(
                    flagged_sql(entity.table(self.target.other)), (sorted(ids),)
                )
                side = self.target.other.value
                found |= {(side, name, str(r[0])) for r in await cur.fetchall()}
        return found

    def _table(self, cmd: Command) -> str:
        return ENTITIES[cmd.entity].table(self.target)

    async def _one(self, cmd: Command, parked_id: int | None) -> None:
        key = parking.record_key(cmd)
        if parked_id is not None and parked_id not in self.claimed:
            self.waiting.add(key)  # another worker releases it; the record's later ones wait
            return
        if cmd.op in _OWN_ROWS:
            await self._own_rows(cmd)
            return
        if key in self.flagged_at_source:
            self.result.flagged += 1  # history of a record whose pair was deleted since
            return
        if key in self.waiting and cmd.op is not _REAPPLY:
            if parked_id is None:
                self.moves.park(cmd, None)
                self.result.parked += 1
            return
        outcome = await self._guarded(cmd, self._work(cmd))
        if isinstance(outcome, Waiting):
            self.waiting.add(key)
            if parked_id is None:
                self.moves.park(cmd, outcome)
                self.result.parked += 1
            else:
                self.moves.still_waiting(parked_id, outcome)
            return
        if parked_id is not None:
            self.moves.unpark(parked_id)
        if outcome is _DEAD:
            return
        if isinstance(outcome, Rejected):
            self.result.dead.append((cmd, outcome.reason))
            return
        if isinstance(outcome, Held):
            return
        if isinstance(outcome, Duplicate):
            # The link-back may have been lost in a crash after the commit.
            if cmd.op is _UPSERT and cmd.link_key is None:
                self._linked(cmd, outcome.row["id"], None)
            return
        if cmd.op is not _REAPPLY:
            self.result.applied.append(cmd)
        if isinstance(outcome, Applied):
            self._linked(cmd, outcome.target_id, outcome.number)

    def _work(self, cmd: Command) -> Awaitable[Any]:
        if cmd.op is _REAPPLY:
            return self._reapply(cmd)
        if cmd.op is _DELETE:
            return self._delete(cmd)
        if row_write(cmd):
            return self.records.upsert(self.ws, self.translator, cmd, self.result)
        return self._upload(cmd)

    async def _reapply(self, cmd: Command) -> None:
        await reapply(self.ws, self.records, cmd, self.result, await self.source())

    async def _delete(self, cmd: Command) -> None:
        row = await self.ws.find(ENTITIES[cmd.entity], cmd)
        self.records.delete(self.ws, cmd, self.result, row)

    async def _upload(self, cmd: Command) -> Any:
        await self.ws.flush()  # its file may be one this batch inserts
        return await documents.upload(
            self.conn, await self.source(), self.translator, cmd, self.result
        )

    async def _own_rows(self, cmd: Command) -> None:
        """Restores, alignments and zeroing write the target themselves: what waits goes first,
        and what was read may be stale after them."""
        await self.ws.flush()
        if cmd.op is CommandOp.ZERO_PLACEHOLDERS:
            work = ownership.zero_placeholders(self.conn, cmd, self.translator.mapping)
        else:
            work = ownership.take_other_values(
                self.conn, await self.source(), self.target, self.translator, cmd, self.result
            )
        if await self._guarded(cmd, work) is not _DEAD:
            self.result.applied.append(cmd)
        self.ws.forget()

    def _linked(self, cmd: Command, target_id: int, number: Any) -> None:
        result = self.result
        result.linked += parking.linked_parents(cmd, self.target, target_id)
        entity = ENTITIES[cmd.entity]
        if entity.erp_send_when is not None:
            result.uploaded.append((int(cmd.source_key), target_id))
            return
        if entity.link(cmd.source) is None:
            return
        row = self.ws.rows[entity.table(self.target)].get(target_id, {})
        number_column = entity.number(self.target)
        if number is None and number_column:
            number = row.get(number_column)
        if cmd.link_key != str(target_id):
            result.links.append((cmd, target_id, None if number is None else str(number)))

    async def _guarded(self, cmd: Command, work: Awaitable[Any]) -> Any:
        """Careful: runs one command and writes what it queued in a savepoint, where a permanent
        error rolls back just those and makes the command a dead letter. Otherwise the writes
        wait for the batch's flush, where an error aborts the batch."""
        if not self.careful:
            return await work
        try:
            async with self.conn.transaction():
                outcome = await work
                await self.ws.flush()
                return outcome
        except PERMANENT as exc:
            reason = f"{type(exc).__name__}: {exc}".strip()
            if isinstance(exc, psycopg.errors.StringDataRightTruncation):
                with contextlib.suppress(psycopg.Error):  # the details are a courtesy
                    found = too_long(self.ws.pending_texts(), dict(self.limits))
                    if found:
                        reason += f" ({'; '.join(found)}: shorten it at the source)"
            if isinstance(exc, psycopg.errors.UniqueViolation):
                reason += (
                    "; another record of the target already holds that value: change it on"
                    " one side, then `ofisync dlq retry` this letter"
                )
            self.ws.forget()
            self.result.dead.append((cmd, reason))
            return _DEAD


async def _start_waiting(
    conn: Connection, commands: Sequence[Command], releasing: Iterable[int]
) -> psycopg.AsyncCursor[Any]:
    """Asks for the batch's records that have changes parked (other than those being released):
    their later changes wait behind them. Read once the batch's rows are read too (in a pipeline,
    both answers come in one round trip)."""
    keys = sorted({parking.record_key(c) for c in commands})
    return await conn.execute(
        "SELECT DISTINCT p.source, p.entity, p.source_key FROM ofisync.parked p"
        " JOIN jsonb_to_recordset(%s::jsonb) AS k(s text, e text, k text)"
        "  ON p.source = k.s AND p.entity = k.e AND p.source_key = k.k"
        " WHERE p.id <> ALL(%s::bigint[])",
        (json_rows([{"s": s, "e": e, "k": k} for s, e, k in keys]), list(releasing)),
    )
