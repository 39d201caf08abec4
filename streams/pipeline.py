"""Capture side of the flow in one pure step: a raw captured message → what to do with it.

decode → echo check → rules. The Faust agent only moves bytes in and commands out.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.decode import DecodeError, Ignored, decode
from streams.model import ChangeEvent, Command, entity_for_table
from streams.rules import Invalid, Skip, pnr_capture, to_command


@dataclass(frozen=True)
class Echo:
    """A change the sync itself wrote: dropped, so nothing bounces back."""

    event: ChangeEvent


Outcome = Command | Skip | Invalid | DecodeError | Ignored | Echo


def route(topic: str, key: bytes | None, value: bytes | None, tenant: str) -> Outcome:
    event = decode(topic, key, value, tenant)
    if not isinstance(event, ChangeEvent):
        return event
    if event.origin is not None:
        return Echo(event)
    zero = pnr_capture(event)
    if zero is not None:
        return zero
    entity = entity_for_table(event.source, event.table)
    if entity is None:
        return Ignored(f"{event.source.value} table {event.table} feeds no command")
    return to_command(event, entity)
