"""Booking files both ways on the real stack: seller and branch mapping with header defaults and
visible fallbacks, parents first, locks, segments as placeholder tickets, PNR zeroing, and a file
OfiViaje refuses holding its segments until a person fixes it."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from streams.apply.parking import RELEASE_LIMIT
from streams.core.topics import Topics
from streams.ops.dlq import read_all
from streams.settings import Settings
from streams.stack.orchestrate import Stack
from tests.integration.helpers import (
    eventually,
    metric,
    new_erp_client,
    ofisync,
    one,
    query,
    settled,
    tag,
    web_json,
    worker_lag,
)

SYNC_WINDOW = 10.0  # generous deadline for "within 2 s at light load" on a loaded CI box


def wait_mapping(settings: Settings, probe: Callable[[dict[str, Any]], bool], what: str) -> None:
    eventually(lambda: probe(web_json(settings, "/mapping")), SYNC_WINDOW, f"mapping: {what}")


@dataclass(frozen=True)
class Pair:
    """An OfiViaje seller and branch mapped to a CRM user and agency."""

    vendedor_id: int
    username: str
    sucursal_id: int
    agency_id: str


def new_pair(stack: Stack, mapped: bool = True) -> Pair:
    erp, crm, t = stack.settings.erp.dsn, stack.settings.crm.dsn, tag()
    username, agency = f"user-{t}", f"AG-{t}"
    one(crm, "INSERT INTO agencies (id, name) VALUES (%s, %s)", (agency, f"Agencia {t}"))
    one(crm, "INSERT INTO users (username, agency_id) VALUES (%s, %s)", (username, agency))
    vendedor = int(
        one(
            erp,
            "INSERT INTO vendedores (nombre, crm_usuario) VALUES (%s, %s) RETURNING id",
            (f"Vendedor {t}", username if mapped else None),
        )
    )
    sucursal = int(
        one(
            erp,
            "INSERT INTO sucursales (nombre, crm_agencia_id) VALUES (%s, %s) RETURNING id",
            (f"Sucursal {t}", agency if mapped else None),
        )
    )
    wait_mapping(
        stack.settings,
        lambda m: str(vendedor) in m["sellers"] and str(sucursal) in m["branches"],
        f"seller {vendedor} and branch {sucursal} known",
    )
    return Pair(vendedor, username, sucursal, agency)


@pytest.fixture(scope="module")
def defaults(stack: Stack) -> Iterator[Pair]:
    """The header defaults (config_crm) every test of this module relies on."""
    pair = new_pair(stack)
    one(
        stack.settings.erp.dsn,
        "INSERT INTO config_crm (id, usuario, clave, sucursal_id, vendedor_id, tipo_expediente,"
        " serie) VALUES (true, 'agencia.test', 'secret', %s, %s, 'VAC', 'T')"
        " ON CONFLICT (id) DO UPDATE SET sucursal_id = excluded.sucursal_id,"
        " vendedor_id = excluded.vendedor_id, tipo_expediente = 'VAC', serie = 'T'",
        (pair.sucursal_id, pair.vendedor_id),
    )
    wait_mapping(
        stack.settings,
        lambda m: m["defaults"]["vendedor_id"] == pair.vendedor_id,
        "header defaults loaded",
    )
    yield pair


def crm_account(crm: str) -> int:
    return int(
        one(crm, "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (f"Cuenta {tag()}",))
    )


def crm_file(crm: str, account: int, owner: str | None, agency: str | None, **extra: Any) -> int:
    cols = {
        "file_number": f"CRM-{tag()}",
        "account_id": account,
        "owner_username": owner,
        "agency_id": agency,
        "title": "Escapada a Lisboa",
        "destination": "Lisboa",
        "travellers": 2,
        "total_amount": "1234.50",
        "status": "confirmed",
        **extra,
    }
    return int(
        one(
            crm,
            f"INSERT INTO files ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})"
            " RETURNING id",
            list(cols.values()),
        )
    )


def erp_file_of(erp: str, crm_file_id: int) -> dict[str, Any]:
    row = eventually(
        lambda: query(
            erp,
            "SELECT id, numero, serie, tipo, cliente_id, vendedor_id, sucursal_id, descripcion,"
            " destino, pasajeros, importe_total::text, estado, crm_numero FROM expedientes"
            " WHERE crm_id = %s",
            (crm_file_id,),
        ),
        SYNC_WINDOW,
        f"CRM file {crm_file_id} in OfiViaje",
    )[0]
    names = "id numero serie tipo cliente_id vendedor_id sucursal_id descripcion destino"
    return dict(
        zip((names + " pasajeros importe_total estado crm_numero").split(), row, strict=True)
    )


def erp_file(erp: str, client: int, pair: Pair | None, **extra: Any) -> int:
    cols = {
        "numero": f"T/{tag()}",
        "cliente_id": client,
        "vendedor_id": pair.vendedor_id if pair else None,
        "sucursal_id": pair.sucursal_id if pair else None,
        "descripcion": "Circuito por Andalucía",
        "destino": "Sevilla",
        "pasajeros": 3,
        "importe_total": "2100.00",
        "estado": "confirmado",
        **extra,
    }
    return int(
        one(
            erp,
            f"INSERT INTO expedientes ({', '.join(cols)}) VALUES"
            f" ({', '.join(['%s'] * len(cols))}) RETURNING id",
            list(cols.values()),
        )
    )


def crm_file_of(crm: str, erp_file_id: int) -> dict[str, Any]:
    row = eventually(
        lambda: query(
            crm,
            "SELECT id, file_number, account_id, owner_username, agency_id, title, travellers,"
            " total_amount::text, status, erp_number FROM files WHERE erp_id = %s",
            (erp_file_id,),
        ),
        SYNC_WINDOW,
        f"OfiViaje file {erp_file_id} in the CRM",
    )[0]
    names = "id file_number account_id owner_username agency_id title travellers total_amount"
    return dict(zip((names + " status erp_number").split(), row, strict=True))


def test_a_crm_file_comes_down_mapped_with_header_defaults_and_both_numbers(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    pair = new_pair(stack)
    account = crm_account(crm)
    file_id = crm_file(crm, account, pair.username, pair.agency_id)
    number = one(crm, "SELECT file_number FROM files WHERE id = %s", (file_id,))
    got = erp_file_of(erp, file_id)
    client = one(erp, "SELECT id FROM clientes WHERE crm_id = %s", (account,))
    assert got["cliente_id"] == client
    assert (got["vendedor_id"], got["sucursal_id"]) == (pair.vendedor_id, pair.sucursal_id)
    assert (got["tipo"], got["serie"], got["crm_numero"]) == ("VAC", "T", number)
    assert (got["descripcion"], got["pasajeros"], got["importe_total"]) == (
        "Escapada a Lisboa",
        2,
        "1234.50",
    )
    assert got["estado"] == "confirmado"
    eventually(
        lambda: (
            one(crm, "SELECT erp_id, erp_number FROM files WHERE id = %s", (file_id,))
            == (got["id"], got["numero"])
        ),
        SYNC_WINDOW,
        "the CRM file gets erp_id and erp_number",
    )


def test_files_from_the_crm_keep_unique_numbers_past_the_99999th(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    # Past 99,999 and at the start of a ten, so that two numbers cut to five digits would clash.
    one(
        erp,
        "SELECT setval('ofisync.file_number_seq',"
        " (greatest((SELECT last_value FROM ofisync.file_number_seq), 99999) / 10 + 1) * 10)",
    )
    account = crm_account(crm)
    files = [crm_file(crm, account, defaults.username, defaults.agency_id) for _ in range(2)]
    numbers = [erp_file_of(erp, file_id)["numero"] for file_id in files]
    assert numbers[0] != numbers[1]
    assert all(len(n.split("/C")[1]) >= 6 for n in numbers), numbers


def test_an_unmapped_owner_and_agency_fall_back_to_the_defaults_and_show_it(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    unmapped = new_pair(stack, mapped=False)
    seen = metric(stack.settings, "ofisync_mapping_fallbacks_total", target="erp", mapping="seller")
    file_id = crm_file(crm, crm_account(crm), unmapped.username, unmapped.agency_id)
    got = erp_file_of(erp, file_id)
    assert (got["vendedor_id"], got["sucursal_id"]) == (defaults.vendedor_id, defaults.sucursal_id)
    # Counted once the batch is settled, just after its commit: waited for, not raced.
    eventually(
        lambda: (
            metric(
                stack.settings, "ofisync_mapping_fallbacks_total", target="erp", mapping="seller"
            )
            > seen
        ),
        SYNC_WINDOW,
        "the worker counts the seller fallback",
    )
    unmapped_now = web_json(stack.settings, "/mapping")["unmapped"]
    assert unmapped.username in unmapped_now["crm_users"]
    assert unmapped.agency_id in unmapped_now["crm_agencies"]


def test_an_erp_file_goes_up_with_owner_and_agency_mapped_back(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    pair = new_pair(stack)
    client = new_erp_client(erp, f"Cliente {tag()}")
    file_id = erp_file(erp, client, pair)
    got = crm_file_of(crm, file_id)
    numero = one(erp, "SELECT numero FROM expedientes WHERE id = %s", (file_id,))
    account = eventually(
        lambda: one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client,)),
        SYNC_WINDOW,
        "client linked",
    )
    assert got["account_id"] == account
    assert (got["owner_username"], got["agency_id"]) == (pair.username, pair.agency_id)
    assert (got["title"], got["travellers"], got["total_amount"]) == (
        "Circuito por Andalucía",
        3,
        "2100.00",
    )
    assert (got["status"], got["erp_number"], got["file_number"]) == ("confirmed", numero, numero)
    eventually(
        lambda: (
            one(erp, "SELECT crm_id, crm_numero FROM expedientes WHERE id = %s", (file_id,))
            == (got["id"], got["file_number"])
        ),
        SYNC_WINDOW,
        "the OfiViaje file gets crm_id and crm_numero",
    )


def test_an_erp_file_of_an_unchecked_client_checks_it_and_syncs_it_first(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    client = new_erp_client(erp, f"Sin marcar {tag()}", sync=False)
    unmapped = new_pair(stack, mapped=False)
    file_id = erp_file(erp, client, unmapped)
    got = crm_file_of(crm, file_id)
    assert one(erp, "SELECT sincronizar_crm FROM clientes WHERE id = %s", (client,)) is True
    assert one(crm, "SELECT erp_id FROM accounts WHERE id = %s", (got["account_id"],)) == client
    assert one(crm, "SELECT count(*) FROM accounts WHERE erp_id = %s", (client,)) == 1
    # The seller and branch have no CRM names: the header defaults' names are used.
    assert (got["owner_username"], got["agency_id"]) == (defaults.username, defaults.agency_id)


@pytest.mark.parametrize("same_transaction", [False, True])
def test_a_file_created_just_after_its_account_waits_for_it_and_makes_one_client(
    stack: Stack, erp: str, crm: str, defaults: Pair, same_transaction: bool
) -> None:
    name = f"Recién creada {tag()}"
    if same_transaction:
        account, file_id = query(
            crm,
            "WITH a AS (INSERT INTO accounts (name) VALUES (%s) RETURNING id)"
            " INSERT INTO files (file_number, account_id, title)"
            " SELECT %s, a.id, 'Crucero' FROM a RETURNING account_id, id",
            (name, f"CRM-{tag()}"),
        )[0]
    else:
        account = crm_account(crm)
        file_id = crm_file(crm, account, defaults.username, defaults.agency_id)
    got = erp_file_of(erp, file_id)
    clients = query(erp, "SELECT id FROM clientes WHERE crm_id = %s", (account,))
    assert [c[0] for c in clients] == [got["cliente_id"]]
    eventually(
        lambda: (
            one(erp, "SELECT count(*) FROM ofisync.parked WHERE source_key = %s", (str(file_id),))
            == 0
        ),
        SYNC_WINDOW,
        "nothing left parked",
    )


def test_a_mapping_changed_at_run_time_takes_effect_without_a_restart(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    late = new_pair(stack, mapped=False)
    before = erp_file_of(erp, crm_file(crm, crm_account(crm), late.username, late.agency_id))
    assert before["vendedor_id"] == defaults.vendedor_id
    one(
        erp,
        "UPDATE vendedores SET crm_usuario = %s WHERE id = %s",
        (late.username, late.vendedor_id),
    )
    one(
        erp,
        "UPDATE sucursales SET crm_agencia_id = %s WHERE id = %s",
        (late.agency_id, late.sucursal_id),
    )
    wait_mapping(
        stack.settings,
        lambda m: (
            m["sellers"].get(str(late.vendedor_id)) == late.username
            and m["branches"].get(str(late.sucursal_id)) == late.agency_id
        ),
        "the new seller and branch mapping",
    )
    after = erp_file_of(erp, crm_file(crm, crm_account(crm), late.username, late.agency_id))
    assert (after["vendedor_id"], after["sucursal_id"]) == (late.vendedor_id, late.sucursal_id)
    # The earlier file keeps the default it fell back to: verify names it, and once the agency
    # gives it its seller and branch in OfiViaje, the CRM agrees.
    assert {"vendedor_id / owner_username", "sucursal_id / agency_id"} <= _verify_fields(
        before["id"]
    )
    one(
        erp,
        "UPDATE expedientes SET vendedor_id = %s, sucursal_id = %s WHERE id = %s",
        (late.vendedor_id, late.sucursal_id, before["id"]),
    )
    eventually(lambda: not _verify_fields(before["id"]), SYNC_WINDOW, "the earlier file agrees")


def _verify_fields(erp_file_id: int) -> set[str]:
    """The fields `ofisync verify` finds different on one OfiViaje file."""
    done = ofisync("verify", "--json", check=False)
    assert done.returncode in (0, 1), done.stderr
    return {
        d["field"]
        for d in json.loads(done.stdout)["differences"]
        if d["entity"] == "file" and d["erp_id"] == erp_file_id
    }


def test_a_crm_edit_of_a_locked_field_is_restored_and_recorded_and_crm_fields_are_kept(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    file_id = crm_file(crm, crm_account(crm), defaults.username, defaults.agency_id)
    erp_id = erp_file_of(erp, file_id)["id"]
    eventually(
        lambda: one(crm, "SELECT erp_id FROM files WHERE id = %s", (file_id,)) == erp_id,
        SYNC_WINDOW,
        "file linked",
    )
    with psycopg.connect(crm, autocommit=True) as conn:
        conn.execute("SET application_name = 'crm-web:lucia'")
        conn.execute(
            "UPDATE files SET title = 'Cambiado en el CRM', travellers = 9, stage = 'won',"
            " crm_notes = 'llamar el lunes' WHERE id = %s",
            (file_id,),
        )
    eventually(
        lambda: (
            one(crm, "SELECT title, travellers FROM files WHERE id = %s", (file_id,))
            == ("Escapada a Lisboa", 2)
        ),
        SYNC_WINDOW,
        "locked fields restored from OfiViaje",
    )
    assert one(crm, "SELECT stage, crm_notes FROM files WHERE id = %s", (file_id,)) == (
        "won",
        "llamar el lunes",
    )
    assert one(erp, "SELECT descripcion, pasajeros FROM expedientes WHERE id = %s", (erp_id,)) == (
        "Escapada a Lisboa",
        2,
    )
    recorded = query(
        crm,
        "SELECT field, attempted_value, restored_value, attempted_by FROM ofisync.lock_violations"
        " WHERE entity = 'file' AND record_key = %s ORDER BY field",
        (str(file_id),),
    )
    assert recorded == [
        ("title", "Cambiado en el CRM", "Escapada a Lisboa", "postgres/crm-web:lucia"),
        ("travellers", "9", "2", "postgres/crm-web:lucia"),
    ]
    assert metric(stack.settings, "ofisync_lock_violations_total", side="crm") >= 2
    # OfiViaje still pushes its own changes up.
    one(erp, "UPDATE expedientes SET descripcion = 'Lisboa y Oporto' WHERE id = %s", (erp_id,))
    eventually(
        lambda: one(crm, "SELECT title FROM files WHERE id = %s", (file_id,)) == "Lisboa y Oporto",
        SYNC_WINDOW,
        "an OfiViaje change goes up",
    )


def _tickets(erp: str, erp_file_id: int) -> list[tuple[Any, ...]]:
    return query(
        erp,
        "SELECT crm_trayecto_id, tipo, origen, destino, transportista, importe::text,"
        " origen_registro FROM billetes WHERE expediente_id = %s AND crm_trayecto_id IS NOT NULL"
        " ORDER BY crm_trayecto_id",
        (erp_file_id,),
    )


def _segment(crm: str, file_id: int, kind: str, origin: str, fare: str) -> int:
    return int(
        one(
            crm,
            "INSERT INTO segments (file_id, kind, origin, destination, departure_at, carrier,"
            " service_number, passenger_name, fare) VALUES (%s, %s, %s, 'MAD', '2027-03-01 08:30',"
            " 'IB', 'IB3101', 'Ana Ruiz', %s) RETURNING id",
            (file_id, kind, origin, fare),
        )
    )


def test_segments_become_placeholder_tickets_and_follow_updates_and_deletes(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    file_id = crm_file(crm, crm_account(crm), defaults.username, defaults.agency_id)
    flight = _segment(crm, file_id, "flight", "BCN", "120.00")
    train = _segment(crm, file_id, "train", "VLC", "45.50")
    erp_id = erp_file_of(erp, file_id)["id"]
    eventually(
        lambda: (
            _tickets(erp, erp_id)
            == [
                (flight, "avion", "BCN", "MAD", "IB", "120.00", "crm"),
                (train, "tren", "VLC", "MAD", "IB", "45.50", "crm"),
            ]
        ),
        SYNC_WINDOW,
        "one placeholder ticket per segment",
    )
    one(crm, "UPDATE segments SET fare = 99.90, origin = 'SVQ' WHERE id = %s", (flight,))
    one(crm, "DELETE FROM segments WHERE id = %s", (train,))
    eventually(
        lambda: _tickets(erp, erp_id) == [(flight, "avion", "SVQ", "MAD", "IB", "99.90", "crm")],
        SYNC_WINDOW,
        "the update and the delete followed",
    )
    # Once the ticket is no longer a placeholder, segment changes leave it alone.
    one(erp, "UPDATE billetes SET origen_registro = 'manual' WHERE crm_trayecto_id = %s", (flight,))
    one(crm, "UPDATE segments SET fare = 10.00 WHERE id = %s", (flight,))
    marker = _segment(crm, file_id, "flight", "LIS", "1.00")
    eventually(
        lambda: len(_tickets(erp, erp_id)) == 2, SYNC_WINDOW, "a later segment still arrives"
    )
    assert _tickets(erp, erp_id)[0][5] == "99.90"
    assert _tickets(erp, erp_id)[1][0] == marker


def test_a_refused_file_holds_its_segments_until_it_is_fixed_then_all_follow(
    stack: Stack, erp: str, crm: str, defaults: Pair
) -> None:
    # More segments than one release takes, so releasing them must go on by itself.
    count = RELEASE_LIMIT + 20
    too_long = "Vuelta al mundo " * 15  # 240 characters: OfiViaje's descripcion takes 200
    file_id = crm_file(crm, crm_account(crm), defaults.username, defaults.agency_id, title=too_long)
    one(
        crm,
        "INSERT INTO segments (file_id, kind, origin, destination, departure_at, carrier,"
        " service_number, passenger_name, fare) SELECT %s, 'flight', 'BCN', 'MAD',"
        " '2027-03-01 08:30', 'IB', 'IB' || n, 'Ana Ruiz', 10 FROM generate_series(1, %s) n",
        (file_id, count),
    )

    def parked() -> int:
        return int(
            one(
                erp,
                "SELECT count(*) FROM ofisync.parked"
                " WHERE source = 'crm' AND parent_entity = 'file' AND parent_key = %s",
                (str(file_id),),
            )
        )

    eventually(lambda: parked() == count, SYNC_WINDOW * 3, "every segment waits for its file")
    assert query(erp, "SELECT id FROM expedientes WHERE crm_id = %s", (file_id,)) == []
    # The dead letter names the column and says what to do.
    refused = eventually(
        lambda: [d for d in read_all(stack.settings) if d.key == f"file:crm:{file_id}".encode()],
        SYNC_WINDOW,
        "the refused file is a dead letter",
    )
    assert "expedientes.descripcion holds 200 characters, the value has 240" in refused[0].reason
    assert "shorten it at the source" in refused[0].reason

    one(crm, "UPDATE files SET title = 'Vuelta al mundo' WHERE id = %s", (file_id,))
    erp_id = erp_file_of(erp, file_id)["id"]
    eventually(
        lambda: len(_tickets(erp, erp_id)) == count and parked() == 0,
        SYNC_WINDOW,
        f"all {count} segments followed their fixed file",
    )


def _set_zeroing(stack: Stack, on: bool) -> None:
    one(stack.settings.erp.dsn, "UPDATE config_crm SET ofisync_zero_placeholders = %s", (on,))
    wait_mapping(
        stack.settings,
        lambda m: m["defaults"]["zero_placeholders_on_pnr"] is on,
        f"zeroing {'on' if on else 'off'}",
    )


@pytest.mark.parametrize("zeroing", [True, False])
def test_capturing_pnr_tickets_zeroes_placeholders_only_when_the_agency_wants_it(
    stack: Stack, erp: str, crm: str, defaults: Pair, zeroing: bool
) -> None:
    _set_zeroing(stack, zeroing)
    try:
        file_id = crm_file(crm, crm_account(crm), defaults.username, defaults.agency_id)
        _segment(crm, file_id, "flight", "BCN", "120.00")
        erp_id = erp_file_of(erp, file_id)["id"]
        eventually(lambda: len(_tickets(erp, erp_id)) == 1, SYNC_WINDOW, "placeholder made")
        one(
            erp,
            "INSERT INTO billetes (expediente_id, tipo, origen, destino, localizador, importe,"
            " origen_registro) VALUES (%s, 'avion', 'BCN', 'MAD', 'XK4P2Q', 131.20, 'pnr')",
            (erp_id,),
        )
        if zeroing:
            eventually(
                lambda: _tickets(erp, erp_id)[0][5] == "0.00", SYNC_WINDOW, "placeholder zeroed"
            )
            # A segment added afterwards arrives zeroed too.
            _segment(crm, file_id, "train", "MAD", "60.00")
            eventually(
                lambda: [t[5] for t in _tickets(erp, erp_id)] == ["0.00", "0.00"],
                SYNC_WINDOW,
                "a later placeholder arrives at 0",
            )
        else:
            _segment(crm, file_id, "train", "MAD", "60.00")
            eventually(lambda: len(_tickets(erp, erp_id)) == 2, SYNC_WINDOW, "later placeholder")
            settled(stack.settings, Topics(stack.settings.tenant).all())
            eventually(lambda: worker_lag(stack.settings) == 0, SYNC_WINDOW, "worker caught up")
            assert [t[5] for t in _tickets(erp, erp_id)] == ["120.00", "60.00"]
            listed = query(
                erp,
                "SELECT placeholders, pnr_tickets FROM ofisync.files_with_placeholders_and_pnr"
                " WHERE expediente_id = %s",
                (erp_id,),
            )
            assert listed == [(2, 1)]
    finally:
        _set_zeroing(stack, False)
