"""Results (apply stage): what a batch did, for the worker to count, dead-letter and follow up
(link-backs, alignments and opt-ins written to the source after the target committed)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import psycopg

from streams.apply.parking import ParentKey
from streams.core.model import Command, Entity, Via

# Errors that retrying the same write cannot fix.
PERMANENT = (psycopg.errors.DataError, psycopg.errors.IntegrityError)


class Applied(NamedTuple):
    """The target row a command wrote (its id, and its own record number if it has one); a
    named tuple, built for every change applied."""

    target_id: int
    number: str | None = None


@dataclass
class BatchResult:
    applied: list[Command] = field(default_factory=list)
    duplicates: int = 0  # redelivered: at or below the row's position
    noops: int = 0  # nothing to change
    conflicts: int = 0
    parked: int = 0
    lock_violations: int = 0
    paused: int = 0  # for a record unchecked in OfiViaje
    flagged: int = 0  # for a record flagged as deleted on the other side
    gone: int = 0  # for a record deleted on the target
    matched: int = 0  # new records linked to one that was there instead of created
    fallbacks: Counter[tuple[Via, str]] = field(default_factory=Counter)  # values, by reason
    dead: list[tuple[Command, str]] = field(default_factory=list)
    links: list[tuple[Command, int, str | None]] = field(default_factory=list)
    opt_ins: list[tuple[Entity, int]] = field(default_factory=list)  # parents to check
    linked: list[ParentKey] = field(default_factory=list)
    uploaded: list[tuple[int, int]] = field(default_factory=list)  # OfiViaje doc, CRM doc
    document_notes: list[tuple[int, str]] = field(default_factory=list)  # doc, error_sync
    # ALIGN commands for the source: fields where the target kept a newer value.
    aligns: list[Command] = field(default_factory=list)

    def absorb(self, other: BatchResult) -> None:
        """Adds another result's outcome to this one (applying a batch piece by piece)."""
        for f in fields(self):
            mine: Any = getattr(self, f.name)
            setattr(self, f.name, mine + getattr(other, f.name))


def text(value: Any) -> str | None:
    return None if value is None else str(value)
