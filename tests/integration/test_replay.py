"""Replay over a real history (issue 27): a backlog drained after the worker was killed, edits on
both sides, a conflict, a lock restored, files with segments; then replays of each source and of
both over several windows. Over data in sync a replay changes nothing: no value, no count, no
conflict recorded, and `verify` stays clean."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
from functools import partial
from typing import Any

import psycopg
from psycopg.rows import dict_row

from streams.stack.orchestrate import Stack
from tests.integration.helpers import (
    crm_id_of,
    eventually,
    new_erp_client,
    ofisync,
    one,
    query,
    tag,
    worker_lag,
)

SYNC_WINDOW = 20.0

CLIENTS = 20
BACKLOG = 3000  # phone updates written while the worker is down

TABLES = {
    "erp": ("clientes", "expedientes", "billetes"),
    "crm": ("accounts", "files", "segments"),
}
RECORDS = {  # what the sync keeps of its own: all of it must stay as it is
    "erp": ("ofisync.conflicts", "ofisync.lock_violations", "ofisync.parked"),
    "crm": ("ofisync.conflicts", "ofisync.lock_violations", "ofisync.parked"),
}


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


# A change that waits for a person is tried again on its back-off, replay or not.
RETRY_COLUMNS = ("attempts", "next_attempt_at")


def everything(erp: str, crm: str) -> dict[str, list[dict[str, Any]]]:
    found = {}
    for side, dsn in (("erp", erp), ("crm", crm)):
        with psycopg.connect(dsn, row_factory=dict_row) as conn:
            for table in (*TABLES[side], *RECORDS[side]):
                rows = conn.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
                found[f"{side}:{table}"] = [
                    {c: v for c, v in row.items() if c not in RETRY_COLUMNS} for row in rows
                ]
    return found


def _changes(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[Any]:
    """The first rows that differ, by id: the columns that changed, or the rows that came or
    went."""
    was, now = {r["id"]: r for r in before}, {r["id"]: r for r in after}
    found: list[Any] = []
    for i in sorted(was.keys() | now.keys()):
        old, new = was.get(i), now.get(i)
        if old is None or new is None:
            found.append((i, old, new))
        elif old != new:
            found.append((i, {c: (old[c], new[c]) for c in old if old[c] != new[c]}))
    return found[:3]


def verify_clean() -> tuple[bool, str]:
    done = ofisync("verify", "--json", check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0 and json.loads(done.stdout)["clean"], done.stdout[-3000:]


def wait_verify_clean(what: str) -> None:
    last = ""

    def probe() -> bool:
        nonlocal last
        clean, last = verify_clean()
        return clean

    try:
        eventually(probe, SYNC_WINDOW, what, every=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{last}") from None


def caught_up(stack: Stack) -> None:
    eventually(lambda: worker_lag(stack.settings) == 0, 180, "worker caught up", every=0.5)


_BACKLOG = """
import sys, psycopg
dsn, ids, n = sys.argv[1], [int(x) for x in sys.argv[2].split(",")], int(sys.argv[3])
with psycopg.connect(dsn, autocommit=True) as conn:
    for i in range(n):
        c = ids[i % len(ids)]
        conn.execute("UPDATE clientes SET telefono = %s WHERE id = %s", (f"b{i}", c))
