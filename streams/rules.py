"""Rules: a decoded change → the command for the other side, or the reason there is none.

Pure functions, no I/O. Which records cross (opt-in), which fields cross (the contract's
correspondence, nothing else), and whether a change is a full push (create, opt-in, snapshot)
or a field-level update carrying its before-image.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.model import (
    ChangeEvent,
    Command,
    CommandOp,
    Entity,
    FieldValue,
    Op,
    Side,
)


@dataclass(frozen=True)
class Skip:
    """Nothing to send, and why (counted, not an error)."""

    reason: str


@dataclass(frozen=True)
class Invalid:
    """A change that cannot be turned into a command; it goes to the dead letters."""

    reason: str


def _opted_in(entity: Entity, ev: ChangeEvent, row: object) -> bool:
    if ev.source is not Side.ERP or entity.erp_opt_in is None:
        return True
    return isinstance(row, dict) and bool(row.get(entity.erp_opt_in))


def to_command(ev: ChangeEvent, entity: Entity) -> Command | Skip | Invalid:
    side, target = ev.source, ev.source.other
    link_column = entity.link(side)
    row = ev.row
    link = row.get(link_column)
    link_key = None if link is None else str(link)

    if ev.op is Op.DELETE:
        if link_key is None and not _opted_in(entity, ev, dict(row)):
            return Skip("deleted before it was ever synced")
        return Command(
            side,
            entity.name,
            CommandOp.DELETE,
            ev.key,
            link_key,
            ev.lsn,
            ev.commit_us,
            full=False,
            values=(),
        )

    after = ev.after or {}
    if not _opted_in(entity, ev, dict(after)):
        return Skip(f"{entity.erp_opt_in} is not checked")
    missing = [f.name(side) for f in entity.fields if f.name(side) not in after]
    if missing:
        return Invalid(f"{ev.table} change lacks synced column(s) {', '.join(missing)}")

    before = ev.before
    opted_in_now = (
        ev.op is Op.UPDATE and before is not None and not _opted_in(entity, ev, dict(before))
    )
    full = ev.op in (Op.CREATE, Op.READ) or opted_in_now or before is None
    values = tuple(
        FieldValue(
            field=f.name(target),
            before=None if before is None else before.get(f.name(side)),
            after=after[f.name(side)],
            changed=full or before is None or before.get(f.name(side)) != after[f.name(side)],
        )
        for f in entity.fields
    )
    if not full and not any(v.changed for v in values):
        return Skip("no synced field changed")
    return Command(
        side,
        entity.name,
        CommandOp.UPSERT,
        ev.key,
        link_key,
        ev.lsn,
        ev.commit_us,
        full=full,
        values=values,
    )
