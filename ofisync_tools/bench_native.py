"""Benchmark reference (operations): the same load through PostgreSQL's own logical replication.

`ofisync bench` (ofisync_tools/bench.py) compares the sync with what PostgreSQL does natively
between the same two clusters. This module owns that reference: a database `ofisync_bench` in each
cluster with the applications' table shapes (streams/db/erp.sql and crm.sql, without the sync's
objects), a publication of the tables whose changes cross in each direction (OfiViaje shapes
`clientes`, `expedientes`; CRM shapes `accounts`, `files`, `segments`), and in the other
cluster a subscription to it (`ofisync_bench_from_<side>`, PostgreSQL's defaults otherwise).
Both are created for one run and dropped at its end; leftovers of an interrupted run are
dropped first.

The copies on the subscriber get one extra column, `bench_applied_at`, set by an ALWAYS trigger
when the subscription writes the row: a subscriber records the *publisher's* commit time as the
commit timestamp of what it applies (replication origins), so `pg_xact_commit_timestamp` cannot
tell when a change arrived there. The copies use their primary key as replica identity, so the
subscriber finds rows by index as the sink does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from ofisync_tools.bench_load import CLIENT_COLUMNS, client_table
from streams.core.model import Side
from streams.settings import Database, Settings
from streams.stack.postgres import ddl
from streams.stack.procs import StackError

DATABASE = "ofisync_bench"
PUBLICATION = "ofisync_bench"
APPLIED = "bench_applied_at"

# The tables whose changes cross from each side, in that side's shape.
PUBLISHED = {Side.ERP: ("clientes", "expedientes"), Side.CRM: ("accounts", "files", "segments")}
# Rows the source tables refer to (sellers, branches, agencies, users), copied with their ids.
REFERENCED = {
    Side.ERP: (("sucursales", ("id", "nombre", "crm_agencia_id")),
               ("vendedores", ("id", "nombre", "crm_usuario"))),
    Side.CRM: (("agencies", ("id", "name")),
               ("users", ("id", "username", "full_name", "agency_id"))),
}  # fmt: skip

_STAMP = f"""
CREATE OR REPLACE FUNCTION public.bench_applied() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.{APPLIED} := clock_timestamp();
    RETURN NEW;
