"""Parking (apply stage): changes whose parent is not linked on the target yet wait in
`ofisync.parked` of the target database, written in the same transaction as the rest of the
batch, so the Kafka offset can move on and nothing is lost.

A parked change is retried with back-off, and at once when a batch links its parent (in any worker:
streams/apply/parent_links.py); a later change of a record that has parked changes waits behind
them, so a record's changes still apply in order. The back-off of a change waiting for its parent
grows to minutes: its parent's link releases it anyway, and a parent that never comes (a dead
letter, say) would otherwise have its children tried again every few seconds, in the same sink as
the live traffic. Each wait is drawn between half and all of its back-off, so changes parked
together do not come back together."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import psycopg

from streams.core import codec
from streams.core.model import Command, Side

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 30.0  # a refusal (a document the CRM refused): fixed by a person, tried soon
MAX_PARENT_RETRY_S = 300.0  # waiting for a parent: its link releases it at once
RELEASE_LIMIT = 500
MAX_DOUBLINGS = 16  # past this many attempts the back-off stops growing (it is capped anyway)

RecordKey = tuple[str, str, str]  # source, entity, source key
ParentKey = tuple[str, str, str]  # entity, side whose id it is, id


@dataclass(frozen=True)
class Waiting:
    """Why a change cannot apply yet: its parent is not linked on the target."""

    parent_entity: str | None  # None: not a parent (a refusal), only back-off retries it
    parent_key: str | None  # the parent's id on the change's source side
    reason: str


def retry_cap(waiting: Waiting | None) -> float:
    """The longest back-off: a change behind a parent (or behind an earlier change of its
    record) waits longer between attempts than a refusal."""
    return (
        MAX_RETRY_S if waiting is not None and waiting.parent_entity is None else MAX_PARENT_RETRY_S
    )


def retry_delay(attempts: int, cap: float = MAX_RETRY_S) -> float:
    """Seconds until the next attempt after `attempts` failed ones (doubling, capped)."""
    return min(FIRST_RETRY_S * 2.0 ** min(attempts, MAX_DOUBLINGS), cap)


@cache
def _delays(cap: float) -> list[float]:
    """`retry_delay` for 0 to MAX_DOUBLINGS failed attempts: the table the database's update of a
    parked change picks its back-off from, so the curve is defined once, here."""
    return [retry_delay(attempts, cap) for attempts in range(MAX_DOUBLINGS + 1)]


def record_key(cmd: Command) -> RecordKey:
    # `_value_`, not `value`: Enum's `value` is a Python-level property (0.25 µs in 3.11),
    # and this is asked three times a change.
    return (cmd.source._value_, cmd.entity, cmd.source_key)


@dataclass
class Moves:
    """What one batch does to `ofisync.parked`, written at its end in a statement per kind
    (`write`) instead of one per change: with several workers most segments of a new file are
    parked by one and released by another, and each cost two or three round trips."""

    parks: list[tuple[Command, Waiting | None]] = field(default_factory=list)
    waits: list[tuple[int, Waiting]] = field(default_factory=list)
    done: list[int] = field(default_factory=list)

    def park(self, cmd: Command, waiting: Waiting | None) -> None:
        """Parks `cmd` (waiting None: behind an earlier parked change of the same record)."""
        self.parks.append((cmd, waiting))

    def still_waiting(self, parked_id: int, waiting: Waiting) -> None:
        self.waits.append((parked_id, waiting))

    def unpark(self, parked_id: int) -> None:
        self.done.append(parked_id)


_PARK_SQL = (
    "INSERT INTO ofisync.parked (source, entity, source_key, lsn, parent_entity, parent_key,"
    " waiting_for, command, next_attempt_at)"
    " SELECT u.*, clock_timestamp() + make_interval(secs => %s)"
    " FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::text[],"
    "  %s::text[], %s::bytea[]) u"
    " ON CONFLICT (source, entity, source_key, lsn) DO NOTHING"
)
_WAIT_SQL = (
    "UPDATE ofisync.parked p SET attempts = p.attempts + 1, waiting_for = u.reason,"
    " parent_entity = u.parent_entity, parent_key = u.parent_key,"
    " next_attempt_at = clock_timestamp() + make_interval(secs =>"
    "   (CASE WHEN u.long_wait THEN %s::float8[] ELSE %s::float8[] END)"
    "   [least(p.attempts + 1, %s) + 1] * (0.5 + random() / 2))"
    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::boolean[])"
    "  AS u(id, reason, parent_entity, parent_key, long_wait)"
    " WHERE p.id = u.id"
)


async def write(conn: psycopg.AsyncConnection[Any], moves: Moves) -> None:
    """A batch's parkings, attempts and releases, in the batch's transaction."""
    if moves.parks:
        columns: list[list[Any]] = [[] for _ in range(8)]
        for cmd, waiting in moves.parks:
            row = (
                *record_key(cmd),
                cmd.lsn,
                waiting.parent_entity if waiting else None,
                waiting.parent_key if waiting else None,
                waiting.reason if waiting else "an earlier change of the same record is waiting",
                codec.encode(cmd),
            )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
        await conn.execute(_PARK_SQL, (retry_delay(0), *columns))
    if moves.waits:
        await conn.execute(
            _WAIT_SQL,
            (
                _delays(MAX_PARENT_RETRY_S),
                _delays(MAX_RETRY_S),
                MAX_DOUBLINGS,
                [parked_id for parked_id, _ in moves.waits],
                [w.reason for _, w in moves.waits],
                [w.parent_entity for _, w in moves.waits],
                [w.parent_key for _, w in moves.waits],
                [retry_cap(w) == MAX_PARENT_RETRY_S for _, w in moves.waits],
            ),
        )
    if moves.done:
        await conn.execute("DELETE FROM ofisync.parked WHERE id = ANY(%s::bigint[])", (moves.done,))


async def claim(conn: psycopg.AsyncConnection[Any], parked_ids: Collection[int]) -> set[int]:
    """Locks these parked changes for this transaction; those another worker holds or has
    already applied are left out (several workers may release the same parked changes)."""
    if not parked_ids:
        return set()
    cur = await conn.execute(
        "SELECT id FROM ofisync.parked WHERE id = ANY(%s::bigint[]) FOR UPDATE SKIP LOCKED",
        (list(parked_ids),),
    )
    return {int(r[0]) for r in await cur.fetchall()}


async def due(
    conn: psycopg.AsyncConnection[Any], parents: Iterable[ParentKey]
) -> list[tuple[int, Command]]:
    """Parked changes to try now: those whose parent was just linked, and those whose back-off
    has run out, with every parked change of the same records, oldest first per record."""
    parents = list(parents)
    cur = await conn.execute(
        "WITH linked AS (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]) l(e, s, k)),"
        " records AS (SELECT DISTINCT p.source, p.entity, p.source_key FROM ofisync.parked p"
        "   WHERE p.next_attempt_at <= clock_timestamp()"
        "      OR EXISTS (SELECT 1 FROM linked l WHERE l.e = p.parent_entity"
        "                 AND l.s = p.source AND l.k = p.parent_key)"
        "   LIMIT %s)"
        " SELECT p.id, p.command FROM ofisync.parked p"
        " JOIN records r USING (source, entity, source_key)"
        " ORDER BY p.source, p.entity, p.source_key, p.lsn",
        ([p[0] for p in parents], [p[1] for p in parents], [p[2] for p in parents], RELEASE_LIMIT),
    )
    return [(int(r[0]), codec.decode(bytes(r[1]))) for r in await cur.fetchall()]


def filled(due: Sequence[tuple[int, Command]]) -> bool:
    """Whether `due` took as many records as one release may: more may be waiting."""
    return len({record_key(cmd) for _, cmd in due}) >= RELEASE_LIMIT


async def count(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT count(*) FROM ofisync.parked")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


def linked_parents(cmd: Command, target: Side, target_id: int) -> list[ParentKey]:
    """Both names of a record that a command linked, as parked changes refer to parents."""
    return [
        (cmd.entity, cmd.source.value, cmd.source_key),
        (cmd.entity, target.value, str(target_id)),
    ]
