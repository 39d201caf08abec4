"""The two PostgreSQL clusters of the local stack (OfiViaje and OfiCrmTravel).

Each lives in OFISYNC_HOME/pg/<side>, runs as the `postgres` OS user with `wal_level=logical`,
listens on 127.0.0.1 only, and holds its application tables (streams/db/<side>.sql) plus the
sync service's own objects (streams/db/sync.sql, streams/db/sync_<side>.sql).
"""

from __future__ import annotations

import hashlib
import os
import pwd
import stat
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from streams.apply.connections import ORIGIN_POOL, ORIGIN_SERVER_VERSION, origin_names
from streams.core.model import Side
from streams.secrets import Role, password, role_name, scram_verifier
from streams.settings import Database, Settings
from streams.stack.install import PG_USER, ensure_postgres
from streams.stack.procs import (
    StackError,
    log_tail,
    port_bindable,
    port_open,
    read_pid,
    run,
    wait_until,
)

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "wal_level": "logical",
    "max_wal_senders": "16",
    # Logical slots, and before PostgreSQL 18 also the replication origins the sink marks with.
    "max_replication_slots": "64",
    # The conflict rule compares exact commit times of the changes that set each field.
    "track_commit_timestamp": "on",
    "max_connections": "200",
    # PostgreSQL's default: the suite runs up to six clusters on one machine at once.
    "shared_buffers": "128MB",
    # A connector that went away without closing its replication connection keeps its slot
    # busy until this runs out; its successor retries meanwhile (Debezium slot.max.retries).
    "wal_sender_timeout": "10s",
    "logging_collector": "off",
    "log_line_prefix": "%m [%p] %q%u@%d ",
    "log_min_messages": "warning",
    "log_min_error_statement": "error",
}


# Linux keeps a closed connection's own port for 60 s (TIME_WAIT); a server waits that out.
PORT_RELEASE_S = 90


def _as_postgres(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_USER, "--", *argv]
    return argv


def _chown_postgres(path: Path) -> None:
    entry = pwd.getpwnam(PG_USER)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _let_postgres_traverse(path: Path) -> None:
    """The postgres user must reach its data directory through our home; grant o+x where missing."""
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)


