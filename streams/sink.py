"""Apply: the edge where commands become writes in the target database (psycopg 3).

One transaction per batch, marked as the sync's own (`SET LOCAL ofisync.origin`), so the
capture of these writes is dropped as an echo. Each command is guarded by the source position
recorded in `ofisync.applied` in the same transaction (exactly-once effect); a command the
target cannot hold is rolled back to its savepoint and returned as a dead letter while the
rest of the batch commits. Links back to the source row are written after the target commits
and are idempotent, so a crash between the two is repaired by redelivery.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from streams.conflicts import Current, Incoming, Policy, decide
from streams.model import ENTITIES, Command, CommandOp, Entity, Side, canonical, to_db


class TransientError(RuntimeError):
    """The database cannot be reached now; retry the whole batch later."""


@dataclass
class BatchResult:
    applied: list[Command] = field(default_factory=list)
    duplicates: int = 0
    noops: int = 0
    conflicts: int = 0
    dead: list[tuple[Command, str]] = field(default_factory=list)
    links: list[tuple[Command, int]] = field(default_factory=list)

    def absorb(self, other: BatchResult) -> None:
        """Adds another result's outcome to this one (applying a batch piece by piece)."""
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.noops += other.noops
        self.conflicts += other.conflicts
        self.dead += other.dead
        self.links += other.links


SYNC_ORIGIN = "sync"
PERMANENT = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


