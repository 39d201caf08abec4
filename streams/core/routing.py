"""Routing: a raw captured message → what to do with it, in one pure step.

decode → echo check → rules. The Faust agent only moves bytes in and commands out.

An echo is a change the sync itself wrote: on PostgreSQL 16+ the server never sends them; on
older servers they come marked (`ofisync_origin`) and are dropped here, as is anything written
under another mark (a database restored with `ofisync.origin = 'restore'`).

A replay (`ofisync replay`) routes a captured change to history: its command for the other side
and, for the side it came from, its own change (REAPPLY), both marked `replay`. The sync's own
writes are never replayed: a value always travels with the time of the change it came from, never
the later time of a copy of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.contract import entity_for_table
from streams.core.decode import DecodeError, Ignored, decode
from streams.core.model import ChangeEvent, Command, CommandOp, Op
from streams.core.rules import Invalid, Skip, pnr_capture, reapply_command, to_command


@dataclass(frozen=True)
class Echo:
    """A change the sync itself wrote: dropped, so nothing bounces back."""

    event: ChangeEvent


Outcome = Command | Skip | Invalid | DecodeError | Ignored | Echo


def route(topic: str, key: bytes | None, value: bytes | None, tenant: str) -> Outcome:
    event = decode(topic, key, value, tenant)
    if not isinstance(event, ChangeEvent):
        return event
    return route_event(event)


def route_event(event: ChangeEvent) -> Outcome:
    if event.origin is not None:
        return Echo(event)
    zero = pnr_capture(event)
    if zero is not None:
        return zero
    entity = entity_for_table(event.source, event.table)
    if entity is None:
        return Ignored(f"{event.source.value} table {event.table} feeds no command")
    return to_command(event, entity)


def replayed(event: ChangeEvent) -> list[Command] | Skip | Invalid | DecodeError | Ignored | Echo:
    """A captured change as history: the command for the other side and the side's own change
    for itself. A change a lock undid is not the side's own any more: only its restore goes."""
    outcome = route_event(event)
    if not isinstance(outcome, Command):
        return outcome
    commands = [outcome._replace(replay=True)]
    entity = entity_for_table(event.source, event.table)
    if entity is not None and outcome.op in (CommandOp.UPSERT, CommandOp.DELETE):
        own = reapply_command(event, entity)
        if isinstance(own, Command):
            commands.append(own)
    return commands


def deletes(event: ChangeEvent) -> bool:
    """Whether the change deletes its record (a replay restores no record deleted later)."""
    return event.op is Op.DELETE and event.origin is None
