"""Records (apply stage): what one command does to its row of the target table.

The row is found by link or back-reference (streams/apply/unit_of_work.py). A change at or below
the row's position was applied already (a redelivery); a row flagged as deleted on the other side,
unchecked in OfiViaje, or gone from the target takes nothing. A new record is first looked for
among the target's unlinked ones (clients by tax id, files by number: streams/core/matching.py):
one match is linked and reconciled field by field, several wait for a person, none is created.
Otherwise the fields the conflict rule lets through are updated (streams/core/conflicts.py); a
value too long for its column is held back alone, as a dead letter naming the column. A delete
unlinks and flags the row (a placeholder ticket goes). A side's own change replayed into itself
(REAPPLY) restores what a restore lost. Runs inside the sink's batch transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.apply.parking import Waiting
from streams.apply.results import Applied, BatchResult, text
from streams.apply.statements import APPLIED_LSN, CLOCKS, DELETED, TAX_ID
from streams.apply.translate import Translated, Translator
from streams.apply.unit_of_work import Row, WorkingSet
from streams.core.conflicts import Current, Incoming, Policy, decide
from streams.core.contract import CLIENT, ENTITIES, FILE, SEGMENT
from streams.core.mapping import Mapping as SyncMapping
from streams.core.matching import tax_key
from streams.core.model import (
    Command,
    CommandOp,
    Entity,
    FieldValue,
    Kind,
    Side,
    Via,
    canonical,
    to_db,
)

TextLimits = Mapping[tuple[str, str], int]  # (table, column) → the most characters it holds
FREE_NUMBER_TRIES = 20


@dataclass(frozen=True)
class Duplicate:
    """The row's position is at or past the command's: it was applied already."""

    row: Row


@dataclass(frozen=True)
class Held:
    """The target record's state holds the change back (counted in the result: paused, flagged,
    gone); it is not applied, and nothing waits for it."""


HELD = Held()


@dataclass(frozen=True)
class Rejected:
    """The target cannot hold the command (a value too long for a new record): a dead letter."""

    reason: str


Outcome = Applied | Waiting | Duplicate | Rejected | Held | None


class Records:
    def __init__(
        self,
        target: Side,
        policy: Policy,
        mapping: Callable[[], SyncMapping],
        limits: Callable[[], TextLimits],
    ) -> None:
        self.target = target
        self.policy = policy
        self.mapping = mapping
        self.limits = limits

    def policy_for(self, entity: Entity) -> Policy:
        if entity.owner is Side.ERP:
            return Policy.ERP_WINS
        if entity.owner is Side.CRM:
            return Policy.CRM_WINS
        return self.policy

    # --- before the batch's commands: the records new ones may be -----------------------------

    async def prepare(self, ws: WorkingSet) -> None:
        """Reads, set-wise, the target's records that the batch's new records (the upserts
        `ws.load` found no row for) may match."""
        keys: dict[str, set[str]] = {}
        for cmd in ws.unfound:
            entity = ENTITIES[cmd.entity]
            key = self._match_key(entity, cmd.values)
            if key is not None:
                keys.setdefault(entity.name, set()).add(key)
        for name, wanted in keys.items():
            await ws.load_candidates(ENTITIES[name], wanted)

    def _match_key(self, entity: Entity, values: Sequence[FieldValue | Translated]) -> str | None:
        """What a new record of `entity` is matched on: its tax id (clients), its number as the
        target keeps the other side's (files)."""
        if entity is CLIENT:
            column = TAX_ID[self.target]
            found = next((_after(v) for v in values if _column(v) == column), None)
            return tax_key(found)
        if entity is FILE:
            number = next((_after(v) for v in values if _via_number(entity, self.target, v)), None)
            return number if isinstance(number, str) and number else None
        return None

    # --- upserts ------------------------------------------------------------------------------

    async def upsert(
        self, ws: WorkingSet, translator: Translator, cmd: Command, result: BatchResult
    ) -> Outcome:
        entity = ENTITIES[cmd.entity]
        row = await ws.find(entity, cmd)
        if row is not None and not cmd.replay and (row[APPLIED_LSN] or -1) >= cmd.lsn:
            result.duplicates += 1
            return Duplicate(row)
        if row is not None and row[DELETED]:
            result.flagged += 1  # the other side deleted it: out of the sync until a person says
            return HELD
        if row is None and cmd.link_key is not None:
            result.gone += 1  # deleted here while the change was on its way: nothing to recreate
            return HELD
        if row is not None and self._paused(entity, row):
            result.paused += 1
            return HELD
        values = await translator.command_values(entity, cmd, only_changed=row is not None)
        if isinstance(values, Waiting):
            parent = ENTITIES[values.parent_entity or entity.name]
            if self.target is Side.CRM and parent.erp_opt_in and values.parent_key is not None:
                # OfiViaje must sync the parent first: its box gets checked (streams/apply/sink.py).
                result.opt_ins.append((parent, int(values.parent_key)))
            return values
        if row is not None:
            return await self.update(ws, entity, cmd, row, values, result)
        key = self._match_key(entity, values)
        if key is not None:
            found = [r for r in ws.candidates(entity, key) if _free(entity, self.target, r)]
            if len(found) > 1:
                return _ambiguous(entity, self.target, key, found)
            if found:
                result.matched += 1
                return await self.update(ws, entity, cmd, found[0], values, result, adopt=True)
        return await self.insert(ws, entity, cmd, values, key)

    def _paused(self, entity: Entity, row: Row) -> bool:
        """An OfiViaje record unchecked for sync: nothing crosses either way, the link stays."""
        opt_in = entity.erp_opt_in if self.target is Side.ERP else None
        return opt_in is not None and row.get(opt_in) is False

    def delete(self, ws: WorkingSet, cmd: Command, result: BatchResult, row: Row | None) -> None:
        entity = ENTITIES[cmd.entity]
        if row is None or row[DELETED]:
            result.noops += 1
            return
        if entity.marker(self.target) and self.marked(entity, row):
            # A placeholder holds nothing but a copy of what was deleted: it goes too.
            ws.delete(entity, row)
            return
        link = entity.link(self.target)
        assert link is not None
        ws.update(entity, row, {link: None}, lsn=cmd.lsn, unlinked=True)

    def marked(self, entity: Entity, row: Mapping[str, Any]) -> bool:
        """Whether a row the sync created still carries its marker (still a placeholder)."""
        return all(row.get(c) == v for c, v in entity.marker(self.target).items())

    async def insert(
        self,
        ws: WorkingSet,
        entity: Entity,
        cmd: Command,
        values: Sequence[Translated],
        number: str | None,
    ) -> Applied | Rejected:
        side = self.target
        columns: dict[str, Any] = {v.column: to_db(v.kind, v.after) for v in values}
        too_long = _long_columns(entity, side, columns, self.limits())
        if too_long:
            said = "; ".join(_too_long_said(entity, side, too_long))
            return Rejected(f"{said}: shorten it at the source")
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
        elif entity is FILE and side is Side.CRM and number is not None:
            columns[entity.crm_number or ""] = await _free_number(ws, entity, number)
        if entity is SEGMENT and side is Side.ERP and await self.zeroing(ws, columns):
            columns["importe"] = 0
        clocks = {v.column: v.clock if cmd.full else cmd.commit_us for v in values}
        row = await ws.insert(entity, columns, clocks, cmd.lsn, generated)
        return Applied(int(row["id"]), text(row.get(entity.number(side) or "")))

    async def update(
        self,
        ws: WorkingSet,
        entity: Entity,
        cmd: Command,
        row: Row,
        values: Sequence[Translated],
        result: BatchResult,
        adopt: bool = False,
    ) -> Applied | None:
        side = self.target
        link = entity.link(side)
        assert link is not None
        applied = Applied(int(row["id"]), text(row.get(entity.number(side) or "")))
        if entity.marker(side) and not self.marked(entity, row):
            result.noops += 1  # no longer a placeholder: the real ticket is the agency's
            return None
        policy = self.policy_for(entity)
        updates: dict[str, Any] = {}
        stamps: dict[str, int | None] = {}
        kept: list[str] = []  # fields where a full push met a value that stays
        clocks = row[CLOCKS]
        source, full, replay = cmd.source, cmd.full, cmd.replay
        make = tuple.__new__  # named tuples of a loop (streams/core/model.py)
        for v in values:
            at = v.clock if full else cmd.commit_us
            current = make(Current, (canonical(v.kind, row[v.column]), clocks.get(v.column)))
            incoming = make(Incoming, (source, v.before, v.after, at or 0, full, replay, v.base))
            decision = decide(incoming, current, policy)
            if decision.conflict:
                result.conflicts += 1
                ws.conflict(
                    entity=entity.name, target_key=str(row["id"]), field=v.column,
                    incoming_source=cmd.source.value, incoming_value=text(v.after),
                    incoming_commit_us=incoming.commit_us, local_value=text(current.value),
                    local_commit_us=current.clock_us, policy=policy.value,
                    winner="incoming" if decision.apply else "local",
                )  # fmt: skip
            if decision.apply:
                updates[v.column] = to_db(v.kind, v.after)
                stamps[v.column] = at
            elif decision.restamp:
                stamps[v.column] = at
            elif decision.conflict and cmd.full and v.via is not Via.NUMBER:
                kept.append(v.column)  # the target's value won: the source takes it
        held = _long_columns(entity, side, updates, self.limits()) if updates else []
        if held:
            limited = {column for column, _ in held}
            reason = f"{'; '.join(_too_long_said(entity, side, held))}: shorten it at the source"
            result.dead.append((_restricted(cmd, limited), reason))
            for column in limited:
                updates.pop(column, None)
                stamps.pop(column, None)
        if (
            entity is SEGMENT
            and side is Side.ERP
            and "importe" in updates
            and await self.zeroing(ws, {"expediente_id": row["expediente_id"]})
        ):
            updates["importe"] = 0
        changes = dict(updates)
        if row[link] != int(cmd.source_key):
            changes[link] = int(cmd.source_key)
        opt_in = entity.erp_opt_in if side is Side.ERP else None
        if adopt and opt_in is not None and not row.get(opt_in):
            changes[opt_in] = True
        if kept:
            result.aligns.append(_align(cmd, entity, side, kept))
        if not changes and not stamps:
            result.noops += 1
            return applied
        ws.update(entity, row, changes, stamps, lsn=cmd.lsn)
        return applied

    async def zeroing(self, ws: WorkingSet, columns: Mapping[str, Any]) -> bool:
        """A placeholder of a file that already has PNR tickets is 0, when the agency wants."""
        if not self.mapping().defaults.zero_placeholders_on_pnr:
            return False
        file_id = columns.get("expediente_id")
        return file_id is not None and await ws.has_pnr_tickets(int(file_id))


