"""Rows (apply stage): one command's writes to one row of the target table: find it by link or
back-reference, insert it, update the fields the conflict rule lets through, or unlink it on a
delete. Runs inside the sink's batch transaction and savepoint (streams/sink.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from streams.conflicts import Current, Incoming, Policy, decide
from streams.mapping import Mapping as SyncMapping
from streams.model import (
    ENTITIES,
    FILE,
    SEGMENT,
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
    uploaded: list[tuple[int, int]] = field(default_factory=list)  # OfiViaje doc, CRM doc
    # Written once at the end of the batch: applied positions and field clocks (commit µs).
    positions: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
    clock_stamps: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    document_notes: list[tuple[int, str]] = field(default_factory=list)  # doc, error_sync

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
        self.uploaded += other.uploaded
        self.document_notes += other.document_notes


# The column `Rows.select` adds to a row: its field clocks, {field: commit µs}.
CLOCKS = "ofisync_clocks"

# Errors that retrying the same write cannot fix.
PERMANENT = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


@dataclass(frozen=True)
class Applied:
    """The target row a command wrote (its id, and its own record number if it has one)."""

    target_id: int
    number: str | None = None


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def assignments(columns: Sequence[str]) -> sql.Composed:
    return sql.SQL(", ").join(sql.SQL("{} = %s").format(ident(c)) for c in columns)


def text(value: Any) -> str | None:
    return None if value is None else str(value)


class Rows:
    def __init__(self, target: Side, policy: Policy, mapping: Callable[[], SyncMapping]) -> None:
        self.target = target
        self.policy = policy
        self.mapping = mapping

    def columns(self, entity: Entity) -> list[str]:
        side = self.target
        names = ["id", *(f.column(side) for f in entity.fields), *entity.marker(side)]
        for extra in (entity.link(side), entity.number(side)):
            if extra and extra not in names:
                names.append(extra)
        return names

    async def select(
        self, conn: psycopg.AsyncConnection[Any], entity: Entity, column: str, value: Any
    ) -> dict[str, Any] | None:
        names = self.columns(entity)
        table = entity.table(self.target)
        # The row's field clocks come in the same round trip (see `update`).
        cur = await conn.execute(
            sql.SQL(
                "SELECT {}, (SELECT coalesce(jsonb_object_agg(c.field, c.commit_us), '{{}}')"
                " FROM ofisync.row_clocks({}, t.id::text) c) FROM {} t WHERE t.{} = %s"
                " FOR UPDATE OF t"
            ).format(
                sql.SQL(", ").join(sql.SQL("t.{}").format(ident(n)) for n in names),
                sql.Literal(table),
                ident(table),
                ident(column),
            ),
            (value,),
        )
        row = await cur.fetchone()
        if row is None:
            return None
        found = dict(zip(names, row[:-1], strict=True))
        found[CLOCKS] = row[-1]
        return found

    async def find(
        self, conn: psycopg.AsyncConnection[Any], entity: Entity, cmd: Command
    ) -> dict[str, Any] | None:
        """The target row of `cmd`: by the id the source knows, else by the link column."""
        link = entity.link(self.target)
        if cmd.link_key is not None:
            row = await self.select(conn, entity, "id", int(cmd.link_key))
            if row is not None:
                return row
        return None if link is None else await self.select(conn, entity, link, int(cmd.source_key))

    def policy_for(self, entity: Entity) -> Policy:
        if entity.owner is Side.ERP:
            return Policy.ERP_WINS
        if entity.owner is Side.CRM:
            return Policy.CRM_WINS
        return self.policy

    async def apply_one(
        self,
        conn: psycopg.AsyncConnection[Any],
        translator: Translator,
        cmd: Command,
        result: BatchResult,
    ) -> Applied | Waiting | None:
        entity = ENTITIES[cmd.entity]
        row = await self.find(conn, entity, cmd)
        if cmd.op is CommandOp.DELETE:
            if row is not None:
                await self.delete(conn, entity, row)
            return None
        values = await translator.command_values(entity, cmd, only_changed=row is not None)
        if isinstance(values, Waiting):
            parent = ENTITIES[values.parent_entity or entity.name]
            if self.target is Side.CRM and parent.erp_opt_in and values.parent_key is not None:
                # OfiViaje must sync the parent first: its box gets checked (see _write_back).
                result.opt_ins.append((parent, int(values.parent_key)))
            return values
        if row is None:
            return await self.insert(conn, entity, cmd, values)
        return await self.update(conn, entity, cmd, row, values, result)

    def marked(self, entity: Entity, row: Mapping[str, Any]) -> bool:
        """Whether a row the sync created still carries its marker (still a placeholder)."""
        return all(row.get(c) == v for c, v in entity.marker(self.target).items())

    async def delete(
        self, conn: psycopg.AsyncConnection[Any], entity: Entity, row: Mapping[str, Any]
    ) -> None:
        table = ident(entity.table(self.target))
        if entity.marker(self.target) and self.marked(entity, row):
            # A placeholder holds nothing but a copy of what was deleted: it goes too.
            await conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(table), (row["id"],))
            return
        link = entity.link(self.target)
        assert link is not None
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET {} = NULL, ofisync_deleted_at = clock_timestamp() WHERE id = %s"
            ).format(table, ident(link)),
            (row["id"],),
        )

    async def insert(
        self,
        conn: psycopg.AsyncConnection[Any],
        entity: Entity,
        cmd: Command,
        values: Sequence[Translated],
    ) -> Applied:
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
            # A file from the CRM gets the header defaults' type and series, and a number of
            # OfiViaje's own; branch and seller came through the mapping (with its fallbacks).
            defaults = self.mapping().defaults
            columns["tipo"] = defaults.tipo_expediente
            columns["serie"] = defaults.serie
            generated = sql.SQL("ofisync.next_file_number()")
        elif entity is FILE and side is Side.CRM:
            number_value = next(v.after for v in values if v.via is Via.NUMBER)
            columns[entity.crm_number or ""] = number_value
        if entity is SEGMENT and side is Side.ERP and await self.zeroing(conn, columns):
            columns["importe"] = 0
        names = list(columns)
        placeholders: list[sql.Composable] = [sql.Placeholder()] * len(names)
        if generated is not None and number:
            names.append(number)
            placeholders.append(generated)
        cur = await conn.execute(
            sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id, {}").format(
                ident(entity.table(side)),
                sql.SQL(", ").join(ident(c) for c in names),
                sql.SQL(", ").join(placeholders),
                ident(number) if number else sql.SQL("NULL"),
            ),
            list(columns.values()),
        )
        created = await cur.fetchone()
        assert created is not None
        return Applied(int(created[0]), None if created[1] is None else str(created[1]))

    async def update(
        self,
        conn: psycopg.AsyncConnection[Any],
        entity: Entity,
        cmd: Command,
        row: Mapping[str, Any],
        values: Sequence[Translated],
        result: BatchResult,
    ) -> Applied | None:
        side = self.target
        link = entity.link(side)
        assert link is not None
        if entity.marker(side) and not self.marked(entity, row):
            result.noops += 1  # no longer a placeholder: the real ticket is the agency's
            return None
        table = entity.table(side)
        pk = str(row["id"])
        # Clocks as read with the row, and as stamped earlier in this batch (written at its end).
        clocks = {**row[CLOCKS], **result.clock_stamps.get((table, pk), {})}
        policy = self.policy_for(entity)
        updates: dict[str, Any] = {}
        for v in values:
            current = Current(canonical(v.kind, row[v.column]), clocks.get(v.column))
            incoming = Incoming(cmd.source, v.before, v.after, cmd.commit_us, cmd.full, cmd.replay)
            decision = decide(incoming, current, policy)
            if decision.conflict:
                result.conflicts += 1
                await self.record_conflict(
                    conn, entity, row["id"], v.column, incoming, current, policy,
                    "incoming" if decision.apply else "local",
                )  # fmt: skip
            if decision.apply:
                updates[v.column] = to_db(v.kind, v.after)
        if (
            entity is SEGMENT
            and side is Side.ERP
            and "importe" in updates
            and await self.zeroing(conn, {"expediente_id": row["expediente_id"]})
        ):
            updates["importe"] = 0
        applied = Applied(int(row["id"]), text(row.get(entity.number(side) or "")))
        if not updates and row[link] == int(cmd.source_key):
            result.noops += 1
            return applied
        stamped = dict(updates)
        updates[link] = int(cmd.source_key)
        await conn.execute(
            sql.SQL("UPDATE {} SET {}, ofisync_deleted_at = NULL WHERE id = %s").format(
                ident(table), assignments(list(updates))
            ),
            [*updates.values(), row["id"]],
        )
        if stamped:
            result.clock_stamps.setdefault((table, pk), {}).update(
                dict.fromkeys(stamped, cmd.commit_us)
            )
        return applied

    async def zeroing(self, conn: psycopg.AsyncConnection[Any], columns: Mapping[str, Any]) -> bool:
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

    async def record_conflict(
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
                text(incoming.after),
                incoming.commit_us,
                text(current.value),
                current.clock_us,
                policy.value,
                winner,
            ),
        )
