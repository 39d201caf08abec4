"""Connections (apply stage): a sink's sessions with both databases, marked as the sync's own.

Every write a sink makes is marked twice. The session sets `ofisync.origin`, which the write
trigger copies into the row (the marker the capture of PostgreSQL 15 and older drops, and what
tells the trigger a write is not a person's). On PostgreSQL 16+ the session also takes a
replication origin of its own, so its transactions are never sent to Debezium at all
(`origin=none`): each connection takes a free one from the pool the admin step created
(`<tenant>_<side>_sink_<n>`, `origins`), skipping those that other sessions, or backends still
dying, hold. A session's origin also fixes the commit timestamp of all its transactions to that of
its first one (PostgreSQL keeps the origin timestamp for the session); each write transaction
therefore first sets it back to none (`keep_commit_time`), so a row the sync writes carries the
real time of its commit. The conflict rule never reads those times (the sync stamps the clocks of
what it writes itself), but people and the benchmark do.

A person's write made on a person's behalf (checking a parent's box, so that it crosses) goes
through a session without either mark, and never shares a transaction with marked writes: the
origin filter takes a transaction whole.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Any

import orjson
import psycopg
from psycopg.pq import TransactionStatus
from psycopg.types.json import set_json_loads

from streams.core.model import SYNC_ORIGIN, Side

ORIGIN_SERVER_VERSION = 160000  # pgoutput's `origin` option, PostgreSQL 16
ORIGIN_POOL = 32  # per database: sessions of all workers that write to it at once


def origin_names(tenant: str, side: Side) -> list[str]:
    return [f"{tenant}_{side.value}_sink_{n}" for n in range(1, ORIGIN_POOL + 1)]


class NoFreeOrigin(psycopg.OperationalError):
    """Every replication origin of the pool is held: the connection is tried again later."""


async def connect(dsn: str, name: str) -> psycopg.AsyncConnection[Any]:
    conn = await psycopg.AsyncConnection.connect(dsn, connect_timeout=5, application_name=name)
    set_json_loads(orjson.loads, conn)  # every row the sink reads holds its clocks as jsonb
    await conn.commit()
    return conn


# Origin timestamp 0 (2000-01-01, PostgreSQL's epoch) is "none": the commit takes its own time.
_KEEP_COMMIT_TIME = "SELECT pg_replication_origin_xact_setup('0/0', '2000-01-01 00:00:00+00')"
_with_origin: weakref.WeakSet[psycopg.AsyncConnection[Any]] = weakref.WeakSet()


async def keep_commit_time(conn: psycopg.AsyncConnection[Any]) -> None:
    """Inside a write transaction of a session marked with a replication origin: its commit
    timestamp is the commit's own (see the module docstring)."""
    if conn in _with_origin:
        await conn.execute(_KEEP_COMMIT_TIME)


@contextlib.asynccontextmanager
async def pipelined_transaction(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[None]:
    """A transaction whose statements go as one pipeline: those whose results are not read go
    with the next one that is, and the last ones with the COMMIT, so a sink's batch of updates
    takes two round trips instead of six. PostgreSQL runs them in order and skips the rest after
    an error, which psycopg raises by the end of the block at the latest; the transaction is then
    rolled back. The BEGIN is sent as a statement: psycopg's own transactions wait for the BEGIN's
    answer, and their end for two more."""
    await conn.set_autocommit(True)
    try:
        async with conn.pipeline():
            await conn.execute("BEGIN")
            yield
            await conn.execute("COMMIT")
    except BaseException:
        if not conn.closed and conn.info.transaction_status is not TransactionStatus.IDLE:
            with contextlib.suppress(psycopg.Error):  # a lost connection: the error said so
                await conn.rollback()
        raise
    finally:
        if not conn.closed and conn.info.transaction_status is TransactionStatus.IDLE:
            await conn.set_autocommit(False)


async def mark_as_sync(conn: psycopg.AsyncConnection[Any], origins: list[str]) -> str | None:
    """Marks every later write of `conn` as the sync's own; on 16+ with a replication origin,
    whose name it returns."""
    await conn.execute(f"SET ofisync.origin = '{SYNC_ORIGIN}'")
    await conn.commit()
    if conn.info.server_version < ORIGIN_SERVER_VERSION:
        return None
    # The lowest free one first: every origin a server has ever marked a transaction with keeps a
    # state slot of its own (max_active_replication_origins, PostgreSQL 18; max_replication_slots
    # before), so a worker uses as few distinct ones as it can.
    for name in origins:
        try:
            await conn.execute("SELECT pg_replication_origin_session_setup(%s)", (name,))
            await conn.commit()
            _with_origin.add(conn)
            return name
        except psycopg.errors.ObjectInUse:
            await conn.rollback()  # another session, or one still dying, holds it
    raise NoFreeOrigin(
        f"all {len(origins)} replication origins of the sink are in use; more workers write"
        " to this database than the pool holds (ofisync.prepare_origins)"
    )


class SinkConnections:
    """The sessions of one sink: its target and its source, both marked, and an unmarked one
    on the source for a person's write made on a person's behalf. Opened on first use, and
    again after they were dropped (an outage)."""

    def __init__(
        self,
        target: Side,
        target_dsn: str,
        source_dsn: str,
        origins: dict[Side, list[str]],
    ) -> None:
        self.target_side = target
        self.target_dsn = target_dsn
        self.source_dsn = source_dsn
        self.origins = origins
        self._target: psycopg.AsyncConnection[Any] | None = None
        self._source: psycopg.AsyncConnection[Any] | None = None
        self._person: psycopg.AsyncConnection[Any] | None = None
        self._limits: dict[tuple[str, str], int] | None = None

    async def target(self) -> psycopg.AsyncConnection[Any]:
        if self._target is None or self._target.closed:
            conn = await connect(self.target_dsn, "ofisync-sink")
            await mark_as_sync(conn, self.origins[self.target_side])
            self._target = conn
        return self._target

    async def source(self) -> psycopg.AsyncConnection[Any]:
        if self._source is None or self._source.closed:
            conn = await connect(self.source_dsn, "ofisync-sink")
            await mark_as_sync(conn, self.origins[self.target_side.other])
            self._source = conn
        return self._source

    async def person(self) -> psycopg.AsyncConnection[Any]:
        """The source, unmarked: what it writes is captured and crosses like a person's edit."""
        if self._person is None or self._person.closed:
            self._person = await connect(self.source_dsn, "ofisync-sink-on-behalf")
        return self._person

    def backend_pids(self, side: Side) -> list[int]:
        """The server processes of the open sessions with `side`'s database (what their
        notifications come from, streams/apply/parent_links.py)."""
        sessions = (self._target,) if side is self.target_side else (self._source, self._person)
        return [c.info.backend_pid for c in sessions if c is not None and not c.closed]

    async def text_limits(self) -> dict[tuple[str, str], int]:
        """The most characters each limited text column of the target holds (read once)."""
        if self._limits is None:
            conn = await self.target()
            cur = await conn.execute(
                "SELECT table_name, column_name, character_maximum_length"
                " FROM information_schema.columns"
                " WHERE table_schema = 'public' AND character_maximum_length IS NOT NULL"
            )
            self._limits = {(t, c): n for t, c, n in await cur.fetchall()}
            await conn.commit()
        return self._limits

    def limits(self) -> dict[tuple[str, str], int]:
        """The limits read so far (`text_limits` reads them)."""
        return self._limits or {}

    async def drop(self) -> None:
        for conn in (self._target, self._source, self._person):
            if conn is not None:
                await conn.close()

    close = drop