def _after(v: FieldValue | Translated) -> Any:
    return v.after


def _column(v: FieldValue | Translated) -> str:
    return v.column if isinstance(v, Translated) else v.field


def _via_number(entity: Entity, target: Side, v: FieldValue | Translated) -> bool:
    return _column(v) == entity.link_number(target)


def _free(entity: Entity, side: Side, row: Row) -> bool:
    """A record a new one may be: not linked, not flagged."""
    link = entity.link(side)
    return link is not None and row[link] is None and not row[DELETED]


def _ambiguous(entity: Entity, side: Side, key: str, rows: Sequence[Row]) -> Waiting:
    ids = ", ".join(str(r["id"]) for r in rows)
    table, link = entity.table(side), entity.link(side)
    return Waiting(
        None,
        None,
        f"{len(rows)} records of {table} ({ids}) match {key!r}: link the right one by hand"
        f" (set its {link}) and this one follows",
    )


async def _free_number(ws: WorkingSet, entity: Entity, number: str) -> str:
    """`number`, or when a linked record of the target holds it, the first of `number`-OV,
    `number`-OV2, … that none does (a file crosses, never stuck on another's number)."""
    taken = {r[entity.crm_number or ""] for r in ws.candidates(entity, number)}
    if number not in taken:
        return number
    tries = [f"{number}-OV"] + [f"{number}-OV{n}" for n in range(2, FREE_NUMBER_TRIES)]
    cur = await ws.conn.execute(
        "SELECT file_number FROM files WHERE file_number = ANY(%s)", (tries,)
    )
    used = {r[0] for r in await cur.fetchall()}
    return next(t for t in tries if t not in used)


