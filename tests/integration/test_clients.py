"""Clients in sync both ways, on the real stack: opt-in and the unique id, exact values,
no echoes, conflicts that converge, dead letters, deletes, a killed worker, a full replay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from typing import Any

import psycopg
import pytest
from kafka import KafkaAdminClient
from kafka.admin import OffsetSpec

from streams.core.contract import CLIENT
from streams.core.model import Side
from streams.core.topics import Topics
from streams.stack.orchestrate import Stack
from tests.integration.helpers import (
    TopicTail,
    crm_id_of,
    eventually,
    metric,
    new_erp_client,
    ofisync,
    one,
    query,
    settled,
    tag,
    worker_lag,
)

SYNC_WINDOW = 10.0  # generous deadline for "within 2 s at light load" on a loaded CI box

ERP_COLUMNS = [f.erp for f in CLIENT.fields]
CRM_COLUMNS = [f.crm for f in CLIENT.fields]


def erp_row(erp: str, client_id: int) -> tuple[Any, ...]:
    return tuple(
        query(erp, f"SELECT {', '.join(ERP_COLUMNS)} FROM clientes WHERE id = %s", (client_id,))[0]
    )


def crm_row(crm: str, account_id: int) -> tuple[Any, ...]:
    return tuple(
        query(crm, f"SELECT {', '.join(CRM_COLUMNS)} FROM accounts WHERE id = %s", (account_id,))[0]
    )


def in_sync(erp: str, crm: str, client_id: int, account_id: int) -> bool:
    return erp_row(erp, client_id) == crm_row(crm, account_id)


def test_a_checked_client_goes_up_and_gets_its_unique_id(erp: str, crm: str) -> None:
    name = f"Viajes Peña {tag()}"
    client = new_erp_client(
        erp, name, nif="12345678Z", poblacion="Logroño", telefono="+34 941 000 000"
    )
    account = crm_id_of(erp, client)
    assert one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (account,)) == client
    assert in_sync(erp, crm, client, account)


def test_an_unchecked_client_stays_until_checked_and_unchecking_deletes_nothing(
    erp: str, crm: str
) -> None:
    name = f"Local {tag()}"
    client = new_erp_client(erp, name, sync=False)
    query(erp, "UPDATE clientes SET sincronizar_crm = true WHERE id = %s", (client,))
    account = crm_id_of(erp, client)
    assert one(crm, "SELECT count(*) FROM accounts WHERE name = %s", (name,)) == 1

    query(erp, "UPDATE clientes SET sincronizar_crm = false WHERE id = %s", (client,))
    query(erp, "UPDATE clientes SET email = 'private@example.es' WHERE id = %s", (client,))
    # A later, synced client proves the pipeline has moved past the unchecked edits.
    witness = new_erp_client(erp, f"witness {tag()}")
    crm_id_of(erp, witness)
    assert one(crm, "SELECT email FROM accounts WHERE id = %s", (account,)) is None
    assert one(crm, "SELECT count(*) FROM accounts WHERE id = %s", (account,)) == 1


def test_never_checked_client_never_goes_up(erp: str, crm: str) -> None:
    name = f"Never {tag()}"
    new_erp_client(erp, name, sync=False)
    witness = new_erp_client(erp, f"witness {tag()}")
    crm_id_of(erp, witness)
    assert one(crm, "SELECT count(*) FROM accounts WHERE name = %s", (name,)) == 0


def test_a_crm_account_comes_down_checked_and_linked(erp: str, crm: str) -> None:
    name = f"Cuenta CRM {tag()}"
    account = one(
        crm,
        "INSERT INTO accounts (name, city, notes) VALUES (%s, 'Cádiz', '') RETURNING id",
        (name,),
    )
    client = eventually(
        lambda: one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (account,)),
        SYNC_WINDOW,
        "erp_id on the CRM account",
    )
    assert query(erp, "SELECT sincronizar_crm, crm_id FROM clientes WHERE id = %s", (client,))[
        0
    ] == (True, account)
    assert in_sync(erp, crm, client, account)


def test_values_cross_exactly_both_ways(erp: str, crm: str) -> None:
    client = new_erp_client(erp, f"Exact {tag()}")
    account = crm_id_of(erp, client)
    hostile = {
        "nombre": 'Ñandú «Viajes» O\'Brien "quoted" 🧳✈️',
        "observaciones": "línea 1\nlínea 2\ttab — ‮RTL‬ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " + "x" * 2000,
        "email": "",
        "telefono": None,
    }
    sets = ", ".join(f"{k} = %s" for k in hostile)
    query(erp, f"UPDATE clientes SET {sets} WHERE id = %s", [*hostile.values(), client])
    eventually(lambda: in_sync(erp, crm, client, account), SYNC_WINDOW, "ERP → CRM exact")
    assert one(crm, "SELECT email FROM accounts WHERE id = %s", (account,)) == ""
    assert one(crm, "SELECT phone FROM accounts WHERE id = %s", (account,)) is None

    query(
        crm,
        "UPDATE accounts SET contact_name = %s, mobile = '' WHERE id = %s",
        ("José Ángel Muñoz-Güell 👩‍✈️", account),
    )
    eventually(lambda: in_sync(erp, crm, client, account), SYNC_WINDOW, "CRM → ERP exact")


def test_one_edit_is_one_message_and_the_sync_s_own_write_is_never_sent(
    stack: Stack, erp: str, crm: str
) -> None:
    """One hop, no echoes: the edit is captured once, applied straight to the CRM, and the CRM
    write (marked with a replication origin) never leaves PostgreSQL 18."""
    client = new_erp_client(erp, f"Echo {tag()}")
    account = crm_id_of(erp, client)
    topics = Topics(stack.settings.tenant).all()
    quiet = settled(stack.settings, topics)
    echoes = metric(stack.settings, "ofisync_echoes_suppressed_total", source="crm")

    def busy_now() -> float:
        return metric(stack.settings, "ofisync_apply_busy_seconds_total", target="crm")

    busy = busy_now()
    query(erp, "UPDATE clientes SET movil = '+34 600 000 001' WHERE id = %s", (client,))
    eventually(lambda: in_sync(erp, crm, client, account), SYNC_WINDOW, "edit applied")
    # The batch's time counts as the CRM sink's busy time: a span of time, not a count.
    eventually(lambda: busy_now() > busy, SYNC_WINDOW, "the batch counted as busy time")
    assert busy_now() - busy < 5
    after = settled(stack.settings, topics)
    produced = {
        tp.topic: after[tp] - quiet.get(tp, 0) for tp in after if after[tp] != quiet.get(tp, 0)
    }
    assert produced == {f"{stack.settings.tenant}.erp.public.clientes": 1}, produced
    assert metric(stack.settings, "ofisync_echoes_suppressed_total", source="crm") == echoes
    eventually(lambda: worker_lag(stack.settings) == 0, SYNC_WINDOW, "every message committed")


def test_same_field_on_both_sides_converges_and_is_recorded(erp: str, crm: str) -> None:
    client = new_erp_client(erp, f"Conflict {tag()}")
    account = crm_id_of(erp, client)
    # Both edits are in flight at once: the CRM transaction holds its row while the ERP one
    # commits, so the sync meets a CRM value that is neither the before- nor the after-image.
    with psycopg.connect(crm) as crm_tx, psycopg.connect(erp) as erp_tx:
        crm_tx.execute("UPDATE accounts SET phone = 'crm-later' WHERE id = %s", (account,))
        erp_tx.execute("UPDATE clientes SET telefono = 'erp-first' WHERE id = %s", (client,))
        erp_tx.commit()
        crm_tx.commit()
    eventually(lambda: in_sync(erp, crm, client, account), SYNC_WINDOW, "convergence")
    assert one(erp, "SELECT telefono FROM clientes WHERE id = %s", (client,)) == "crm-later"
    assert recorded_conflicts(crm, account, "phone") == [("erp-first", "crm-later", "local")]
    assert recorded_conflicts(erp, client, "telefono") == [("crm-later", "erp-first", "incoming")]


def recorded_conflicts(dsn: str, target_key: int, field: str) -> list[tuple[Any, ...]]:
    """The conflicts one side recorded for a field of one record, once there are any."""
    return eventually(
        lambda: query(
            dsn,
            "SELECT incoming_value, local_value, winner FROM ofisync.conflicts"
            " WHERE target_key = %s AND field = %s",
            (str(target_key), field),
        ),
        SYNC_WINDOW,
        f"conflict on {field} of {target_key} recorded",
    )


def test_different_fields_edited_on_both_sides_merge(erp: str, crm: str) -> None:
    client = new_erp_client(erp, f"Merge {tag()}")
    account = crm_id_of(erp, client)
    query(erp, "UPDATE clientes SET email = 'erp@merge.es' WHERE id = %s", (client,))
    query(crm, "UPDATE accounts SET city = 'Huelva' WHERE id = %s", (account,))
    eventually(lambda: in_sync(erp, crm, client, account), SYNC_WINDOW, "merge")
    assert erp_row(erp, client)[ERP_COLUMNS.index("email")] == "erp@merge.es"
    assert erp_row(erp, client)[ERP_COLUMNS.index("poblacion")] == "Huelva"


def _max_len(dsn: str, table: str, column: str) -> int:
    return int(
        one(
            dsn,
            "SELECT character_maximum_length FROM information_schema.columns"
            " WHERE table_name = %s AND column_name = %s",
            (table, column),
        )
    )


def test_a_value_the_target_cannot_hold_goes_to_dead_letters_and_the_line_goes_on(
    stack: Stack, erp: str, crm: str
) -> None:
    # The CRM's postal code is longer than OfiViaje's: a long one cannot come down.
    erp_limit = _max_len(erp, "clientes", "codigo_postal")
    assert _max_len(crm, "accounts", "postal_code") > erp_limit
    client = new_erp_client(erp, f"Long {tag()}")
    account = crm_id_of(erp, client)
    tail = TopicTail(stack.settings, Topics(stack.settings.tenant).dead_letters)
    try:
        query(
            crm,
            "UPDATE accounts SET postal_code = %s WHERE id = %s",
            ("9" * (erp_limit + 1), account),
        )

        def dead() -> dict[str, bytes] | None:
            for record in tail.poll():
                headers = dict(record.headers)
                if b"codigo_postal holds" in headers.get("ofisync-reason", b""):
                    return headers
            return None

        headers = eventually(dead, SYNC_WINDOW, "dead letter with its reason")
    finally:
        tail.close()
    assert headers["ofisync-stage"] == b"apply"
    # One hop: the letter names the captured change it came from.
    assert headers["ofisync-topic"] == f"{stack.settings.tenant}.crm.public.accounts".encode()
    assert headers["ofisync-reason"].endswith(b"shorten it at the source")
    query(
        crm,
        "UPDATE accounts SET postal_code = '28001', email = 'after@dlq.es' WHERE id = %s",
        (account,),
    )
    eventually(lambda: in_sync(erp, crm, client, account), SYNC_WINDOW, "line goes on")


def test_a_delete_unlinks_and_flags_the_other_side(erp: str, crm: str) -> None:
    client = new_erp_client(erp, f"Delete {tag()}")
    account = crm_id_of(erp, client)
    query(erp, "DELETE FROM clientes WHERE id = %s", (client,))
    eventually(
        lambda: one(
            crm,
            "SELECT ofisync_deleted_at IS NOT NULL AND erp_id IS NULL FROM accounts WHERE id = %s",
            (account,),
        ),
        SYNC_WINDOW,
        "CRM account unlinked and flagged",
    )

    other = one(crm, "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (f"Del {tag()}",))
    mirror = eventually(
        lambda: one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (other,)),
        SYNC_WINDOW,
        "account linked",
    )
    query(crm, "DELETE FROM accounts WHERE id = %s", (other,))
    eventually(
        lambda: one(
            erp,
            "SELECT ofisync_deleted_at IS NOT NULL AND crm_id IS NULL FROM clientes WHERE id = %s",
            (mirror,),
        ),
        SYNC_WINDOW,
        "ERP client unlinked and flagged",
    )


@pytest.mark.parametrize("stop", ["SIGKILL", "SIGTERM"])
def test_a_worker_stopped_mid_burst_converges_without_loss_or_duplicate(
    stack: Stack, erp: str, crm: str, stop: str
) -> None:
    names = [f"Burst {tag()}" for _ in range(10)]
    clients = [new_erp_client(erp, n) for n in names]
    accounts = [crm_id_of(erp, c) for c in clients]
    writer = subprocess.Popen(
        [sys.executable, "-c", _BURST, erp, ",".join(map(str, clients))], env=dict(os.environ)
    )
    try:
        eventually(
            lambda: one(
                crm,
                "SELECT count(*) FROM accounts WHERE id = ANY(%s) AND notes LIKE 'burst %%'",
                (accounts,),
            ),
            60,
            "burst under way",
        )
        pid = stack.worker.pid()
        assert pid is not None
        if stop == "SIGKILL":
            os.kill(pid, signal.SIGKILL)
        else:
            stack.worker.stop()  # SIGTERM: drains the batch in flight, commits nothing unapplied
        assert writer.wait(timeout=120) == 0
    finally:
        writer.kill()
    stack.worker.start()
    for c, a in zip(clients, accounts, strict=True):
        eventually(partial(in_sync, erp, crm, c, a), 120, f"client {c} converged")
        assert one(crm, "SELECT notes FROM accounts WHERE id = %s", (a,)) == "burst 99"
    for n in names:
        assert one(crm, "SELECT count(*) FROM accounts WHERE name = %s", (n,)) == 1
        assert one(erp, "SELECT count(*) FROM clientes WHERE nombre = %s", (n,)) == 1


_BURST = """
import sys, psycopg
dsn, ids = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
with psycopg.connect(dsn, autocommit=True) as conn:
    for i in range(100):
        for c in ids:
            conn.execute("UPDATE clientes SET observaciones = %s WHERE id = %s", (f"burst {i}", c))