"""


def _crm_file_with_segments(crm: str, account: int, segments: int) -> int:
    with psycopg.connect(crm) as conn:
        file_id = conn.execute(
            "INSERT INTO files (file_number, account_id, title, destination, travellers)"
            " VALUES (%s, %s, 'Ruta', 'Roma', 2) RETURNING id",
            (f"R-{tag()}", account),
        ).fetchone()
        assert file_id is not None
        for i in range(segments):
            conn.execute(
                "INSERT INTO segments (file_id, kind, origin, destination, fare)"
                " VALUES (%s, 'flight', 'MAD', %s, %s)",
                (file_id[0], f"D{i}", f"{100 + i}.50"),
            )
    return int(file_id[0])


def _hold(dsn: str, statement: str, params: Any, held: threading.Event) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(statement, params)
        held.set()
        conn.execute("SELECT pg_sleep(2)")
        conn.commit()


def test_replaying_any_window_of_either_source_or_both_over_data_in_sync_changes_nothing(
    stack: Stack, erp: str, crm: str
) -> None:
    started = now()
    clients = [new_erp_client(erp, f"hist {tag()}", telefono="0") for _ in range(CLIENTS)]
    accounts = [crm_id_of(erp, c, SYNC_WINDOW) for c in clients]
    crm_files = [_crm_file_with_segments(crm, a, 3) for a in accounts[:4]]
    erp_files = [
        one(
            erp,
            "INSERT INTO expedientes (numero, cliente_id, descripcion) VALUES (%s, %s, 'propio')"
            " RETURNING id",
            (f"H-{tag()}", c),
        )
        for c in clients[4:8]
    ]
    for f in crm_files:
        eventually(
            partial(one, crm, "SELECT erp_id FROM files WHERE id = %s", (f,)),
            SYNC_WINDOW,
            f"CRM file {f} linked",
        )
    for f in erp_files:
        eventually(
            partial(one, erp, "SELECT crm_id FROM expedientes WHERE id = %s", (f,)),
            SYNC_WINDOW,
            f"OfiViaje file {f} linked",
        )

    # A backlog drained after the worker was killed.
    pid = stack.worker.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    writer = subprocess.Popen(
        [sys.executable, "-c", _BACKLOG, erp, ",".join(map(str, clients)), str(BACKLOG)]
    )
    try:
        eventually(
            lambda: one(
                erp, "SELECT count(*) FROM clientes WHERE id = ANY(%s) AND telefono <> '0'",
                (clients,),
            ) == CLIENTS,
            60,
            "backlog under way",
        )  # fmt: skip
        mid_backlog = now()
        assert writer.wait(timeout=300) == 0
    finally:
        writer.kill()
    stack.worker.start()
    caught_up(stack)

    # Edits on both sides: different fields, the same field at once (a conflict), a lock.
    query(crm, "UPDATE accounts SET city = 'Soria' WHERE id = %s", (accounts[0],))
    query(erp, "UPDATE clientes SET email = 'h@erp.es' WHERE id = %s", (clients[1],))
    held = threading.Event()
    holder = threading.Thread(
        target=_hold,
        args=(crm, "UPDATE accounts SET notes = 'crm' WHERE id = %s", (accounts[2],), held),
    )
    holder.start()
    assert held.wait(10)
    query(erp, "UPDATE clientes SET observaciones = 'erp' WHERE id = %s", (clients[2],))
    holder.join(30)
    query(crm, "UPDATE files SET title = 'not yours' WHERE erp_id = %s", (erp_files[0],))
    query(crm, "UPDATE segments SET fare = 9.99 WHERE file_id = %s", (crm_files[0],))
    last_minute = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=60)).isoformat()
    eventually(
        lambda: one(crm, "SELECT title FROM files WHERE erp_id = %s", (erp_files[0],)) == "propio",
        SYNC_WINDOW,
        "the locked title restored",
    )
    caught_up(stack)
    wait_verify_clean("verify clean before any replay")
    before = everything(erp, crm)

    for since in (started, mid_backlog, last_minute):
        for source in ("erp", "crm"):
            done = ofisync("replay", "--source", source, "--since", since)
            assert "commands sent" in done.stdout, done.stdout
            caught_up(stack)
            clean, report = verify_clean()
            assert clean, f"replay of {source} since {since}: {report}"
            after = everything(erp, crm)
            changed = {k: _changes(before[k], after[k]) for k in before if before[k] != after[k]}
            assert not changed, f"replay of {source} since {since} changed {changed}"
