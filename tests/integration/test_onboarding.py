"""An agency with data on both sides already (issue 29): records that are the same thing are
linked, never created twice; several candidates wait for a person; `ofisync onboard` reports
first, links in batches, takes up a run cut short, and leaves `verify` clean."""

from __future__ import annotations

import json
import threading
from typing import Any

import psycopg

from streams.stack.orchestrate import Stack
from tests.integration.helpers import eventually, ofisync, one, query, tag, web_json, worker_lag

SYNC_WINDOW = 20.0


def verify_report() -> dict[str, Any]:
    done = ofisync("verify", "--json", check=False)
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_a_client_and_its_file_already_on_both_sides_end_linked_with_no_duplicate(
    erp: str, crm: str
) -> None:
    """The issue's case, with a file and its segments: OfiViaje has the client unchecked and a
    file; the CRM has the same company (its tax id written otherwise) and the same file number
    with two segments."""
    nif = f"P{tag()[:8].upper()}"
    number = f"PRE-{tag()}"
    client = one(
        erp,
        "INSERT INTO clientes (nombre, nif, telefono, sincronizar_crm)"
        " VALUES ('Agencia Previa', %s, '333', false) RETURNING id",
        (nif,),
    )
    erp_file = one(
        erp,
        "INSERT INTO expedientes (numero, cliente_id, descripcion) VALUES (%s, %s, 'Previo')"
        " RETURNING id",
        (number, client),
    )
    with psycopg.connect(crm) as conn:
        account = conn.execute(
            "INSERT INTO accounts (name, tax_id, phone) VALUES ('Agencia Previa', %s, '333')"
            " RETURNING id",
            (f"es-{nif[0]}-{nif[1:].lower()}",),
        ).fetchone()
        assert account is not None
        crm_file = conn.execute(
            "INSERT INTO files (file_number, account_id, title) VALUES (%s, %s, 'Previo')"
            " RETURNING id",
            (number, account[0]),
        ).fetchone()
        assert crm_file is not None
        for destination in ("ROM", "PAR"):
            conn.execute(
                "INSERT INTO segments (file_id, kind, origin, destination) VALUES"
                " (%s, 'flight', 'MAD', %s)",
                (crm_file[0], destination),
            )

    def linked() -> bool:
        """Both sides hold the link: whichever direction matched the pair, the other side learns
        it in the write-back that follows the target's commit."""
        found = query(erp, "SELECT crm_id, sincronizar_crm FROM clientes WHERE id = %s", (client,))
        file_link = one(erp, "SELECT crm_id FROM expedientes WHERE id = %s", (erp_file,))
        account_link = one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (account[0],))
        crm_file_link = one(crm, "SELECT erp_id FROM files WHERE id = %s", (crm_file[0],))
        return (found, file_link, account_link, crm_file_link) == (
            [(account[0], True)],
            crm_file[0],
            client,
            erp_file,
        )

    eventually(linked, SYNC_WINDOW, "the client and the file linked to the CRM's, on both sides")
    eventually(
        lambda: (
            one(erp, "SELECT count(*) FROM billetes WHERE expediente_id = %s", (erp_file,)) == 2
        ),
        SYNC_WINDOW,
        "the segments as tickets of the file that was there",
    )
    assert one(erp, "SELECT count(*) FROM clientes WHERE ofisync.tax_key(nif) = %s", (nif,)) == 1
    assert one(crm, "SELECT count(*) FROM accounts WHERE ofisync.tax_key(tax_id) = %s", (nif,)) == 1
    assert one(erp, "SELECT count(*) FROM expedientes WHERE numero = %s OR crm_numero = %s",
               (number, number)) == 1  # fmt: skip
    assert one(crm, "SELECT count(*) FROM files WHERE file_number = %s OR erp_number = %s",
               (number, number)) == 1  # fmt: skip
    ours = {("client", client), ("file", erp_file)}  # ids of two tables: another file may be 42
    differences: list[dict[str, Any]] = []

    def agree() -> bool:
        differences[:] = [
            d for d in verify_report()["differences"] if (d["entity"], d["erp_id"]) in ours
        ]
        return not differences

    try:
        eventually(agree, SYNC_WINDOW, "verify finds the pair equal", every=1.0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {differences}") from None


def _insert(dsn: str, table: str, rows: list[dict[str, Any]]) -> list[int]:
    ids = []
    with psycopg.connect(dsn) as conn:
        for row in rows:
            found = conn.execute(
                f"INSERT INTO {table} ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})"
                " RETURNING id",
                list(row.values()),
            ).fetchone()
            assert found is not None
            ids.append(int(found[0]))
    return ids


def test_onboard_reports_links_in_batches_takes_up_a_run_cut_short_and_leaves_verify_clean(
    stack: Stack, erp: str, crm: str
) -> None:
    run = tag()[:6].upper()
    stack.worker.stop()  # the first activation: the data is there before the sync runs
    try:
        nifs = [f"B{run}{n:02d}" for n in range(5)]
        pairs_erp = _insert(erp, "clientes", [
            {"nombre": f"Par {n}", "nif": nif, "telefono": "1", "sincronizar_crm": n % 2 == 0}
            for n, nif in enumerate(nifs)
        ])  # fmt: skip
        pairs_crm = _insert(crm, "accounts", [
            {"name": f"Par {n}", "tax_id": f"ES {nif[0]}-{nif[1:].lower()}", "phone": "2"}
            for n, nif in enumerate(nifs)
        ])  # fmt: skip
        erp_only = _insert(erp, "clientes", [
            {"nombre": "Solo OV", "nif": f"C{run}98", "sincronizar_crm": True},
            {"nombre": "Solo OV local", "nif": f"C{run}99", "sincronizar_crm": False},
        ])  # fmt: skip
        crm_only = _insert(crm, "accounts", [{"name": "Solo CRM", "tax_id": f"D{run}97"}])
        # OfiViaje holds the same company twice (not checked): the CRM's account matches both.
        ambiguous_erp = _insert(erp, "clientes", [
            {"nombre": "Doble A", "nif": f"E{run}96", "sincronizar_crm": False},
            {"nombre": "Doble B", "nif": f"e-{run}96", "sincronizar_crm": False},
        ])  # fmt: skip
        ambiguous_crm = _insert(crm, "accounts", [{"name": "Doble", "tax_id": f"E{run}96"}])
        numbers = [f"ON-{run}-{n}" for n in range(3)]
        files_erp = _insert(erp, "expedientes", [
            {"numero": number, "cliente_id": pairs_erp[n], "descripcion": "ov"}
            for n, number in enumerate(numbers)
        ])  # fmt: skip
        files_crm = _insert(crm, "files", [
            {"file_number": number, "account_id": pairs_crm[n], "title": "crm"}
            for n, number in enumerate(numbers)
        ])  # fmt: skip
        # A run cut short between the CRM's commit and OfiViaje's link-back: the last pair.
        with psycopg.connect(crm, autocommit=True) as conn:
            conn.execute("SET ofisync.origin = 'sync'")
            conn.execute("UPDATE accounts SET erp_id = %s WHERE id = %s",
                         (pairs_erp[-1], pairs_crm[-1]))  # fmt: skip

        planned = json.loads(ofisync("onboard", "--dry-run", "--json").stdout)
        links = {(p["erp_id"], p["crm_id"]) for p in planned["clients"]["link"]}
        assert set(zip(pairs_erp[:-1], pairs_crm[:-1], strict=True)) <= links
        assert {"entity": "client", "erp_id": pairs_erp[-1]} in planned["to_finish"]
        assert {c["id"] for c in planned["clients"]["create_in_crm"]} >= {erp_only[0]}
        assert {c["id"] for c in planned["clients"]["stay_unchecked"]} >= {erp_only[1]}
        assert {c["id"] for c in planned["clients"]["create_in_erp"]} >= set(crm_only)
        assert {"key": f"E{run}96", "erp_ids": ambiguous_erp, "crm_ids": ambiguous_crm} in (
            planned["clients"]["ambiguous"]
        )
        assert {(p["erp_id"], p["crm_id"]) for p in planned["files"]["link"]} >= set(
            zip(files_erp, files_crm, strict=True)
        )
        # Dry: nothing changed.
        assert one(erp, "SELECT count(*) FROM clientes WHERE id = ANY(%s) AND crm_id IS NOT NULL",
                   (pairs_erp,)) == 0  # fmt: skip

        # Edits while it runs: they are the newest, and stay.
        editing = threading.Thread(
            target=lambda: [
                query(crm, "UPDATE accounts SET email = %s WHERE id = %s", (f"live{i}@crm", a))
                for i, a in enumerate(pairs_crm[:2])
            ]
        )
        editing.start()
        done = ofisync("onboard")
        editing.join()
        assert "linked" in done.stdout
        for e, c in zip(pairs_erp, pairs_crm, strict=True):
            assert query(
                erp, "SELECT crm_id, sincronizar_crm FROM clientes WHERE id = %s", (e,)
            ) == [(c, True)]
            assert one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (c,)) == e
        for e, c in zip(files_erp, files_crm, strict=True):
            assert one(erp, "SELECT crm_id FROM expedientes WHERE id = %s", (e,)) == c
        # Nothing is left to link: running it again changes nothing.
        again = json.loads(ofisync("onboard", "--dry-run", "--json").stdout)
        assert not {p["erp_id"] for p in again["clients"]["link"]} & set(pairs_erp)
        assert not again["to_finish"]
    finally:
        stack.worker.start()
    eventually(lambda: worker_lag(stack.settings) == 0, 120, "the worker caught up")
    eventually(
        lambda: not [d for d in verify_report()["differences"] if d["crm_id"] in pairs_crm],
        SYNC_WINDOW,
        "the pairs compare equal",
    )
    for nif in nifs:
        assert one(erp, "SELECT count(*) FROM clientes WHERE ofisync.tax_key(nif) = %s",
                   (nif,)) == 1  # fmt: skip
        assert one(crm, "SELECT count(*) FROM accounts WHERE ofisync.tax_key(tax_id) = %s",
                   (nif,)) == 1  # fmt: skip
    assert one(crm, "SELECT email FROM accounts WHERE id = %s", (pairs_crm[0],)) == "live0@crm"
    # The one-sided ones crossed; the ambiguous one waits for a person, said so.
    eventually(
        lambda: one(erp, "SELECT count(*) FROM clientes WHERE crm_id = %s", (crm_only[0],)) == 1,
        SYNC_WINDOW,
        "the CRM-only account created in OfiViaje",
    )
    assert one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (erp_only[1],)) is None
    waiting = eventually(
        lambda: [
            p for p in web_json(stack.settings, "/dashboard/api/attention")["parked"]
            if p["source_key"] == str(ambiguous_crm[0])
        ],
        SYNC_WINDOW,
        "the ambiguous account waits for a person",
    )  # fmt: skip
    assert "link the right one by hand" in waiting[0]["waiting_for"]
    assert one(erp, "SELECT count(*) FROM clientes WHERE ofisync.tax_key(nif) = %s",
               (f"E{run}96",)) == 2  # nothing created: a person picks  # fmt: skip
