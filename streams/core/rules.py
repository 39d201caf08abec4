"""Rules: a decoded change → the command for the other side, or the reason there is none.

Pure functions, no I/O. Which records cross (opt-in), which fields cross (the contract's
correspondence, nothing else), whether a change is a full push (create, opt-in, snapshot)
or a field-level update carrying its before-image, which changes break a lock (a CRM edit of
a field OfiViaje owns becomes a RESTORE of the CRM row), and when a captured PNR ticket makes a
file's placeholder tickets go to 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.contract import PNR_TABLE
from streams.core.model import ChangeEvent, Command, CommandOp, Entity, FieldValue, Op, Side, Via


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


def _linked_before(entity: Entity, ev: ChangeEvent) -> bool:
    """The record was linked before this change (so a lock applies to it)."""
    link_column = entity.link(ev.source)
    if link_column is None or ev.before is None or ev.after is None:
        return False
    return ev.before.get(link_column) is not None and ev.after.get(link_column) is not None


def _actor(ev: ChangeEvent) -> str | None:
    writer = ev.row.get("ofisync_writer")
    return writer if isinstance(writer, str) else None


def locked_change(ev: ChangeEvent, entity: Entity) -> Command | Skip | None:
    """A change to a linked record on the side that does not own it: the owned fields it
    changed are restored (RESTORE on the same side); None when no lock applies."""
    if entity.owner is None or ev.source is entity.owner or ev.op is Op.DELETE:
        return None
    link_column = entity.link(ev.source)
    if ev.op is Op.READ and link_column and ev.row.get(link_column) is not None:
        return Skip(f"linked {entity.name}: {entity.owner.value} owns its fields")
    if ev.op is not Op.UPDATE or not _linked_before(entity, ev):
        return None
    assert ev.before is not None and ev.after is not None
    broken = tuple(
        FieldValue(
            f.name(ev.source),
            ev.before.get(f.name(ev.source)),
            ev.after.get(f.name(ev.source)),
            True,
        )
        for f in entity.fields
        if f.via is not Via.NUMBER
        and ev.before.get(f.name(ev.source)) != ev.after.get(f.name(ev.source))
    )
    if not broken:
        return None
    link = ev.after.get(link_column or "")
    return Command(
        ev.source,
        entity.name,
        CommandOp.RESTORE,
        ev.key,
        None if link is None else str(link),
        ev.lsn,
        ev.commit_us,
        full=False,
        values=broken,
        actor=_actor(ev),
    )


def pnr_capture(ev: ChangeEvent) -> Command | None:
    """A ticket captured from a PNR on a file: its placeholders must go to 0 (the sink does it
    when the agency turned that on)."""
    after = ev.after
    if ev.source is not Side.ERP or ev.table != PNR_TABLE or after is None:
        return None
    if after.get("origen_registro") != "pnr":
        return None
    before = ev.before
    if (
        ev.op is Op.UPDATE
        and before is not None
        and before.get("origen_registro") == "pnr"
        and before.get("expediente_id") == after.get("expediente_id")
    ):
        return None
    file_id = after.get("expediente_id")
    return Command(
        ev.source,
        "segment",
        CommandOp.ZERO_PLACEHOLDERS,
        ev.key,
        None,
        ev.lsn,
        ev.commit_us,
        full=False,
        values=(FieldValue("expediente_id", None, file_id, True),),
    )


def to_command(ev: ChangeEvent, entity: Entity) -> Command | Skip | Invalid:
    side = ev.source
    link_column = entity.link(side)
    row = ev.row
    link = row.get(link_column) if link_column else None
    link_key = None if link is None else str(link)

    locked = locked_change(ev, entity)
    if locked is not None:
        return locked

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
    send_when = entity.erp_send_when if side is Side.ERP else None
    if send_when is not None and after.get(send_when[0]) != send_when[1]:
        return Skip(f"{send_when[0]} is not {send_when[1]!r}")
    crossing = entity.crossing(side)
    missing = [read for read, _ in crossing if read not in after]
    if missing:
        return Invalid(f"{ev.table} change lacks synced column(s) {', '.join(missing)}")

    before = ev.before
    opted_in_now = (
        ev.op is Op.UPDATE and before is not None and not _opted_in(entity, ev, dict(before))
    )
    full = ev.op in (Op.CREATE, Op.READ) or opted_in_now or before is None or send_when is not None
    if before is None:
        values = tuple(FieldValue(written, None, after[read], True) for read, written in crossing)
    else:
        values = tuple(
            FieldValue(written, old, new, full or old != new)
            for read, written in crossing
            for old, new in ((before.get(read), after[read]),)
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
        actor=_actor(ev),
    )
