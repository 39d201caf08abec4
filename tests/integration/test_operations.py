"""Operations on the real stack: an outage lived through, a database restored from a dump and
replayed, a poisoned change fixed and retried, doctor and verify telling the truth."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from streams.core.topics import Topics
from streams.ops.dlq import WaitingCount, read_all
from streams.settings import Settings
from streams.stack.orchestrate import Stack
from tests.integration.helpers import (
    crm_id_of,
    eventually,
    new_erp_client,
    ofisync,
    one,
    pg_client_tools,
    settled,
    tag,
    web_json,
    worker_lag,
)

SYNC_WINDOW = 15.0


def state(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = web_json(settings, "/dashboard/api/state")
    return data


def lag_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ofisync("lag", "--json").stdout)
    return data


def verify_clean() -> bool:
    done = ofisync("verify", "--json", check=False)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode == 0 and json.loads(done.stdout)["clean"]


def caught_up(settings: Settings) -> None:
    settled(settings, Topics(settings.tenant).all())
    eventually(lambda: worker_lag(settings) == 0, 120, "worker caught up")


def new_client(erp: str, name: str) -> tuple[int, int]:
    client = new_erp_client(erp, name)
    return client, crm_id_of(erp, client, SYNC_WINDOW)


def test_an_outage_of_the_crm_grows_lag_then_drains_to_a_clean_verify(
    stack: Stack, erp: str, crm: str
) -> None:
    client, account = new_client(erp, f"Apagón {tag()}")
    caught_up(stack.settings)
    stack.crm.stop()
    try:
        for i in range(20):
            one(
                erp,
                "UPDATE clientes SET telefono = %s WHERE id = %s",
                (f"+34 91 000 {i:04d}", client),
            )
        clientes = f"{stack.settings.tenant}.erp.public.clientes"
        eventually(
            lambda: (
                sum(p["lag"] or 0 for p in lag_json()["partitions"] if p["topic"] == clientes) > 0
            ),
            SYNC_WINDOW,
            "`ofisync lag` shows OfiViaje's changes waiting for the CRM",
        )
        seen = eventually(
            lambda: (
                (s := state(stack.settings))["total_lag"] > 0 and not s["health"]["crm_db"] and s
            ),
            30,
            "the dashboard shows the lag and the CRM down",
        )
        assert "crm_db is down" in seen["problems"]
        assert ofisync("verify", check=False).returncode == 2  # it says the CRM does not answer
    finally:
        ofisync("up")
    eventually(lambda: worker_lag(stack.settings) == 0, 120, "lag back to 0")
    eventually(
        lambda: (
            one(crm, "SELECT phone FROM accounts WHERE id = %s", (account,)) == "+34 91 000 0019"
        ),
        SYNC_WINDOW,
        "the last edit arrived",
    )
    caught_up(stack.settings)
    assert verify_clean(), ofisync("verify", check=False).stdout


def _pg_tool(stack: Stack, tool: str) -> str:
    return str(pg_client_tools(stack.settings) / tool)


CRM_TABLES = (
    "public.agencies", "public.users", "public.accounts", "public.files", "public.segments",
    "public.documents", "ofisync.conflicts", "ofisync.lock_violations", "ofisync.parked",
)  # fmt: skip


def test_a_crm_restored_from_an_earlier_dump_is_repaired_by_a_replay(
    stack: Stack, erp: str, crm: str, tmp_path: Path
) -> None:
    erp_side, erp_account = new_client(erp, f"Restaurada ERP {tag()}")
    crm_side, crm_account = new_client(erp, f"Restaurada CRM {tag()}")
    caught_up(stack.settings)
    since = dt.datetime.now(dt.UTC).isoformat()
    dump = tmp_path / "oficrm.sql"
    params = stack.settings.crm.params
    subprocess.run(
        [_pg_tool(stack, "pg_dump"), "--data-only", "--no-owner", "-h", params["host"], "-p",
         params["port"], "-U", params.get("user", "postgres"), "-d", stack.settings.crm.dbname,
         *(f"--table={t}" for t in CRM_TABLES), "-f", str(dump)],
        check=True, capture_output=True,
    )  # fmt: skip
    # Minutes of work the dump does not have: an edit on each side.
    one(erp, "UPDATE clientes SET email = 'nuevo@erp.example' WHERE id = %s", (erp_side,))
    one(crm, "UPDATE accounts SET city = 'Teruel' WHERE id = %s", (crm_account,))
    eventually(
        lambda: (
            one(crm, "SELECT email FROM accounts WHERE id = %s", (erp_account,))
            == "nuevo@erp.example"
            and one(erp, "SELECT poblacion FROM clientes WHERE id = %s", (crm_side,)) == "Teruel"
        ),
        SYNC_WINDOW,
        "both edits synced",
    )
    caught_up(stack.settings)
    # The CRM is restored from the dump, as the runbook says: marked, so nothing echoes.
    restore = tmp_path / "restore.sql"
    restore.write_text(
        "SET ofisync.origin = 'restore';\nBEGIN;\n"
        f"TRUNCATE {', '.join(CRM_TABLES)} CASCADE;\n"
        f"\\i {dump}\nCOMMIT;\n"
    )
    subprocess.run(
        [_pg_tool(stack, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", params["host"],
         "-p", params["port"], "-U", params.get("user", "postgres"), "-d",
         stack.settings.crm.dbname, "-f", str(restore)],
        check=True, capture_output=True,
    )  # fmt: skip
    assert one(crm, "SELECT email FROM accounts WHERE id = %s", (erp_account,)) != (
        "nuevo@erp.example"
    )
    caught_up(stack.settings)
    assert not verify_clean(), "the restore lost changes: verify must see them"
    # Both sides since the backup: OfiViaje's changes, and the CRM's own edits it lost.
    done = ofisync("replay", "--since", since)
    assert "commands sent" in done.stdout
    caught_up(stack.settings)
    assert one(crm, "SELECT email FROM accounts WHERE id = %s", (erp_account,)) == (
        "nuevo@erp.example"
    )
    assert one(crm, "SELECT city FROM accounts WHERE id = %s", (crm_account,)) == "Teruel"
    assert verify_clean(), ofisync("verify", check=False).stdout


@pytest.fixture
def crm_refusing(crm: str) -> Iterator[tuple[str, str]]:
    name, constraint = f"VETADA {tag()}", f"veto_{tag()}"
    with psycopg.connect(crm, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE accounts ADD CONSTRAINT {} CHECK (name <> {}) NOT VALID").format(
                sql.Identifier(constraint), sql.Literal(name)
            )
        )
    yield name, constraint
    one(crm, f"ALTER TABLE accounts DROP CONSTRAINT IF EXISTS {constraint}")


def test_a_poisoned_change_goes_to_dead_letters_is_fixed_and_retried(
    stack: Stack, erp: str, crm: str, crm_refusing: tuple[str, str]
) -> None:
    name, constraint = crm_refusing
    client = one(
        erp,
        "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (name,),
    )

    def letter() -> dict[str, Any] | None:
        listed = json.loads(ofisync("dlq", "list", "--json").stdout)
        return next((d for d in listed if constraint in d["reason"] and not d["retried"]), None)

    # The dashboard's count, read incrementally, agrees with a read of the whole topic.
    waiting = WaitingCount(stack.settings)
    waiting.count()  # what is there now: the letter and its retry are read as they come

    def counted_alike() -> bool:
        return waiting.count() == sum(not d.retried for d in read_all(stack.settings))

    found = eventually(letter, 30, "the refused change is a dead letter", every=1.0)
    assert "CheckViolation" in found["reason"] and found["stage"] == "apply"
    eventually(counted_alike, SYNC_WINDOW, "the waiting dead letters counted alike", every=0.5)
    shown = json.loads(ofisync("dlq", "show", found["id"]).stdout)
    assert shown["original"]["source_key"] == str(client)
    one(crm, f"ALTER TABLE accounts DROP CONSTRAINT {constraint}")  # the cause, fixed
    ofisync("dlq", "retry", found["id"])
    eventually(
        lambda: one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client,)),
        SYNC_WINDOW,
        "the retried change applied and linked the client",
    )
    listed = json.loads(ofisync("dlq", "list", "--json").stdout)
    assert [d["retried"] for d in listed if d["id"] == found["id"]] == [True]
    eventually(counted_alike, SYNC_WINDOW, "the retried letter counted alike", every=0.5)
    waiting.close()


def test_doctor_finds_an_unmapped_crm_user_and_says_what_to_do(stack: Stack, crm: str) -> None:
    username = f"sin-vendedor-{tag()}"
    one(crm, "INSERT INTO users (username) VALUES (%s)", (username,))
    done = ofisync("doctor", "--json", check=False)
    assert done.returncode == 1
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert username in checks["CRM users mapped"]["detail"]
    assert "vendedores.crm_usuario" in checks["CRM users mapped"]["fix"]
    assert all(c["ok"] for c in json.loads(done.stdout)["checks"] if c["area"] != "mapping")
