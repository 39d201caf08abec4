"""Parking (apply stage): changes whose parent is not linked on the target yet wait in
`ofisync.parked` of the target database, written in the same transaction as the rest of the
batch, so the Kafka offset can move on and nothing is lost.

A parked change is retried with back-off, and at once when a batch links its parent; a later
change of a record that has parked changes waits behind them, so a record's changes still apply
in order. The back-off of a change waiting for its parent grows to minutes: its parent's link
releases it anyway, and a parent that never comes (a dead letter, say) would otherwise have its
children tried again every few seconds, in the same sink as the live traffic. Each wait is
drawn between half and all of its back-off, so changes parked together do not come back
together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import psycopg

from streams import codec
from streams.model import Command, Side

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
    return (cmd.source.value, cmd.entity, cmd.source_key)


async def park(conn: psycopg.AsyncConnection[Any], cmd: Command, waiting: Waiting | None) -> None:
    """Parks `cmd` (waiting None: behind an earlier parked change of the same record)."""
    reason = waiting.reason if waiting else "an earlier change of the same record is waiting"
    await conn.execute(
        "INSERT INTO ofisync.parked (source, entity, source_key, lsn, parent_entity, parent_key,"
        " waiting_for, command, next_attempt_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
        " clock_timestamp() + make_interval(secs => %s))"
        " ON CONFLICT (source, entity, source_key, lsn) DO NOTHING",
        (
            *record_key(cmd),
            cmd.lsn,
            waiting.parent_entity if waiting else None,
            waiting.parent_key if waiting else None,
            reason,
            codec.encode(cmd),
            retry_delay(0),
        ),
    )


async def still_waiting(
    conn: psycopg.AsyncConnection[Any], parked_id: int, waiting: Waiting
) -> None:
    await conn.execute(
        "UPDATE ofisync.parked SET attempts = attempts + 1, waiting_for = %s,"
        " parent_entity = %s, parent_key = %s,"
        " next_attempt_at = clock_timestamp() + make_interval(secs =>"
        "   (%s::float8[])[least(attempts + 1, %s) + 1] * (0.5 + random() / 2))"
        " WHERE id = %s",
        (
            waiting.reason,
            waiting.parent_entity,
            waiting.parent_key,
            _delays(retry_cap(waiting)),
            MAX_DOUBLINGS,
            parked_id,
        ),
    )


async def claim(conn: psycopg.AsyncConnection[Any], parked_id: int) -> bool:
    """Locks a parked change for this transaction; False when another worker holds it or has
    already applied it (several workers may release the same parked changes)."""
    cur = await conn.execute(
        "SELECT 1 FROM ofisync.parked WHERE id = %s FOR UPDATE SKIP LOCKED", (parked_id,)
    )
    return await cur.fetchone() is not None


async def unpark(conn: psycopg.AsyncConnection[Any], parked_id: int) -> None:
    await conn.execute("DELETE FROM ofisync.parked WHERE id = %s", (parked_id,))


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
