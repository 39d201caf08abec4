"""Linked parents told between workers through the real PostgreSQL
(streams/apply/parent_links.py): a listener hears what another connection's committed transaction
says, and neither what was rolled back nor what its own worker's connections said."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import psycopg

from streams.apply.parent_links import listen, notify
from streams.apply.parking import ParentKey

DEADLINE_S = 20.0


async def _until(probe: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not await probe():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _scenario(dsn: str) -> None:
    run = uuid.uuid4().hex[:8]
    heard: list[ParentKey] = []
    own: list[int] = []
    listener = asyncio.create_task(listen(dsn, heard.extend, lambda: own, "test"))
    try:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watch:

            async def listening() -> bool:
                cur = await watch.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = 'ofisync-linked' AND query LIKE 'LISTEN%%'"
                )
                row = await cur.fetchone()
                return bool(row and row[0])

            await _until(listening, "the listener to LISTEN")

        rolled_back = [("file", "crm", f"rolled-back-{run}")]
        ours = [("file", "crm", f"own-{run}")]
        theirs = [("file", "crm", f"theirs-{run}"), ("file", "erp", f"theirs-{run}")]
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await notify(conn, rolled_back)
            await conn.rollback()
            own.append(conn.info.backend_pid)
            await notify(conn, ours)
            await conn.commit()
        async with await psycopg.AsyncConnection.connect(dsn) as other:
            await notify(other, theirs)
            await other.commit()

        async def got_theirs() -> bool:
            return len(heard) >= len(theirs)

        await _until(got_theirs, "the other connection's parents")
        # Notifications arrive in commit order: anything wrongly heard came before.
        assert heard == theirs
    finally:
        listener.cancel()


def test_a_listener_hears_other_workers_linked_parents_at_commit_only(erp: str) -> None:
    asyncio.run(_scenario(erp))
