"""Apply: the edge where commands become writes in the target database (psycopg 3).

One transaction per batch, marked as the sync's own (`SET LOCAL ofisync.origin`), so the
capture of these writes is dropped as an echo. Each command is guarded by the source position
recorded in `ofisync.applied` in the same transaction (exactly-once effect); a command the
target cannot hold is rolled back to its savepoint and returned as a dead letter while the
rest of the batch commits; a command whose parent is not linked here yet is parked
(streams/parking.py). Links back to the source row are written after the target commits and
are idempotent, so a crash between the two is repaired by redelivery.

The values of a command are the source's; they are put in the target's terms here
(streams/translate.py), with the mapping as it is when the command applies.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from streams import parking
from streams.conflicts import Current, Incoming, Policy, decide
from streams.mapping import Mapping as SyncMapping
from streams.model import (
    ENTITIES,
    FILE,
    SEGMENT,
    Canonical,
    Command,
    CommandOp,
    Entity,
    Side,
    Via,
    canonical,
    to_db,
)
from streams.parking import ParentKey, Waiting
from streams.translate import Translated, Translator

log = logging.getLogger("ofisync.sink")


class TransientError(RuntimeError):
    """The database cannot be reached now; retry the whole batch later."""


@dataclass
class BatchResult:
    applied: list[Command] = field(default_factory=list)
    duplicates: int = 0
    noops: int = 0
    conflicts: int = 0
    parked: int = 0
    lock_violations: int = 0
    fallbacks: list[tuple[Via, str]] = field(default_factory=list)  # mapping fallbacks
    dead: list[tuple[Command, str]] = field(default_factory=list)
    links: list[tuple[Command, int, str | None]] = field(default_factory=list)
    opt_ins: list[tuple[Entity, int]] = field(default_factory=list)  # parents to check
    linked: list[ParentKey] = field(default_factory=list)

    def absorb(self, other: BatchResult) -> None:
        """Adds another result's outcome to this one (applying a batch piece by piece)."""
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.noops += other.noops
        self.conflicts += other.conflicts
        self.parked += other.parked
        self.lock_violations += other.lock_violations
        self.fallbacks += other.fallbacks
        self.dead += other.dead
        self.links += other.links
        self.opt_ins += other.opt_ins
        self.linked += other.linked