class Sink:
    """Applies commands to one side; writes link-backs to the other."""

    def __init__(self, target: Side, target_dsn: str, source_dsn: str, policy: Policy) -> None:
        self.target = target
        self.target_dsn = target_dsn
        self.source_dsn = source_dsn
        self.policy = policy
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._source_conn: psycopg.AsyncConnection[Any] | None = None

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

    async def apply(self, commands: Sequence[Command]) -> BatchResult:
        try:
            result = await self._apply_batch(commands)
            await self._link_back(result.links)
            return result
        except psycopg.OperationalError as exc:
            for c in (self._conn, self._source_conn):
                if c is not None:
                    await c.close()
            raise TransientError(str(exc).strip().splitlines()[0]) from exc

    async def _apply_batch(self, commands: Sequence[Command]) -> BatchResult:
        result = BatchResult()
        conn = await self.conn()
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ofisync.origin = '{SYNC_ORIGIN}'")
            positions = await self._positions(conn, commands)
            for cmd in commands:
                pos_key = (cmd.source.value, cmd.entity, cmd.source_key)
                if positions.get(pos_key, -1) >= cmd.lsn:
                    result.duplicates += 1
                    if cmd.op is CommandOp.UPSERT and cmd.link_key is None:
                        # The link-back may have been lost in a crash after the commit.
                        row = await self._find(conn, ENTITIES[cmd.entity], cmd)
                        if row is not None:
                            result.links.append((cmd, int(row["id"])))
                    continue
                try:
                    async with conn.transaction():
                        target_id = await self._apply_one(conn, cmd, result)
                        await conn.execute(
                            "INSERT INTO ofisync.applied (source, entity, source_key, lsn,"
                            " commit_us) VALUES (%s, %s, %s, %s, %s)"
                            " ON CONFLICT (source, entity, source_key) DO UPDATE"
                            " SET lsn = excluded.lsn, commit_us = excluded.commit_us,"
                            " applied_at = clock_timestamp()",
                            (*pos_key, cmd.lsn, cmd.commit_us),
                        )
                except PERMANENT as exc:
                    result.dead.append((cmd, f"{type(exc).__name__}: {exc}".strip()))
                    continue
                positions[pos_key] = cmd.lsn
                result.applied.append(cmd)
                if target_id is not None and cmd.link_key != str(target_id):
                    result.links.append((cmd, target_id))
        return result

    async def _positions(
        self, conn: psycopg.AsyncConnection[Any], commands: Sequence[Command]
    ) -> dict[tuple[str, str, str], int]:
        keys = sorted({(c.source.value, c.entity, c.source_key) for c in commands})
        cur = await conn.execute(
            "SELECT a.source, a.entity, a.source_key, a.lsn FROM ofisync.applied a"
            " JOIN unnest(%s::text[], %s::text[], %s::text[]) k(s, e, k)"
            " ON a.source = k.s AND a.entity = k.e AND a.source_key = k.k",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        )
        return {(r[0], r[1], r[2]): int(r[3]) for r in await cur.fetchall()}

    async def _find(
        self, conn: psycopg.AsyncConnection[Any], entity: Entity, cmd: Command
    ) -> dict[str, Any] | None:
        table = entity.table(self.target)
        link = entity.link(self.target)
        names = ["id", link, *(f.name(self.target) for f in entity.fields)]
        columns = sql.SQL(", ").join(_ident(n) for n in names)
        query = sql.SQL("SELECT {} FROM {} WHERE {} = %s FOR UPDATE").format
        candidates = []
        if cmd.link_key is not None:
            candidates.append((query(columns, _ident(table), _ident("id")), int(cmd.link_key)))
        candidates.append((query(columns, _ident(table), _ident(link)), int(cmd.source_key)))
        for q, arg in candidates:
            cur = await conn.execute(q, (arg,))
            row = await cur.fetchone()
            if row is not None:
                return dict(zip(names, row, strict=True))
        return None

    async def _apply_one(
        self, conn: psycopg.AsyncConnection[Any], cmd: Command, result: BatchResult
    ) -> int | None:
        entity = ENTITIES[cmd.entity]
        table = entity.table(self.target)
        link = entity.link(self.target)
        row = await self._find(conn, entity, cmd)
        if cmd.op is CommandOp.DELETE:
            if row is not None:
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET {} = NULL, ofisync_deleted_at = clock_timestamp()"
                        " WHERE id = %s"
                    ).format(_ident(table), _ident(link)),
                    (row["id"],),
                )
            return None
        kinds = {f.name(self.target): f.kind for f in entity.fields}
        if row is None:
            columns = {v.field: to_db(kinds[v.field], v.after) for v in cmd.values}
            columns[link] = int(cmd.source_key)
            if self.target is Side.ERP and entity.erp_opt_in:
                columns[entity.erp_opt_in] = True
            cur = await conn.execute(
                sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
                    _ident(table),
                    sql.SQL(", ").join(_ident(c) for c in columns),
                    sql.SQL(", ").join(sql.Placeholder() * len(columns)),
                ),
                list(columns.values()),
            )
            created = await cur.fetchone()
            assert created is not None
            return int(created[0])

        clocks = await self._clocks(conn, table, str(row["id"]))
        updates: dict[str, Any] = {}
        for v in cmd.changed():
            current = Current(canonical(kinds[v.field], row[v.field]), clocks.get(v.field))
            incoming = Incoming(cmd.source, v.before, v.after, cmd.commit_us, cmd.full)
            decision = decide(incoming, current, self.policy)
            if decision.conflict:
                result.conflicts += 1
                await self._record_conflict(
                    conn,
                    entity,
                    row["id"],
                    v.field,
                    incoming,
                    current,
                    "incoming" if decision.apply else "local",
                )
            if decision.apply:
                updates[v.field] = to_db(kinds[v.field], v.after)
        if not updates and row[link] == int(cmd.source_key):
            result.noops += 1
            return int(row["id"])
        stamped = dict(updates)
        updates[link] = int(cmd.source_key)
        await conn.execute(
            sql.SQL("UPDATE {} SET {}, ofisync_deleted_at = NULL WHERE id = %s").format(
                _ident(table),
                sql.SQL(", ").join(sql.SQL("{} = %s").format(_ident(c)) for c in updates),
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
        return int(row["id"])

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
                None if incoming.after is None else str(incoming.after),
                incoming.commit_us,
                None if current.value is None else str(current.value),
                current.clock_us,
                self.policy.value,
                winner,
            ),
        )

    async def _link_back(self, links: Sequence[tuple[Command, int]]) -> None:
        if not links:
            return
        conn = await self.source_conn()
        async with conn.transaction():
            await conn.execute(f"SET LOCAL ofisync.origin = '{SYNC_ORIGIN}'")
            for cmd, target_id in links:
                entity = ENTITIES[cmd.entity]
                source_link = entity.link(cmd.source)
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET {} = %s WHERE id = %s AND {} IS DISTINCT FROM %s"
                    ).format(
                        _ident(entity.table(cmd.source)),
                        _ident(source_link),
                        _ident(source_link),
                    ),
                    (target_id, int(cmd.source_key), target_id),
                )


def _clock_json(fields: dict[str, Any], commit_us: int) -> str:
    return json.dumps({f: f"t:{commit_us}" for f in fields})