class Cluster:
    """One PostgreSQL cluster, addressed by its side ("erp" or "crm")."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.data = settings.pg_data(db.side)
        self.socket_dir = settings.run / f"pg-{db.side}"
        self.log = settings.logs / f"postgres-{db.side}.log"
        self.name = f"postgres-{db.side}"

    @property
    def bin(self) -> Path:
        found = ensure_postgres(self.settings)
        if os.geteuid() == 0:
            _let_postgres_traverse(found / "postgres")
        return found

    def pid(self) -> int | None:
        return read_pid(self.data / "postmaster.pid")

    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def init(self) -> None:
        if self.initialised():
            self._check_data_version()
            return
        for d in (self.data, self.socket_dir):
            d.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                _chown_postgres(d)
                _let_postgres_traverse(d)
        self.data.chmod(0o700)
        run(
            _as_postgres(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    PG_USER,
                    "-A",
                    "trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                ]
            ),
            f"initdb for {self.db.title} in {self.data}",
        )
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write("\ninclude_if_exists = 'ofisync.conf'\n")

    def _check_data_version(self) -> None:
        made_by = (self.data / "PG_VERSION").read_text().strip()
        runs = self.major()
        if str(runs) != made_by:
            raise StackError(
                f"{self.db.title}'s data in {self.data} was made by PostgreSQL {made_by}, and this"
                f" stack runs {runs}: move that directory away to start afresh, or upgrade it with"
                " pg_upgrade"
            )

    def write_hba(self) -> None:
        """The superuser on this machine as initdb set it (trust: the contract's DSNs carry no
        password); every other role, the sync's own included, must give its password."""
        target = self.data / "pg_hba.conf"
        target.write_text(
            "# written by `ofisync up`; edits are overwritten\n"
            f"local all {PG_USER} trust\n"
            f"host  all {PG_USER} 127.0.0.1/32 trust\n"
            "local all all scram-sha-256\n"
            "host  all all 127.0.0.1/32 scram-sha-256\n"
        )
        if os.geteuid() == 0:
            _chown_postgres(target)

    def major(self) -> int:
        """The major version of the PostgreSQL this cluster runs."""
        version = run([str(self.bin / "postgres"), "--version"], "postgres --version").split()[-1]
        return int(version.split(".")[0])

    def write_config(self) -> None:
        self.write_hba()
        settings = dict(SERVER_SETTINGS)
        if self.major() >= 18:
            # The sink's sessions each mark their writes with a replication origin of a pool
            # (streams/apply/connections.py), and each origin used keeps a state slot.
            settings["max_active_replication_origins"] = str(2 * ORIGIN_POOL)
        settings["port"] = str(self.db.endpoint.port)
        settings["unix_socket_directories"] = f"'{self.socket_dir}'"
        lines = [f"{k} = {v if v.startswith(chr(39)) else repr(v)}" for k, v in settings.items()]
        target = self.data / "ofisync.conf"
        target.write_text(
            "# written by `ofisync up`; edits are overwritten\n" + "\n".join(lines) + "\n"
        )
        if os.geteuid() == 0:
            _chown_postgres(target)

    def start(self) -> None:
        if self.pid():
            return
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            _chown_postgres(self.socket_dir)
            self.log.touch()
            _chown_postgres(self.log)
            _let_postgres_traverse(self.log)  # made under a restrictive umask, it may be shut
        self.write_config()
        ep = self.db.endpoint
        wait_until(
            lambda: port_bindable(ep.host, ep.port),
            PORT_RELEASE_S,
            f"port {ep} for {self.db.title} PostgreSQL is still taken (by a program that listens"
            f" there, or a connection that closed within the minute: `ss -tanp | grep {ep.port}`"
            " says which)",
        )
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log)]
        try:
            run(
                _as_postgres([*argv, "-w", "-t", "60", "start"]),
                f"starting {self.db.title} PostgreSQL on {self.db.endpoint}",
            )
        except StackError as exc:
            raise StackError(f"{exc}\n{self.log}, last lines:\n{log_tail(self.log)}") from exc
        wait_until(self.accepts_connections, 60, f"{self.db.title} PostgreSQL")

    def stop(self) -> bool:
        if not self.pid():
            return False
        run(
            _as_postgres(
                [str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]
            ),
            f"stopping {self.db.title} PostgreSQL",
        )
        return True

    def accepts_connections(self) -> bool:
        ep = self.db.endpoint
        if not port_open(ep.host, ep.port):
            return False
        try:
            with psycopg.connect(self.db.dsn_for("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def _ensure_roles(self, conn: psycopg.Connection[Any]) -> None:
        """The sync's two roles, neither a superuser, with their current passwords (sent as
        SCRAM verifiers: the server never sees a password)."""
        for role in (Role.SINK, Role.CAPTURE):
            name = role_name(self.settings, role)
            verifier = scram_verifier(password(self.settings, self.db.side, role, create=True))
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL("{} ROLE {} WITH ").format(sql.SQL(verb), sql.Identifier(name))
                + _role_sql(role is Role.CAPTURE, verifier)
            )

    def ensure_database(self) -> list[str]:
        """The database with the sync's objects, made or upgraded; returns the synced tables
        whose write triggers were made again because an application changed their columns."""
        with psycopg.connect(self.db.dsn_for("postgres"), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.db.dbname,)
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                        sql.Identifier(self.db.dbname)
                    )
                )
        scripts = (f"{self.db.side}.sql", "sync.sql", f"sync_{self.db.side}.sql")
        roles = [role_name(self.settings, r) for r in (Role.SINK, Role.CAPTURE)]
        version = hashlib.sha256(
            b"".join(ddl(s) for s in scripts) + " ".join(roles).encode()
        ).hexdigest()
        with psycopg.connect(self.db.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_reload_conf()")  # pg_hba.conf may have changed
            self._ensure_roles(conn)
            # The DDL takes strong locks; on a database the sync is already writing to it could
            # deadlock, so it runs only when it changed (a new database, an upgrade).
            if _schema_version(conn) != version:
                self._apply(conn, scripts, roles, version)
            stale = conn.execute("SELECT ofisync.remake_stale_write_triggers()::text ORDER BY 1")
            return [r[0] for r in stale]

    def _apply(
        self,
        conn: psycopg.Connection[Any],
        scripts: tuple[str, ...],
        roles: list[str],
        version: str,
    ) -> None:
        """The sync's schema, triggers, publication, grants and replication origins, in one
        transaction, and the version of the scripts they were made from."""
        with conn.transaction():
            for script in scripts:
                try:
                    conn.execute(ddl(script))
                except psycopg.Error as exc:
                    raise StackError(
                        f"applying streams/db/{script} to {self.db.title} failed: {exc}"
                    ) from exc
            conn.execute(
                "SELECT ofisync.publish(%s, ofisync.published_tables())",
                (self.settings.slot_name(self.db.side),),
            )
            conn.execute("SELECT ofisync.grant_sync_roles(%s, %s)", roles)
            if conn.info.server_version >= ORIGIN_SERVER_VERSION:
                conn.execute(
                    "SELECT ofisync.prepare_origins(%s, %s)",
                    (roles[0], origin_names(self.settings.tenant, Side(self.db.side))),
                )
            conn.execute(
                "CREATE TABLE IF NOT EXISTS ofisync.schema_version (version text NOT NULL)"
            )
            conn.execute("DELETE FROM ofisync.schema_version")
            conn.execute("INSERT INTO ofisync.schema_version VALUES (%s)", (version,))


def _role_sql(replication: bool, verifier: str) -> sql.Composed:
    return sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS {} PASSWORD {}").format(
        sql.SQL("REPLICATION" if replication else "NOREPLICATION"), sql.Literal(verifier)
    )


def _schema_version(conn: psycopg.Connection[Any]) -> str | None:
    if conn.execute("SELECT to_regclass('ofisync.schema_version')").fetchone() == (None,):
        return None
    row = conn.execute("SELECT version FROM ofisync.schema_version").fetchone()
    return None if row is None else str(row[0])


def ddl(name: str) -> bytes:
    return resources.files("streams.db").joinpath(name).read_bytes()