SYNC_ORIGIN = "sync"
PERMANENT = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _assignments(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{} = %s").format(_ident(c)) for c in columns)


@dataclass(frozen=True)
class _Applied:
    target_id: int
    number: str | None = None


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
        self.policy = policy
        self.mapping = mapping
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._source_conn: psycopg.AsyncConnection[Any] | None = None
        # apply() and release() share the connections: one at a time.
        self._lock = asyncio.Lock()

    async def _connect(self, dsn: str) -> psycopg.AsyncConnection[Any]:
        conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=5)
        await conn.execute("SET application_name = 'ofisync-sink'")
        await conn.commit()
        return conn

    async def conn(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = await self._connect(self.target_dsn)
        return self._conn

    async def source_conn(self) -> psycopg.AsyncConnection[Any]:
        if self._source_conn is None or self._source_conn.closed:
            self._source_conn = await self._connect(self.source_dsn)
        return self._source_conn

    async def close(self) -> None:
        for c in (self._conn, self._source_conn):
            if c is not None and not c.closed:
                await c.close()

    async def apply(
        self, commands: Sequence[Command], parked: Mapping[int, int] | None = None
    ) -> BatchResult:
        """Applies a batch. `parked` maps id(command) to its parked row, for released ones."""
        async with self._lock:
            try:
                result = await self._apply_batch(commands, parked or {})
                await self._write_back(result)
                return result
            except psycopg.OperationalError as exc:
                await self._drop_connections()
                raise TransientError(str(exc).strip().splitlines()[0]) from exc

    async def due(self, parents: Sequence[ParentKey] = ()) -> list[tuple[int, Command]]:
        """The parked changes to try now: parent just linked, or back-off run out."""
        async with self._lock:
            try:
                conn = await self.conn()
                rows = await parking.due(conn, parents)
                await conn.commit()
                return rows
            except psycopg.OperationalError as exc:
                await self._drop_connections()
                raise TransientError(str(exc).strip().splitlines()[0]) from exc

    async def parked_count(self) -> int:
        async with self._lock:
            try:
                conn = await self.conn()
                n = await parking.count(conn)
                await conn.commit()
                return n
            except psycopg.OperationalError as exc:
                await self._drop_connections()
                raise TransientError(str(exc).strip().splitlines()[0]) from exc

    async def _drop_connections(self) -> None:
        for c in (self._conn, self._source_conn):
            if c is not None:
                await c.close()

    async def _apply_batch(
        self, commands: Sequence[Command], parked: Mapping[int, int]
    ) -> BatchResult:
        result = BatchResult()
        conn = await self.conn()
        translator = Translator(conn, self.target, self.mapping())
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ofisync.origin = '{SYNC_ORIGIN}'")
            positions = await self._positions(conn, commands)
            waiting = await parking.keys_with_parked(conn, commands, parked.values())
            for cmd in commands:
                parked_id = parked.get(id(cmd))
                key = parking.record_key(cmd)
                if cmd.op in (CommandOp.RESTORE, CommandOp.ZERO_PLACEHOLDERS):
                    await self._guarded(
                        conn, cmd, result, self._self_targeted(conn, translator, cmd, result)
                    )
                    continue
                if positions.get(key, -1) >= cmd.lsn:
                    result.duplicates += 1
                    if parked_id is not None:
                        await parking.unpark(conn, parked_id)
                    elif cmd.op is CommandOp.UPSERT and cmd.link_key is None:
                        # The link-back may have been lost in a crash after the commit.
                        row = await self._find(conn, ENTITIES[cmd.entity], cmd)
                        if row is not None:
                            self._linked(result, cmd, row)
                    continue
                if key in waiting:
                    if parked_id is None:
                        await parking.park(conn, cmd, None)
                        result.parked += 1
                    continue
                outcome = await self._guarded(
                    conn, cmd, result, self._apply_one(conn, translator, cmd, result)
                )
                if isinstance(outcome, Waiting):
                    waiting.add(key)
                    if parked_id is None:
                        await parking.park(conn, cmd, outcome)
                        result.parked += 1
                    else:
                        await parking.still_waiting(conn, parked_id, outcome)
                    continue
                if parked_id is not None:
                    await parking.unpark(conn, parked_id)
                if outcome is _DEAD:
                    continue
                await conn.execute(
                    "INSERT INTO ofisync.applied (source, entity, source_key, lsn,"
                    " commit_us) VALUES (%s, %s, %s, %s, %s)"
                    " ON CONFLICT (source, entity, source_key) DO UPDATE"
                    " SET lsn = excluded.lsn, commit_us = excluded.commit_us,"
                    " applied_at = clock_timestamp()",
                    (*key, cmd.lsn, cmd.commit_us),
                )
                positions[key] = cmd.lsn
                result.applied.append(cmd)
                if isinstance(outcome, _Applied):
                    self._linked(result, cmd, {"id": outcome.target_id}, outcome.number)
        result.fallbacks += translator.fallbacks
        return result

    def _linked(
        self, result: BatchResult, cmd: Command, row: Mapping[str, Any], number: Any = None
    ) -> None:
        target_id = int(row["id"])
        result.linked += parking.linked_parents(cmd, self.target, target_id)
        entity = ENTITIES[cmd.entity]
        if entity.link(cmd.source) is None:
            return
        number_column = entity.number(self.target)
        if number is None and number_column:
            number = row.get(number_column)
        if cmd.link_key != str(target_id):
            result.links.append((cmd, target_id, None if number is None else str(number)))

    async def _guarded(
        self,
        conn: psycopg.AsyncConnection[Any],
        cmd: Command,
        result: BatchResult,
        work: Any,
    ) -> Any:
        """Runs one command's writes in a savepoint; a permanent error rolls back just those
        and makes the command a dead letter."""
        try:
            async with conn.transaction():
                return await work
        except PERMANENT as exc:
            result.dead.append((cmd, f"{type(exc).__name__}: {exc}".strip()))
            return _DEAD

    async def _positions(
        self, conn: psycopg.AsyncConnection[Any], commands: Sequence[Command]
    ) -> dict[tuple[str, str, str], int]:
        keys = sorted({parking.record_key(c) for c in commands})
        cur = await conn.execute(
            "SELECT a.source, a.entity, a.source_key, a.lsn FROM ofisync.applied a"
            " JOIN unnest(%s::text[], %s::text[], %s::text[]) k(s, e, k)"
            " ON a.source = k.s AND a.entity = k.e AND a.source_key = k.k",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        )
        return {(r[0], r[1], r[2]): int(r[3]) for r in await cur.fetchall()}

    def _columns(self, entity: Entity) -> list[str]:
        side = self.target
        names = ["id", *(f.column(side) for f in entity.fields), *entity.marker(side)]
        for extra in (entity.link(side), entity.number(side)):
            if extra and extra not in names:
                names.append(extra)
        return names

    async def _select(
        self, conn: psycopg.AsyncConnection[Any], entity: Entity, column: str, value: Any
    ) -> dict[str, Any] | None:
        names = self._columns(entity)
        cur = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE {} = %s FOR UPDATE").format(
                sql.SQL(", ").join(_ident(n) for n in names),
                _ident(entity.table(self.target)),
                _ident(column),
            ),
            (value,),
        )
        row = await cur.fetchone()
        return None if row is None else dict(zip(names, row, strict=True))

    async def _find(
        self, conn: psycopg.AsyncConnection[Any], entity: Entity, cmd: Command
    ) -> dict[str, Any] | None:
        """The target row of `cmd`: by the id the source knows, else by the link column."""
        link = entity.link(self.target)
        if cmd.link_key is not None:
            row = await self._select(conn, entity, "id", int(cmd.link_key))
            if row is not None:
                return row
        return None if link is None else await self._select(conn, entity, link, int(cmd.source_key))

    def _policy(self, entity: Entity) -> Policy:
        if entity.owner is Side.ERP:
            return Policy.ERP_WINS
        if entity.owner is Side.CRM:
            return Policy.CRM_WINS
        return self.policy

    async def _apply_one(
        self,
        conn: psycopg.AsyncConnection[Any],
        translator: Translator,
        cmd: Command,
        result: BatchResult,
    ) -> _Applied | Waiting | None:
        entity = ENTITIES[cmd.entity]
        row = await self._find(conn, entity, cmd)
        if cmd.op is CommandOp.DELETE:
            if row is not None:
                await self._delete(conn, entity, row)
            return None
        values = await translator.command_values(entity, cmd, only_changed=row is not None)
        if isinstance(values, Waiting):
            parent = ENTITIES[values.parent_entity]
            if self.target is Side.CRM and parent.erp_opt_in:
                # OfiViaje must sync the parent first: its box gets checked (see _write_back).
                result.opt_ins.append((parent, int(values.parent_key)))
            return values
        if row is None:
            return await self._insert(conn, entity, cmd, values)
        return await self._update(conn, entity, cmd, row, values, result)

    def _marked(self, entity: Entity, row: Mapping[str, Any]) -> bool:
        """Whether a row the sync created still carries its marker (still a placeholder)."""
        return all(row.get(c) == v for c, v in entity.marker(self.target).items())

    async def _delete(
        self, conn: psycopg.AsyncConnection[Any], entity: Entity, row: Mapping[str, Any]
    ) -> None:
        table = _ident(entity.table(self.target))
        if entity.marker(self.target) and self._marked(entity, row):
            # A placeholder holds nothing but a copy of what was deleted: it goes too.
            await conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (row["id"],))
            return
        link = entity.link(self.target)
        assert link is not None
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET {} = NULL, ofisync_deleted_at = clock_timestamp() WHERE id = %s"
            ).format(table, _ident(link)),
            (row["id"],),
        )

    async def _insert(
        self,
        conn: psycopg.AsyncConnection[Any],
        entity: Entity,
        cmd: Command,
        values: Sequence[Translated],
    ) -> _Applied:
        side = self.target
        columns: dict[str, Any] = {v.column: to_db(v.kind, v.after) for v in values}
        link = entity.link(side)
        assert link is not None
        columns[link] = int(cmd.source_key)
        columns.update(entity.marker(side))
        if side is Side.ERP and entity.erp_opt_in:
            columns[entity.erp_opt_in] = True
        number = entity.number(side)
        generated: sql.Composable | None = None
        if entity is FILE and side is Side.ERP:
            defaults = translator_defaults(self.mapping())
            columns.update({k: v for k, v in defaults.items() if k not in columns})
            generated = sql.SQL("ofisync.next_file_number()")
        elif entity is FILE and side is Side.CRM:
            number_value = next(v.after for v in values if v.via is Via.NUMBER)
            columns[entity.crm_number or ""] = number_value
        if entity is SEGMENT and side is Side.ERP and await self._zeroing(conn, columns):
            columns["importe"] = 0
        names = list(columns)
        placeholders: list[sql.Composable] = [sql.Placeholder()] * len(names)
        if generated is not None and number:
            names.append(number)
            placeholders.append(generated)
        cur = await conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id, {}").format(
                _ident(entity.table(side)),
                sql.SQL(", ").join(_ident(c) for c in names),
                sql.SQL(", ").join(placeholders),
                _ident(number) if number else sql.SQL("NULL"),
            ),
            list(columns.values()),
        )
        created = await cur.fetchone()
        assert created is not None
        return _Applied(int(created[0]), None if created[1] is None else str(created[1]))

    async def _update(
        self,
        conn: psycopg.AsyncConnection[Any],
        entity: Entity,
        cmd: Command,
        row: Mapping[str, Any],
        values: Sequence[Translated],
        result: BatchResult,
    ) -> _Applied | None:
        side = self.target
        link = entity.link(side)
        assert link is not None
        if entity.marker(side) and not self._marked(entity, row):
            result.noops += 1  # no longer a placeholder: the real ticket is the agency's
            return None
        table = entity.table(side)
        clocks = await self._clocks(conn, table, str(row["id"]))
        policy = self._policy(entity)
        updates: dict[str, Any] = {}
        for v in values:
            current = Current(canonical(v.kind, row[v.column]), clocks.get(v.column))
            incoming = Incoming(cmd.source, v.before, v.after, cmd.commit_us, cmd.full)
            decision = decide(incoming, current, policy)
            if decision.conflict:
                result.conflicts += 1
                await self._record_conflict(
                    conn, entity, row["id"], v.column, incoming, current, policy,
                    "incoming" if decision.apply else "local",
                )  # fmt: skip
            if decision.apply:
                updates[v.column] = to_db(v.kind, v.after)
        if (
            entity is SEGMENT
            and side is Side.ERP
            and "importe" in updates
            and await self._zeroing(conn, {"expediente_id": row["expediente_id"]})
        ):
            updates["importe"] = 0
        applied = _Applied(int(row["id"]), _text(row.get(entity.number(side) or "")))
        if not updates and row[link] == int(cmd.source_key):
            result.noops += 1
            return applied
        stamped = dict(updates)
        updates[link] = int(cmd.source_key)
        await conn.execute(
            sql.SQL("UPDATE {} SET {}, ofisync_deleted_at = NULL WHERE id = %s").format(
                _ident(table), _assignments(list(updates))
            ),
            [*updates.values(), row["id"]],
        )
        if stamped:
            await conn.execute(
                "INSERT INTO ofisync.field_clock AS fc (tbl, pk, clocks)"
                " VALUES (%s, %s, %s::jsonb)"
                " ON CONFLICT (tbl, pk) DO UPDATE SET clocks = fc.clocks || excluded.clocks",
                (table, str(row["id"]), _clock_json(stamped, cmd.commit_us)),
            )
        return applied

    async def _zeroing(
        self, conn: psycopg.AsyncConnection[Any], columns: Mapping[str, Any]
    ) -> bool:
        """A placeholder of a file that already has PNR tickets is 0, when the agency wants."""
        if not self.mapping().defaults.zero_placeholders_on_pnr:
            return False
        cur = await conn.execute(
            "SELECT EXISTS (SELECT 1 FROM billetes WHERE expediente_id = %s"
            " AND origen_registro = 'pnr')",
            (columns.get("expediente_id"),),
        )
        found = await cur.fetchone()
        return bool(found and found[0])

    async def _self_targeted(
        self,
        conn: psycopg.AsyncConnection[Any],
        translator: Translator,
        cmd: Command,
        result: BatchResult,
    ) -> None:
        if cmd.op is CommandOp.ZERO_PLACEHOLDERS:
            if self.mapping().defaults.zero_placeholders_on_pnr:
                file_id = cmd.values[0].after if cmd.values else None
                await conn.execute(
                    "UPDATE billetes SET importe = 0 WHERE expediente_id = %s"
                    " AND origen_registro = 'crm' AND importe IS DISTINCT FROM 0",
                    (file_id,),
                )
            result.applied.append(cmd)
            return
        await self._restore(conn, translator, cmd, result)

    async def _restore(
        self,
        conn: psycopg.AsyncConnection[Any],
        translator: Translator,
        cmd: Command,
        result: BatchResult,
    ) -> None:
        """Writes the owner's current values back over a change the lock forbids, and records
        the attempt. The owner's values are read now, so the row converges to them whatever
        else is in flight."""
        entity = ENTITIES[cmd.entity]
        row = await self._select(conn, entity, "id", int(cmd.source_key))
        owner_link = entity.link(self.target)
        if row is None or owner_link is None or row.get(owner_link) is None:
            return
        owner_row = await self._owner_row(entity, int(row[owner_link]))
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
                    _text(attempt.after),
                    _text(value.after),
                    cmd.actor,
                    cmd.lsn,
                ),
            )
            result.lock_violations += cur.rowcount
        if updates:
            await conn.execute(
                sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
                    _ident(entity.table(self.target)), _assignments(list(updates))
                ),
                [*updates.values(), row["id"]],
            )
        result.applied.append(cmd)

    async def _owner_row(self, entity: Entity, owner_id: int) -> dict[str, Canonical] | None:
        owner = self.target.other
        names = [f.name(owner) for f in entity.fields]
        conn = await self.source_conn()
        async with conn.transaction():
            cur = await conn.execute(
                sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                    sql.SQL(", ").join(_ident(n) for n in names), _ident(entity.table(owner))
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

    async def _clocks(
        self, conn: psycopg.AsyncConnection[Any], table: str, pk: str
    ) -> dict[str, int | None]:
        cur = await conn.execute(
            "SELECT field, commit_us FROM ofisync.row_clocks(%s, %s)", (table, pk)
        )
        return {r[0]: r[1] for r in await cur.fetchall()}

    async def _record_conflict(
        self,
        conn: psycopg.AsyncConnection[Any],
        entity: Entity,
        target_id: int,
        field_name: str,
        incoming: Incoming,
        current: Current,
        policy: Policy,
        winner: str,
    ) -> None:
        await conn.execute(
            "INSERT INTO ofisync.conflicts (entity, target_key, field, incoming_source,"
            " incoming_value, incoming_commit_us, local_value, local_commit_us, policy, winner)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                entity.name,
                str(target_id),
                field_name,
                incoming.source.value,
                _text(incoming.after),
                incoming.commit_us,
                _text(current.value),
                current.clock_us,
                policy.value,
                winner,
            ),
        )

    async def _write_back(self, result: BatchResult) -> None:
        """After the target committed: link ids (and numbers) back into the source rows, as the
        sync (no echo); and check the box of parents the source must sync first, as a person
        would (captured, so the parent goes across)."""
        if not result.links and not result.opt_ins:
            return
        conn = await self.source_conn()
        async with conn.transaction():
            for entity, parent_id in result.opt_ins:
                assert entity.erp_opt_in is not None
                await conn.execute(
                    sql.SQL("UPDATE {} SET {} = true WHERE id = %s AND NOT {}").format(
                        _ident(entity.table(self.target.other)),
                        _ident(entity.erp_opt_in),
                        _ident(entity.erp_opt_in),
                    ),
                    (parent_id,),
                )
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ofisync.origin = '{SYNC_ORIGIN}'")
            for cmd, target_id, number in result.links:
                entity = ENTITIES[cmd.entity]
                source_link = entity.link(cmd.source)
                assert source_link is not None
                assigned: dict[str, Any] = {source_link: target_id}
                link_number = entity.link_number(cmd.source)
                if link_number and number is not None:
                    assigned[link_number] = number
                await conn.execute(
                    sql.SQL("UPDATE {} SET {} WHERE id = %s AND ({}) IS DISTINCT FROM ({})").format(
                        _ident(entity.table(cmd.source)),
                        _assignments(list(assigned)),
                        sql.SQL(", ").join(_ident(c) for c in assigned),
                        sql.SQL(", ").join(sql.Placeholder() * len(assigned)),
                    ),
                    [*assigned.values(), int(cmd.source_key), *assigned.values()],
                )


_DEAD = object()


def translator_defaults(mapping: SyncMapping) -> dict[str, Any]:
    """The header defaults a file created from the CRM gets (type and series)."""
    d = mapping.defaults
    return {"tipo": d.tipo_expediente, "serie": d.serie}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _clock_json(fields: Mapping[str, Any], commit_us: int) -> str:
    return json.dumps({f: f"t:{commit_us}" for f in fields})
