"""Rows (apply stage): what one command does to its row of the target table: find it by link or
back-reference, insert it, update the fields the conflict rule lets through, or unlink it on a
delete. The rows come from the batch's working set and the writes go back to it, to be flushed
set-wise (streams/working.py); this runs inside the sink's batch transaction (streams/sink.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from streams.apply.parking import ParentKey, Waiting
from streams.apply.translate import Translated, Translator
from streams.apply.unit_of_work import CLOCKS, WorkingSet
from streams.core.conflicts import Current, Incoming, Policy, decide
from streams.core.contract import ENTITIES, FILE, SEGMENT
from streams.core.mapping import Mapping as SyncMapping
from streams.core.model import Command, CommandOp, Entity, Side, Via, canonical, to_db


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
    # Written once at the end of the batch: applied positions (lsn, commit µs).
    positions: dict[tuple[str, str, str], tuple[int, int]] = field(default_factory=dict)
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

    def policy_for(self, entity: Entity) -> Policy:
        if entity.owner is Side.ERP:
            return Policy.ERP_WINS
        if entity.owner is Side.CRM:
            return Policy.CRM_WINS
        return self.policy

    async def apply_one(
        self, ws: WorkingSet, translator: Translator, cmd: Command, result: BatchResult
    ) -> Applied | Waiting | None:
        entity = ENTITIES[cmd.entity]
        row = await ws.find(entity, cmd)
        if cmd.op is CommandOp.DELETE:
            if row is not None:
                self.delete(ws, entity, row)
            return None
        values = await translator.command_values(entity, cmd, only_changed=row is not None)
        if isinstance(values, Waiting):
            parent = ENTITIES[values.parent_entity or entity.name]
            if self.target is Side.CRM and parent.erp_opt_in and values.parent_key is not None:
                # OfiViaje must sync the parent first: its box gets checked (see _write_back).
                result.opt_ins.append((parent, int(values.parent_key)))
            return values
        if row is None:
            return await self.insert(ws, entity, cmd, values)
        return await self.update(ws, entity, cmd, row, values, result)

    def marked(self, entity: Entity, row: Mapping[str, Any]) -> bool:
        """Whether a row the sync created still carries its marker (still a placeholder)."""
        return all(row.get(c) == v for c, v in entity.marker(self.target).items())

    def delete(self, ws: WorkingSet, entity: Entity, row: dict[str, Any]) -> None:
        if entity.marker(self.target) and self.marked(entity, row):
            # A placeholder holds nothing but a copy of what was deleted: it goes too.
            ws.delete(entity, row)
            return
        link = entity.link(self.target)
        assert link is not None
        ws.update(entity, row, {link: None}, unlinked=True)

    async def insert(
        self, ws: WorkingSet, entity: Entity, cmd: Command, values: Sequence[Translated]
    ) -> Applied:
        side = self.target
        columns: dict[str, Any] = {v.column: to_db(v.kind, v.after) for v in values}
        link = entity.link(side)
        assert link is not None
        columns[link] = int(cmd.source_key)
        columns.update(entity.marker(side))
        if side is Side.ERP and entity.erp_opt_in:
            columns[entity.erp_opt_in] = True
        generated = None
        if entity is FILE and side is Side.ERP:
            # A file from the CRM gets the header defaults' type and series, and a number of
            # OfiViaje's own; branch and seller came through the mapping (with its fallbacks).
            defaults = self.mapping().defaults
            columns["tipo"] = defaults.tipo_expediente
            columns["serie"] = defaults.serie
            generated = entity.number(side)
        elif entity is FILE and side is Side.CRM:
            number_value = next(v.after for v in values if v.via is Via.NUMBER)
            columns[entity.crm_number or ""] = number_value
        if entity is SEGMENT and side is Side.ERP and await self.zeroing(ws, columns):
            columns["importe"] = 0
        row = await ws.insert(entity, columns, generated)
        return Applied(int(row["id"]), text(row.get(entity.number(side) or "")))

    async def update(
        self,
        ws: WorkingSet,
        entity: Entity,
        cmd: Command,
        row: dict[str, Any],
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
        policy = self.policy_for(entity)
        updates: dict[str, Any] = {}
        for v in values:
            current = Current(canonical(v.kind, row[v.column]), row[CLOCKS].get(v.column))
            incoming = Incoming(cmd.source, v.before, v.after, cmd.commit_us, cmd.full, cmd.replay)
            decision = decide(incoming, current, policy)
            if decision.conflict:
                result.conflicts += 1
                ws.conflict(
                    entity.name, str(row["id"]), v.column, incoming.source.value,
                    text(incoming.after), incoming.commit_us, text(current.value),
                    current.clock_us, policy.value, "incoming" if decision.apply else "local",
                )  # fmt: skip
            if decision.apply:
                updates[v.column] = to_db(v.kind, v.after)
        if (
            entity is SEGMENT
            and side is Side.ERP
            and "importe" in updates
            and await self.zeroing(ws, {"expediente_id": row["expediente_id"]})
        ):
            updates["importe"] = 0
        applied = Applied(int(row["id"]), text(row.get(entity.number(side) or "")))
        if not updates and row[link] == int(cmd.source_key):
            result.noops += 1
            return applied
        stamped = list(updates)
        ws.update(entity, row, {**updates, link: int(cmd.source_key)}, unlinked=False)
        if stamped:
            ws.stamp(table, row, stamped, cmd.commit_us)
        return applied

    async def zeroing(self, ws: WorkingSet, columns: Mapping[str, Any]) -> bool:
        """A placeholder of a file that already has PNR tickets is 0, when the agency wants."""
        if not self.mapping().defaults.zero_placeholders_on_pnr:
            return False
        file_id = columns.get("expediente_id")
        return file_id is not None and await ws.has_pnr_tickets(int(file_id))