END
$$;
"""


def subscription(source: Side) -> str:
    """The subscription (in the other side's cluster) that copies `source`'s changes."""
    return f"ofisync_bench_from_{source.value}"


class Reference:
    """The reference databases of one benchmark run."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def _db(self, side: Side) -> Database:
        return self.settings.erp if side is Side.ERP else self.settings.crm

    def dsn(self, side: Side) -> str:
        """The reference database in `side`'s cluster."""
        return self._db(side).dsn_for(DATABASE)

    def _admin(self, side: Side) -> str:
        return self._db(side).dsn_for("postgres")

    def _app(self, side: Side) -> str:
        return self._db(side).dsn

    def create(self, clients: Mapping[Side, Sequence[Sequence[Any]]]) -> dict[Side, list[int]]:
        """Creates both databases with `clients[side]` (13 synced client values each) as the
        clients changed on that side, publishes and subscribes, and waits for the initial copy.
        Returns the ids of those clients (the same on both sides) per source side."""
        self.drop()
        ids: dict[Side, list[int]] = {}
        for side in Side:
            with psycopg.connect(self._admin(side), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                        sql.Identifier(DATABASE)
                    )
                )
            with psycopg.connect(self.dsn(side)) as conn:
                conn.execute(ddl("erp.sql"))
                conn.execute(ddl("crm.sql"))
                conn.execute(_STAMP)
                for table in PUBLISHED[side.other]:  # the copies this side receives
                    name = sql.Identifier(table)
                    conn.execute(
                        sql.SQL(
                            "ALTER TABLE {} REPLICA IDENTITY DEFAULT, ADD COLUMN {} timestamptz"
                        ).format(name, sql.Identifier(APPLIED))
                    )
                    conn.execute(
                        sql.SQL(
                            "CREATE TRIGGER bench_applied BEFORE INSERT OR UPDATE ON {}"
                            " FOR EACH ROW EXECUTE FUNCTION public.bench_applied()"
                        ).format(name)
                    )
                    conn.execute(
                        sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER bench_applied").format(name)
                    )
                self._copy_referenced(side, conn)
                ids[side] = self._insert_clients(conn, side, clients[side])
                conn.execute(
                    sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                        sql.Identifier(PUBLICATION),
                        sql.SQL(", ").join(sql.Identifier(t) for t in PUBLISHED[side]),
                    )
                )
        for source in Side:
            with psycopg.connect(self.dsn(source.other), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {}").format(
                        sql.Identifier(subscription(source)),
                        sql.Literal(self.dsn(source)),
                        sql.Identifier(PUBLICATION),
                    )
                )
        self._wait_copied()
        return ids

    def _copy_referenced(self, side: Side, conn: psycopg.Connection[Any]) -> None:
        with psycopg.connect(self._app(side)) as app:
            for table, columns in REFERENCED[side]:
                names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                rows = app.execute(
                    sql.SQL("SELECT {} FROM {}").format(names, sql.Identifier(table))
                ).fetchall()
                with conn.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)
                ) as copy:
                    for row in rows:
                        copy.write_row(row)

    def _insert_clients(
        self, conn: psycopg.Connection[Any], side: Side, rows: Sequence[Sequence[Any]]
    ) -> list[int]:
        table = client_table(side)
        columns = CLIENT_COLUMNS[side]
        names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        with conn.cursor().copy(
            sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)
        ) as copy:
            for row in rows:
                copy.write_row(row)
        found = conn.execute(
            sql.SQL("SELECT id FROM {} ORDER BY id").format(sql.Identifier(table))
        ).fetchall()
        return [int(r[0]) for r in found]

    def _wait_copied(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        pending: list[str] = []
        while time.monotonic() < deadline:
            pending = []
            for side in Side:
                with psycopg.connect(self.dsn(side), autocommit=True) as conn:
                    pending += [
                        f"{r[0]} ({r[1]})"
                        for r in conn.execute(
                            "SELECT srrelid::regclass::text, srsubstate FROM pg_subscription_rel"
                            " WHERE srsubstate <> 'r'"
                        )
                    ]
            if not pending:
                return
            time.sleep(0.3)
        raise StackError(
            f"native reference: the initial copy did not finish in {timeout:.0f} s"
            f" (waiting: {', '.join(pending)}); see the PostgreSQL logs in {self.settings.logs}"
        )

    def set_enabled(self, source: Side, enabled: bool, timeout: float = 30.0) -> None:
        """Pauses or resumes the subscription that copies `source`'s changes; a pause returns
        once its apply worker has exited, so nothing is applied until the resume."""
        name = sql.Identifier(subscription(source))
        verb = sql.SQL("ENABLE" if enabled else "DISABLE")
        with psycopg.connect(self.dsn(source.other), autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} {}").format(name, verb))
            deadline = time.monotonic() + timeout
            while not enabled:
                row = conn.execute(
                    "SELECT count(pid) FROM pg_stat_subscription WHERE subname = %s",
                    (subscription(source),),
                ).fetchone()
                if row is None or not row[0]:
                    return
                if time.monotonic() > deadline:
                    raise StackError(
                        f"native reference: subscription {subscription(source)} did not stop"
                        f" within {timeout:.0f} s"
                    )
                time.sleep(0.1)

    def lag_bytes(self, source: Side) -> int:
        """WAL of `source`'s publication not yet confirmed by its subscriber (for progress)."""
        with psycopg.connect(self.dsn(source), autocommit=True) as conn:
            row = conn.execute(
                "SELECT coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)"
                " FROM pg_replication_slots WHERE slot_name = %s",
                (subscription(source),),
            ).fetchone()
        return int(row[0]) if row else 0

    def differences(self, sources: Iterable[Side] = tuple(Side)) -> list[str]:
        """Published tables whose copy differs from the source (a digest of every row)."""
        out = []
        for source in sources:
            with (
                psycopg.connect(self.dsn(source), autocommit=True) as src,
                psycopg.connect(self.dsn(source.other), autocommit=True) as dst,
            ):
                for table in PUBLISHED[source]:
                    columns = [
                        str(r[0])
                        for r in src.execute(
                            "SELECT column_name FROM information_schema.columns"
                            " WHERE table_schema = 'public' AND table_name = %s"
                            " ORDER BY ordinal_position",
                            (table,),
                        )
                    ]
                    query = sql.SQL(
                        "SELECT count(*), md5(coalesce(string_agg(ROW({})::text, '|' ORDER BY id),"
                        " '')) FROM {}"
                    ).format(
                        sql.SQL(", ").join(sql.Identifier(c) for c in columns),
                        sql.Identifier(table),
                    )
                    here, there = src.execute(query).fetchone(), dst.execute(query).fetchone()
                    if here != there:
                        out.append(
                            f"{table}: {here[0] if here else 0} rows in {source.value},"
                            f" {there[0] if there else 0} in the copy, contents differ"
                        )
        return out

    def drop(self) -> None:
        """Drops subscriptions, their slots and both databases (also an interrupted run's)."""
        for side in Side:
            with psycopg.connect(self._admin(side), autocommit=True) as admin:
                exists = admin.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
                ).fetchone()
            if not exists:
                continue
            with psycopg.connect(self.dsn(side), autocommit=True) as conn:
                subs = conn.execute(
                    "SELECT subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid"
                    " WHERE d.datname = current_database()"
                ).fetchall()
                for (name,) in subs:
                    ident = sql.Identifier(str(name))
                    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                    conn.execute(
                        sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident)
                    )
                    conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
        for side in Side:
            self._drop_slots(side)
            with psycopg.connect(self._admin(side), autocommit=True) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(DATABASE)
                    )
                )

    def _drop_slots(self, side: Side, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with psycopg.connect(self._admin(side), autocommit=True) as conn:
            while True:
                slots = conn.execute(
                    "SELECT slot_name, active_pid FROM pg_replication_slots WHERE database = %s",
                    (DATABASE,),
                ).fetchall()
                if not slots:
                    return
                for name, pid in slots:
                    if pid is None:
                        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))
                    elif time.monotonic() > deadline:
                        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
                time.sleep(0.2)
