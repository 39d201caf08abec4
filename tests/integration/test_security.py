"""Least privilege and secrets on the real stack: the sync's roles are no superusers and reach
only what they need; passwords and the CRM login appear in no log, output, page or metric;
every port listens on 127.0.0.1."""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path

import psycopg
import pytest

from streams.secrets import Role, login_dsn, password, role_name
from streams.stack.orchestrate import Stack
from tests.integration.helpers import eventually, ofisync, one, tag


def test_the_sync_roles_are_no_superusers_and_each_does_one_job(
    stack: Stack, erp: str, crm: str
) -> None:
    s = stack.settings
    # Traffic both ways, so the worker holds a connection to each database.
    client = one(
        erp, "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (f"Roles {tag()}",),
    )  # fmt: skip
    eventually(
        lambda: one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client,)), 15, "linked"
    )
    for db in s.databases:
        roles = {
            r[0]: r[1:]
            for r in psycopg.connect(db.dsn, autocommit=True).execute(
                "SELECT rolname, rolsuper, rolreplication, rolcreaterole, rolcreatedb"
                " FROM pg_roles WHERE rolname = ANY(%s)",
                ([role_name(s, Role.SINK), role_name(s, Role.CAPTURE)],),
            )
        }
        assert roles[role_name(s, Role.SINK)] == (False, False, False, False)
        assert roles[role_name(s, Role.CAPTURE)] == (False, True, False, False)
        # Who is connected as whom: the worker as the sink role, Debezium as the capture role.
        wanted = {
            "ofisync-sink": role_name(s, Role.SINK),
            "Debezium Streaming": role_name(s, Role.CAPTURE),
        }
        dsn = db.dsn
        eventually(lambda: _logins(dsn) == wanted, 60, f"who connects to {db.title}")  # noqa: B023


def _logins(dsn: str) -> dict[str, str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT DISTINCT application_name, usename FROM pg_stat_activity"
            " WHERE application_name IN ('ofisync-sink', 'Debezium Streaming')"
        ).fetchall()
    return {r[0]: r[1] for r in rows}


def test_the_sink_cannot_read_the_crm_password_nor_change_the_mapping(
    stack: Stack, crm: str
) -> None:
    with psycopg.connect(login_dsn(stack.settings, stack.settings.erp, Role.SINK)) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT clave FROM config_crm")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE vendedores SET crm_usuario = 'x'")
    name = f"Legible {tag()}"
    account = one(crm, "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (name,))
    with psycopg.connect(login_dsn(stack.settings, stack.settings.crm, Role.CAPTURE)) as conn:
        # Capture reads the synced tables (Debezium's snapshot does) and writes none of them.
        assert conn.execute("SELECT name FROM accounts WHERE id = %s", (account,)).fetchone() == (
            name,
        )
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE accounts SET name = name")


def test_no_password_nor_the_crm_login_shows_anywhere(stack: Stack, erp: str, crm: str) -> None:
    s = stack.settings
    crm_login = f"clave-{tag()}-{tag()}"
    one(
        erp,
        "INSERT INTO config_crm (id, usuario, clave) VALUES (true, 'agencia', %s)"
        " ON CONFLICT (id) DO UPDATE SET clave = excluded.clave",
        (crm_login,),
    )
    # Some traffic, so logs and figures have something to say.
    client = one(
        erp, "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (f"Secreta {tag()}",),
    )  # fmt: skip
    eventually(
        lambda: one(crm, "SELECT count(*) FROM accounts WHERE erp_id = %s", (client,)) == 1,
        15,
        "client synced",
    )
    secrets = [crm_login] + [
        password(s, db.side, role) for db in s.databases for role in (Role.SINK, Role.CAPTURE)
    ]
    seen: dict[str, str] = {}
    for command in (("status", "--json"), ("lag", "--json"), ("doctor", "--json"),
                    ("verify", "--json"), ("dlq", "list", "--json")):  # fmt: skip
        done = ofisync(*command, check=False)
        seen[" ".join(command)] = done.stdout + done.stderr
    for path in ("/metrics", "/health", "/mapping", "/dashboard/api/state",
                 "/dashboard/api/attention"):  # fmt: skip
        with urllib.request.urlopen(f"http://{s.web}{path}", timeout=10) as r:
            seen[path] = r.read().decode()
    for side in ("erp", "crm"):
        url = f"{s.connect_url}/connectors/{s.connector_name(side)}/config"
        with urllib.request.urlopen(url, timeout=10) as r:
            config = json.load(r)
        assert config["database.password"].startswith("${env:"), "Connect holds no password"
        seen[url] = json.dumps(config)
    for log in Path(s.logs).glob("*.log"):
        seen[str(log)] = log.read_text(errors="replace")
    leaks = [(where, i) for where, text in seen.items() for i, x in enumerate(secrets) if x in text]
    assert not leaks


def test_the_password_files_are_readable_by_their_owner_only(stack: Stack) -> None:
    files = list((stack.settings.home / "secrets").glob("*.password"))
    assert len(files) == 4
    assert all(f.stat().st_mode & 0o077 == 0 for f in files)


def _listening(pid: int) -> set[str]:
    """host:port of every TCP socket process `pid` listens on (IPv4 and IPv6)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                found.add(f"{_address(address)}:{int(port, 16)}")
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in reversed(raw))
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    joined = b"".join(words)
    if joined[:12] == b"\x00" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in joined[12:])
    return joined.hex()


def test_every_port_listens_on_loopback_only(stack: Stack) -> None:
    pids = [
        pid
        for pid in (
            stack.erp.pid(),
            stack.crm.pid(),
            stack.kafka.pid(),
            stack.connect.pid(),
            stack.worker.pid(),
        )
        if pid is not None
    ]
    assert len(pids) == 5
    listening = {address for pid in pids for address in _listening(pid)}
    assert listening, "the stack listens somewhere"
    assert all(a.startswith("127.0.0.1:") for a in listening), listening