def _long_columns(
    entity: Entity, side: Side, columns: Mapping[str, Any], limits: TextLimits
) -> list[tuple[str, tuple[int, int]]]:
    table = entity.table(side)
    found = []
    for column, value in columns.items():
        most = limits.get((table, column))
        if isinstance(value, str) and most is not None and len(value) > most:
            found.append((column, (most, len(value))))
    return found


def _too_long_said(
    entity: Entity, side: Side, long: list[tuple[str, tuple[int, int]]]
) -> list[str]:
    table = entity.table(side)
    return [
        f"{table}.{column} holds {most} characters, the value has {n}" for column, (most, n) in long
    ]


def _restricted(cmd: Command, columns: set[str]) -> Command:
    """`cmd` with only the values of these target columns: what a dead letter keeps of a change
    whose other fields were applied."""
    return cmd._replace(values=tuple(v for v in cmd.values if v.field in columns))


def _align(cmd: Command, entity: Entity, side: Side, columns: list[str]) -> Command:
    """The source record takes the target's values of these target columns (ALIGN)."""
    by_column = entity.by_column(side)
    own = tuple(FieldValue(by_column[c].name(cmd.source), None, None, True) for c in columns)
    return Command(
        cmd.source, entity.name, CommandOp.ALIGN, cmd.source_key, None, cmd.lsn, cmd.commit_us,
        full=False, values=own,
    )  # fmt: skip


def own_kinds(entity: Entity, side: Side) -> dict[str, Kind]:
    """The kind of each of `entity`'s own columns on `side` (what REAPPLY writes)."""
    kinds = {f.name(side): f.kind_on(side) for f in entity.fields}
    if side is Side.ERP and entity.erp_opt_in:
        kinds[entity.erp_opt_in] = Kind.BOOL
    return kinds
