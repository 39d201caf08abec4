"""Capture side of the flow in one pure step: a raw captured message → what to do with it.

decode → echo check → rules. The Faust agent only moves bytes in and commands out.

A replay (`ofisync replay`) also re-sends the sync's own writes on the source side (values
that came from the other side), because the other side may have lost them in a restore;
they go as ordinary updates marked `replay`, never as lock restores. Writes marked with any
other origin (a restore, say) are never sent.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from streams.core.contract import entity_for_table
from streams.core.decode import DecodeError, Ignored, decode
from streams.core.model import SELF_TARGETED, SYNC_ORIGIN, ChangeEvent, Command
from streams.core.rules import Invalid, Skip, pnr_capture, to_command


@dataclass(frozen=True)
class Echo:
    """A change the sync itself wrote: dropped, so nothing bounces back."""

    event: ChangeEvent


Outcome = Command | Skip | Invalid | DecodeError | Ignored | Echo


def route(
    topic: str, key: bytes | None, value: bytes | None, tenant: str, replay: bool = False
) -> Outcome:
    event = decode(topic, key, value, tenant)
    if not isinstance(event, ChangeEvent):
        return event
    echo = event.origin is not None
    if echo and not (replay and event.origin == SYNC_ORIGIN):
        return Echo(event)
    zero = None if echo else pnr_capture(event)
    if zero is not None:
        return replace(zero, replay=replay)
    entity = entity_for_table(event.source, event.table)
    if entity is None:
        return Ignored(f"{event.source.value} table {event.table} feeds no command")
    outcome = to_command(event, entity)
    if not isinstance(outcome, Command) or not replay:
        return outcome
    if echo and outcome.op in SELF_TARGETED:
        return Echo(event)  # the sync's own restore: nothing was attempted
    return replace(outcome, replay=True)
