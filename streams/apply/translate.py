"""Translate (apply stage): a command's source values in the target's terms.

Parent ids are looked up through the parent's link column in the batch's working set
(streams/apply/unit_of_work.py), so a parent applied earlier in the batch is found; an unlinked
parent makes the change wait (parked). Sellers, branches and vocabularies go through the live
`Mapping`; a value with no mapping takes the header default, and the fallback is reported.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from streams.apply.parking import Waiting
from streams.apply.unit_of_work import WorkingSet
from streams.core.contract import ENTITIES
from streams.core.mapping import Mapping
from streams.core.model import Canonical, Command, Entity, Field, Kind, Side, Via

# Members as module names (streams/core/model.py says why): asked for every value of a change.
_SAME, _REF, _NUMBER = Via.SAME, Via.REF, Via.NUMBER


class Translated(NamedTuple):
    """A field's values in the target's terms, and the target column they go to (a named tuple:
    the sink builds one per changed field)."""

    column: str
    kind: Kind
    via: Via
    before: Canonical
    after: Canonical
    base: int | None = None  # the clocks of before and after on the source (FieldValue)
    clock: int | None = None


class Translator:
    def __init__(self, ws: WorkingSet, target: Side, mapping: Mapping) -> None:
        self.ws = ws
        self.target = target
        self.mapping = mapping
        self.fallbacks: Counter[tuple[Via, str]] = Counter()  # (what was mapped, why) → values

    async def command_values(
        self, entity: Entity, cmd: Command, only_changed: bool
    ) -> list[Translated] | Waiting:
        by_column = entity.by_column(self.target)
        make = tuple.__new__  # named tuples of a loop (streams/core/model.py)
        out = []
        for v in cmd.changed() if only_changed else cmd.values:
            f = by_column.get(v.field)
            if f is None:
                continue
            before: Canonical | Waiting
            if f.via is _REF:  # the only kind that reads the database: the rest stay sync
                after = await self._parent(f, v.after)
                if isinstance(after, Waiting):
                    return after
                before = None if cmd.full else await self._parent(f, v.before)
                if isinstance(before, Waiting):
                    before = None
            else:
                after = self._plain(f, v.after, report=True)
                before = None if cmd.full else self._plain(f, v.before, report=False)
            kind = f.kind_on(self.target)
            out.append(make(Translated, (v.field, kind, f.via, before, after, v.base, v.clock)))
        return out

    async def other_values(
        self, entity: Entity, other_row: dict[str, Canonical], clocks: dict[str, int]
    ) -> dict[str, Translated]:
        """The other side's current values of a record (with their clocks, by its columns), as
        this side should hold them, by this side's columns."""
        other = self.target.other
        out = {}
        for f in entity.fields:
            if f.via is _NUMBER:
                continue
            value = await self._value(f, other_row.get(f.name(other)), report=False)
            if isinstance(value, Waiting):
                continue
            column = f.column(self.target)
            clock = clocks.get(f.name(other))
            out[column] = Translated(
                column, f.kind_on(self.target), f.via, None, value, None, clock
            )
        return out

    async def _value(self, f: Field, value: Canonical, report: bool) -> Canonical | Waiting:
        if f.via is _REF:
            return await self._parent(f, value)
        return self._plain(f, value, report)

    def _plain(self, f: Field, value: Canonical, report: bool) -> Canonical:
        if f.via is _SAME or f.via is _NUMBER:
            return value
        mapped = self.mapping.translate(f.via, value, self.target)
        if report and mapped.fallback:
            self.fallbacks[f.via, mapped.fallback] += 1
        return mapped.value

    async def _parent(self, f: Field, source_id: Canonical) -> Canonical | Waiting:
        if source_id is None:
            return None
        assert f.ref is not None
        parent = ENTITIES[f.ref]
        target_id = await self.ws.parent_id(parent, int(source_id))
        if target_id is not None:
            return target_id
        source = self.target.other
        return Waiting(
            parent.name,
            str(source_id),
            f"{parent.name} {source_id} of {_title(source)} is not linked in {_title(self.target)}"
            " yet",
        )


def _title(side: Side) -> str:
    return "OfiViaje" if side is Side.ERP else "the CRM"
