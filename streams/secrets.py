"""Secrets (settings): the passwords of the sync's own database roles.

Two roles per database, neither a superuser: `<tenant>_sink` (the worker: reads and writes the
synced tables and the sync's own schema, nothing else) and `<tenant>_capture` (Debezium: a
replication role that reads the published tables). Their passwords come from the environment
(`OFISYNC_<SIDE>_<ROLE>_PASSWORD`), or a file named by `OFISYNC_<SIDE>_<ROLE>_PASSWORD_FILE`, or
a file `up` generates in `OFISYNC_HOME/secrets/`; a file must be readable by its owner only.
Passwords reach PostgreSQL as SCRAM verifiers, so not even its logs can hold one, and they
appear in no `repr`, log line or status output.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import stat
from enum import StrEnum
from pathlib import Path

from psycopg.conninfo import make_conninfo

from streams.settings import Database, Settings, SettingsError

SCRAM_ITERATIONS = 4096


class Role(StrEnum):
    SINK = "sink"
    CAPTURE = "capture"


def role_name(settings: Settings, role: Role) -> str:
    return f"{settings.tenant}_{role.value}"


def password(settings: Settings, side: str, role: Role, create: bool = False) -> str:
    """The password of one role on one side; `create` makes the generated file if missing."""
    variable = f"OFISYNC_{side.upper()}_{role.value.upper()}_PASSWORD"
    if os.environ.get(variable):
        return os.environ[variable]
    named = os.environ.get(f"{variable}_FILE")
    path = Path(named) if named else settings.home / "secrets" / f"{side}-{role.value}.password"
    if not path.exists():
        if named or not create:
            raise SettingsError(
                f"no password for the {side} {role.value} role: {path} does not exist;"
                f" set {variable} or {variable}_FILE, or run `ofisync up` to generate it"
            )
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(24) + "\n")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SettingsError(
            f"{path} can be read by others; `chmod 600 {path}` (it holds a password)"
        )
    value = path.read_text().strip()
    if not value:
        raise SettingsError(f"{path} is empty; put the {side} {role.value} password in it")
    return value


def login_dsn(settings: Settings, db: Database, role: Role) -> str:
    """`db`'s DSN logging in as one of the sync's roles (never printed: use db.safe_dsn)."""
    return make_conninfo(
        db.dsn, user=role_name(settings, role), password=password(settings, db.side, role)
    )


def scram_verifier(plain: str, salt: bytes | None = None) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of a password (RFC 5802/7677), computed here so the
    password itself is never sent to the server."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", plain.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
