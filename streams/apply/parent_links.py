"""Linked parents across workers (apply stage): PostgreSQL's LISTEN/NOTIFY between sinks.

A change whose parent is not linked on the target yet is parked (streams/apply/parking.py), and the
batch that links the parent releases it at once, in the worker that linked it. With several
workers the child is often parked by another one: a file and its segments come on different
partitions. So when a batch has linked new parents on both sides (the target row committed, the
link written back into the source row) it says so on the source database's channel
`ofisync_linked`, in the link-back's transaction (PostgreSQL delivers it at commit, never for a
transaction rolled back). Every worker listens on both databases and wakes its release tasks
with those parents. A worker ignores what its own sinks said: it heard that already.

A notification missed (a listener reconnecting, say) costs only time: the parked change is
tried again when its back-off runs out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
import psycopg

from streams.apply.parking import ParentKey

log = logging.getLogger("ofisync.linked")

CHANNEL = "ofisync_linked"
# PostgreSQL refuses a payload of 8,000 bytes or more: a batch's parents go in several.
MAX_PAYLOAD_BYTES = 7_000
RECONNECT_S = (0.5, 1.0, 2.0, 5.0)


def payloads(parents: Sequence[ParentKey]) -> list[str]:
    """`parents` as JSON arrays of [entity, side, id], each under MAX_PAYLOAD_BYTES."""
    found: list[str] = []
    chunk: list[str] = []
    size = 2
    for parent in parents:
        raw = orjson.dumps(list(parent))
        item = raw.decode()
        if chunk and size + len(raw) + 1 > MAX_PAYLOAD_BYTES:
            found.append(f"[{','.join(chunk)}]")
            chunk, size = [], 2
        chunk.append(item)
        size += len(raw) + 1
    if chunk:
        found.append(f"[{','.join(chunk)}]")
    return found


def parents_of(payload: str) -> list[ParentKey]:
    """The parents a payload names; nothing for one that is not ours (someone else may NOTIFY
    on the channel): a parent missed waits out its back-off, a bad one would be an error."""
    try:
        items = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return []
    if not isinstance(items, list):
        return []
    return [
        (item[0], item[1], item[2])
        for item in items
        if isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)
    ]


async def notify(conn: psycopg.AsyncConnection[Any], parents: Sequence[ParentKey]) -> None:
    """Says, inside the link-back's transaction, which parents are linked: one statement."""
    if parents:
        await conn.execute(
            "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) p", (CHANNEL, payloads(parents))
        )


async def listen(
    dsn: str,
    heard: Callable[[list[ParentKey]], None],
    own: Callable[[], Iterable[int]],
    name: str,
) -> None:
    """Hands `heard` the parents every other sink on this database links, for ever. `own` gives
    the backend process ids of this worker's own connections, whose notifications are skipped.
    A lost connection is opened again (with a pause), and said so once."""
    failures = 0
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, connect_timeout=5, application_name="ofisync-linked"
            ) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                if failures:
                    log.info("%s: listening for linked parents again", name)
                failures = 0
                async for note in conn.notifies():
                    if note.pid in own():
                        continue
                    parents = parents_of(note.payload)
                    if parents:
                        heard(parents)
        except psycopg.Error as exc:
            pause = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
            if not failures:
                log.warning(
                    "%s: cannot listen for parents other workers link (%s); their children"
                    " wait for their back-off until this reconnects, in %.1f s",
                    name,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                    pause,
                )
            failures += 1
            await asyncio.sleep(pause)