"""


SYNC_RECORDS = ("ofisync.conflicts", "ofisync.lock_violations", "ofisync.parked")
REPLAYED_TABLES = {
    Side.ERP: ("clientes", "expedientes", "billetes", *SYNC_RECORDS),
    Side.CRM: ("accounts", "files", "segments", *SYNC_RECORDS),
}


# A change that waits (for a person, say) is tried again on its back-off, rewind or not.
PARKED_COLUMNS = "id, source, entity, source_key, lsn, parent_entity, parent_key, command"


def _everything(erp: str, crm: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every synced table (and the sync's records) of both sides."""
    return {
        f"{side.value}:{table}": query(
            dsn,
            f"SELECT {PARKED_COLUMNS if table == 'ofisync.parked' else '*'} FROM {table}"
            " ORDER BY id",
        )
        for side, dsn in ((Side.ERP, erp), (Side.CRM, crm))
        for table in REPLAYED_TABLES[side]
    }


def test_rewinding_the_worker_to_the_beginning_changes_nothing(
    stack: Stack, erp: str, crm: str
) -> None:
    """Reads both sources again from the first captured change (clients, files, segments, lock
    restores, PNR captures of every other test): every change is at or below its row's position,
    and not a row changes, not even what the sync keeps in it."""
    client = new_erp_client(erp, f"Replay {tag()}")
    crm_id_of(erp, client)
    settled(stack.settings, Topics(stack.settings.tenant).all())
    eventually(lambda: worker_lag(stack.settings) == 0, 120, "worker caught up")
    before = _everything(erp, crm)
    stack.worker.stop()
    _reset_offsets_to_earliest(stack)
    ofisync("up")
    settled(stack.settings, Topics(stack.settings.tenant).all())
    eventually(lambda: worker_lag(stack.settings) == 0, 120, "worker lag back to 0")
    after = _everything(erp, crm)
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed


def _reset_offsets_to_earliest(stack: Stack) -> None:
    admin = KafkaAdminClient(bootstrap_servers=str(stack.settings.kafka))
    try:
        group = stack.settings.worker_group
        current = admin.list_group_offsets({group: None})[group]
        assert current, "the worker group has committed offsets"
        admin.reset_group_offsets(group, dict.fromkeys(current, OffsetSpec.EARLIEST))
    finally:
        admin.close()
