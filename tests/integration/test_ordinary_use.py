"""Ordinary use on both sides at once, as a user would try it (issue 28): the same field edited on
both sides while one holds its row, a value too long for the other side, a deleted record edited
on the other side, an unchecked client edited on both sides, an OfiViaje file number the CRM
already uses. Each ends with both sides equal and nothing lost or duplicated."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg
import pytest

from streams.core.contract import CLIENT
from streams.stack.orchestrate import Stack
from tests.integration.helpers import (
    crm_id_of,
    eventually,
    new_erp_client,
    ofisync,
    one,
    query,
    tag,
    web_json,
)

SYNC_WINDOW = 15.0


ERP_COLUMNS = [f.erp for f in CLIENT.fields]
CRM_COLUMNS = [f.crm for f in CLIENT.fields]


def erp_values(erp: str, client: int) -> tuple[Any, ...]:
    cols = ", ".join(ERP_COLUMNS)
    return tuple(query(erp, f"SELECT {cols} FROM clientes WHERE id = %s", (client,))[0])


def crm_values(crm: str, account: int) -> tuple[Any, ...]:
    cols = ", ".join(CRM_COLUMNS)
    return tuple(query(crm, f"SELECT {cols} FROM accounts WHERE id = %s", (account,))[0])


def linked_client(erp: str, name: str, **extra: Any) -> tuple[int, int]:
    client = new_erp_client(erp, name, **extra)
    return client, crm_id_of(erp, client, SYNC_WINDOW)


def witness_crossed(erp: str) -> None:
    """A later, synced client has crossed: what was written before it has been processed."""
    client = new_erp_client(erp, f"witness {tag()}")
    crm_id_of(erp, client, SYNC_WINDOW)


def crm_witness_crossed(crm: str) -> None:
    account = one(crm, "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (f"w {tag()}",))
    eventually(
        lambda: one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (account,)),
        SYNC_WINDOW,
        "the CRM witness crossed",
    )


def _hold_then_commit(dsn: str, statement: str, params: Any, held: threading.Event) -> None:
    with psycopg.connect(dsn) as conn:
        conn.execute(statement, params)
        held.set()
        conn.execute("SELECT pg_sleep(3)")
        conn.commit()


@pytest.mark.parametrize("late", ["crm", "erp"])
def test_the_same_field_edited_on_both_sides_while_one_holds_its_row_ends_with_the_later_commit(
    erp: str, crm: str, late: str
) -> None:
    """One side's transaction holds the row for seconds and commits last; the other side's edit
    of the same field commits first and reaches it while it holds the row."""
    client, account = linked_client(erp, f"race {tag()}", observaciones="init")
    eventually(
        lambda: one(crm, "SELECT notes FROM accounts WHERE id = %s", (account,)) == "init",
        SYNC_WINDOW,
        "initial value on both sides",
    )
    held = threading.Event()
    if late == "crm":
        holder = threading.Thread(
            target=_hold_then_commit,
            args=(crm, "UPDATE accounts SET notes = 'late' WHERE id = %s", (account,), held),
        )
    else:
        holder = threading.Thread(
            target=_hold_then_commit,
            args=(erp, "UPDATE clientes SET observaciones = 'late' WHERE id = %s", (client,), held),
        )
    holder.start()
    assert held.wait(10)
    if late == "crm":
        one(erp, "UPDATE clientes SET observaciones = 'early' WHERE id = %s", (client,))
    else:
        one(crm, "UPDATE accounts SET notes = 'early' WHERE id = %s", (account,))
    holder.join(30)

    def both() -> tuple[Any, Any]:
        return (
            one(erp, "SELECT observaciones FROM clientes WHERE id = %s", (client,)),
            one(crm, "SELECT notes FROM accounts WHERE id = %s", (account,)),
        )

    eventually(lambda: both() == ("late", "late"), SYNC_WINDOW, f"both hold 'late' ({both()})")
    witness_crossed(erp)
    crm_witness_crossed(crm)
    assert both() == ("late", "late")
    # Each side that recorded the conflict names the later commit ('late') as the winner.
    for dsn, key, field in ((erp, client, "observaciones"), (crm, account, "notes")):
        for incoming, local, winner, local_us in query(
            dsn,
            "SELECT incoming_value, local_value, winner, local_commit_us FROM ofisync.conflicts"
            " WHERE target_key = %s AND field = %s",
            (str(key), field),
        ):
            assert (incoming if winner == "incoming" else local) == "late"
            assert local_us is not None


def _letters() -> list[dict[str, Any]]:
    listed: list[dict[str, Any]] = json.loads(ofisync("dlq", "list", "--json").stdout)
    return listed


def test_a_value_too_long_for_the_other_side_holds_back_only_that_field_and_a_retry_lands_the_rest(
    erp: str, crm: str
) -> None:
    client, account = linked_client(erp, f"long {tag()}", email="old@x.es", telefono="000")
    query(
        crm,
        "UPDATE accounts SET phone = repeat('9', 35), email = 'short@x.es' WHERE id = %s",
        (account,),
    )
    # The valid field crosses at once; the one that does not fit becomes a dead letter.
    eventually(
        lambda: one(erp, "SELECT email FROM clientes WHERE id = %s", (client,)) == "short@x.es",
        SYNC_WINDOW,
        "the valid email crossed",
    )
    letter = eventually(
        lambda: next(
            (
                d
                for d in _letters()
                if not d["retried"] and "clientes.telefono holds 30 characters" in d["reason"]
            ),
            None,
        ),
        SYNC_WINDOW,
        "a dead letter names the column too short",
    )
    assert "shorten it at the source" in letter["reason"]
    assert one(erp, "SELECT telefono FROM clientes WHERE id = %s", (client,)) == "000"
    # The cause fixed at the source, then the letter retried: every field ends with its latest.
    query(crm, "UPDATE accounts SET phone = '12345' WHERE id = %s", (account,))
    eventually(
        lambda: one(erp, "SELECT telefono FROM clientes WHERE id = %s", (client,)) == "12345",
        SYNC_WINDOW,
        "the fixed phone crossed",
    )
    done = ofisync("dlq", "retry", letter["id"])
    assert "sent back" in done.stdout
    witness_crossed(erp)
    crm_witness_crossed(crm)
    assert erp_values(erp, client) == crm_values(crm, account)
    assert one(erp, "SELECT telefono FROM clientes WHERE id = %s", (client,)) == "12345"
    assert one(erp, "SELECT email FROM clientes WHERE id = %s", (client,)) == "short@x.es"


def test_a_dead_letter_id_written_wrong_says_what_ids_look_like() -> None:
    done = ofisync("dlq", "retry", "1", check=False)
    assert done.returncode == 2
    assert "partition:offset" in done.stderr and "ofisync dlq list" in done.stderr


def _flagged(dsn: str, table: str, record: int) -> bool:
    return bool(
        one(dsn, f"SELECT ofisync_deleted_at IS NOT NULL FROM {table} WHERE id = %s", (record,))
    )


def test_a_client_deleted_in_ofiviaje_stays_out_when_the_crm_edits_it_until_a_person_relinks_it(
    stack: Stack, erp: str, crm: str
) -> None:
    name = f"gone {tag()}"
    client, account = linked_client(erp, name)
    query(erp, "DELETE FROM clientes WHERE id = %s", (client,))
    eventually(lambda: _flagged(crm, "accounts", account), SYNC_WINDOW, "the account is flagged")
    query(crm, "UPDATE accounts SET email = 'x@gone.es' WHERE id = %s", (account,))
    crm_witness_crossed(crm)
    assert one(erp, "SELECT count(*) FROM clientes WHERE nombre = %s", (name,)) == 0
    assert _flagged(crm, "accounts", account)
    assert one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (account,)) is None
    # What needs a person lists it.
    attention = web_json(stack.settings, "/dashboard/api/attention")
    assert any(f["side"] == "crm" and f["id"] == account for f in attention["flagged_deleted"]), (
        attention["flagged_deleted"]
    )
    # A person re-links it by clearing the flag: it crosses again as a new client.
    query(crm, "UPDATE accounts SET ofisync_deleted_at = NULL WHERE id = %s", (account,))
    new_client = eventually(
        lambda: one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (account,)),
        SYNC_WINDOW,
        "the re-linked account crossed",
    )
    assert one(erp, "SELECT count(*) FROM clientes WHERE nombre = %s", (name,)) == 1
    assert erp_values(erp, new_client) == crm_values(crm, account)


def test_an_account_deleted_in_the_crm_stays_out_when_ofiviaje_edits_it(erp: str, crm: str) -> None:
    name = f"gone crm {tag()}"
    client, account = linked_client(erp, name)
    query(crm, "DELETE FROM accounts WHERE id = %s", (account,))
    eventually(lambda: _flagged(erp, "clientes", client), SYNC_WINDOW, "the client is flagged")
    query(erp, "UPDATE clientes SET email = 'x@gone.es' WHERE id = %s", (client,))
    witness_crossed(erp)
    assert one(crm, "SELECT count(*) FROM accounts WHERE name = %s", (name,)) == 0
    assert _flagged(erp, "clientes", client)
    assert one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client,)) is None


def test_unchecking_a_client_stops_both_directions_and_verify_says_it_is_paused(
    erp: str, crm: str
) -> None:
    name = f"paused {tag()}"
    client, account = linked_client(erp, name, telefono="000")
    query(erp, "UPDATE clientes SET sincronizar_crm = false WHERE id = %s", (client,))
    query(erp, "UPDATE clientes SET telefono = '111' WHERE id = %s", (client,))
    query(crm, "UPDATE accounts SET phone = 'crm-222' WHERE id = %s", (account,))
    witness_crossed(erp)
    crm_witness_crossed(crm)
    assert one(erp, "SELECT telefono FROM clientes WHERE id = %s", (client,)) == "111"
    assert one(crm, "SELECT phone FROM accounts WHERE id = %s", (account,)) == "crm-222"
    assert one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client,)) == account
    report = json.loads(ofisync("verify", "--json", check=False).stdout)
    assert any(
        p["entity"] == "client" and p["erp_id"] == client and p["crm_id"] == account
        for p in report["paused"]
    ), report["paused"]
    assert not any(d["erp_id"] == client for d in report["differences"])
    # Checked again: OfiViaje's values go up where they are the newer, the CRM's come down
    # where they are (its phone, edited last); nothing is lost or created twice.
    query(erp, "UPDATE clientes SET email = 'paused@erp.es' WHERE id = %s", (client,))
    query(erp, "UPDATE clientes SET sincronizar_crm = true WHERE id = %s", (client,))
    eventually(
        lambda: erp_values(erp, client) == crm_values(crm, account),
        SYNC_WINDOW,
        "re-checked client in sync",
    )
    assert one(crm, "SELECT phone FROM accounts WHERE id = %s", (account,)) == "crm-222"
    assert one(crm, "SELECT email FROM accounts WHERE id = %s", (account,)) == "paused@erp.es"
    assert one(crm, "SELECT count(*) FROM accounts WHERE name = %s", (name,)) == 1
    assert one(erp, "SELECT count(*) FROM clientes WHERE nombre = %s", (name,)) == 1


def test_an_ofiviaje_file_whose_number_the_crm_already_uses_crosses_under_a_free_number(
    erp: str, crm: str
) -> None:
    client, account = linked_client(erp, f"numbers {tag()}")
    number = f"N-{tag()}"
    # The CRM already has a file with that number, linked to another OfiViaje file.
    other_client, _ = linked_client(erp, f"numbers other {tag()}")
    taken = one(
        erp,
        "INSERT INTO expedientes (numero, cliente_id) VALUES (%s, %s) RETURNING id",
        (f"{number}-first", other_client),
    )
    taken_crm = eventually(
        lambda: one(erp, "SELECT crm_id FROM expedientes WHERE id = %s", (taken,)),
        SYNC_WINDOW,
        "the first file crossed",
    )
    query(crm, "UPDATE files SET file_number = %s WHERE id = %s", (number, taken_crm))
    eventually(
        lambda: one(erp, "SELECT crm_numero FROM expedientes WHERE id = %s", (taken,)) == number,
        SYNC_WINDOW,
        "the CRM number noted in OfiViaje",
    )
    mine = one(
        erp,
        "INSERT INTO expedientes (numero, cliente_id, descripcion) VALUES (%s, %s, 'mine')"
        " RETURNING id",
        (number, client),
    )
    crm_file = eventually(
        lambda: one(erp, "SELECT crm_id FROM expedientes WHERE id = %s", (mine,)),
        SYNC_WINDOW,
        "the file with the taken number crossed",
    )
    crossed_as = one(crm, "SELECT file_number FROM files WHERE id = %s", (crm_file,))
    assert crossed_as != number and number in crossed_as
    assert one(crm, "SELECT title FROM files WHERE id = %s", (crm_file,)) == "mine"
    assert one(crm, "SELECT account_id FROM files WHERE id = %s", (crm_file,)) == account
