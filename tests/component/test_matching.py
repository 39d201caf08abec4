"""Matching before creating (issue 29), on real PostgreSQL: a new record that is already on the
other side is linked, never created twice; several candidates wait for a person; a file number
a linked file holds is never a dead end (issue 28, case 5)."""

from __future__ import annotations

import pytest

from streams.core.matching import tax_key
from streams.core.model import ChangeEvent, Side
from streams.settings import Settings
from tests.component.conftest import sink_for
from tests.component.helpers import command, one, query, run, tag, write


@pytest.mark.parametrize(
    "written",
    ["B12345678", "b-12345678", " B 1234 5678 ", "ES-B12345678", "esb.12345678", "B/12345678"],
)
def test_the_database_keys_tax_ids_as_the_rules_do(databases: Settings, written: str) -> None:
    assert one(databases, Side.ERP, "SELECT ofisync.tax_key(%s)", (written,)) == "B12345678"
    assert tax_key(written) == "B12345678"


@pytest.mark.parametrize("written", ["X1234567L", "ESX1234567L", "FR12345678901", "", "  ", None])
def test_keys_that_are_not_a_prefixed_spanish_nif_keep_their_letters(
    databases: Settings, written: str | None
) -> None:
    assert one(databases, Side.CRM, "SELECT ofisync.tax_key(%s)", (written,)) == tax_key(written)


def _account(settings: Settings, name: str, tax_id: str, **extra: str) -> int:
    columns = {"name": name, "tax_id": tax_id, **extra}
    return int(
        one(
            settings, Side.CRM,
            f"INSERT INTO accounts ({', '.join(columns)}) VALUES"
            f" ({', '.join(['%s'] * len(columns))}) RETURNING id",
            list(columns.values()),
        )
    )  # fmt: skip


@run
async def test_a_new_client_whose_tax_id_the_crm_has_unlinked_is_linked_to_it(
    databases: Settings,
) -> None:
    nif = f"B{tag()[:8].upper()}"
    account = _account(databases, "Agencia Previa", f"es-{nif.lower()}", phone="333")
    created = write(
        databases, Side.ERP, "client",
        "INSERT INTO clientes (nombre, nif, telefono, email, sincronizar_crm)"
        " VALUES ('Agencia Previa SL', %s, '333', 'a@previa.es', true) RETURNING id",
        (nif,),
    )  # fmt: skip
    sink = sink_for(databases, Side.CRM)
    result = await sink.apply([command(created)])
    await sink.close()
    assert result.matched == 1
    client = int(created.key)
    assert one(databases, Side.ERP, "SELECT crm_id FROM clientes WHERE id = %s", (client,)) == (
        account
    )
    assert query(
        databases, Side.CRM, "SELECT erp_id, name, email, phone FROM accounts WHERE id = %s",
        (account,),
    ) == [(client, "Agencia Previa SL", "a@previa.es", "333")]  # fmt: skip
    assert one(databases, Side.CRM, "SELECT count(*) FROM accounts WHERE tax_id ILIKE %s",
               (f"%{nif[1:]}%",)) == 1  # fmt: skip
    # Each differing field was decided by the policy and recorded.
    decided = query(
        databases, Side.CRM,
        "SELECT field, winner FROM ofisync.conflicts WHERE target_key = %s ORDER BY field",
        (str(account),),
    )  # fmt: skip
    assert ("name", "incoming") in decided and ("tax_id", "incoming") in decided


@run
async def test_an_unchecked_client_the_crm_creates_again_is_linked_and_checked(
    databases: Settings,
) -> None:
    nif = f"P{tag()[:8].upper()}"
    client = int(
        one(
            databases, Side.ERP,
            "INSERT INTO clientes (nombre, nif, telefono, sincronizar_crm)"
            " VALUES ('Previa', %s, '333', false) RETURNING id", (nif,),
        )
    )  # fmt: skip
    created = write(
        databases, Side.CRM, "client",
        "INSERT INTO accounts (name, tax_id, phone) VALUES ('Previa', %s, '333') RETURNING id",
        (nif,),
    )  # fmt: skip
    sink = sink_for(databases, Side.ERP)
    result = await sink.apply([command(created)])
    await sink.close()
    assert result.matched == 1
    assert query(
        databases, Side.ERP, "SELECT crm_id, sincronizar_crm FROM clientes WHERE nif = %s", (nif,)
    ) == [(int(created.key), True)]  # fmt: skip
    assert client == one(databases, Side.ERP, "SELECT id FROM clientes WHERE nif = %s", (nif,))


@run
async def test_a_client_matching_several_waits_for_a_person_and_then_follows(
    databases: Settings,
) -> None:
    nif = f"A{tag()[:8].upper()}"
    first, second = _account(databases, "Uno", nif), _account(databases, "Dos", nif.lower())
    created = write(
        databases, Side.ERP, "client",
        "INSERT INTO clientes (nombre, nif, sincronizar_crm) VALUES ('Uno', %s, true)"
        " RETURNING id", (nif,),
    )  # fmt: skip
    sink = sink_for(databases, Side.CRM)
    result = await sink.apply([command(created)])
    assert result.parked == 1 and not result.applied
    reason = one(
        databases, Side.CRM, "SELECT waiting_for FROM ofisync.parked WHERE source_key = %s",
        (created.key,),
    )  # fmt: skip
    assert f"({first}, {second})" in reason and "link the right one by hand" in reason
    assert one(databases, Side.CRM, "SELECT count(*) FROM accounts WHERE name IN ('Uno', 'Dos')"
               " AND tax_id ILIKE %s", (nif,)) == 2  # fmt: skip
    # A person links the right one; the waiting change then finds it.
    query(databases, Side.CRM, "UPDATE accounts SET erp_id = %s WHERE id = %s",
          (int(created.key), first))  # fmt: skip
    query(databases, Side.CRM, "UPDATE ofisync.parked SET next_attempt_at = now()")
    due = await sink.due()
    released = await sink.apply([c for _, c in due], {id(c): i for i, c in due})
    await sink.close()
    assert len(released.applied) == 1
    assert one(databases, Side.ERP, "SELECT crm_id FROM clientes WHERE id = %s",
               (int(created.key),)) == first  # fmt: skip


@run
async def test_an_ofiviaje_file_takes_the_crm_file_of_its_number_or_a_free_number(
    databases: Settings,
) -> None:
    sinks = {side: sink_for(databases, side) for side in Side}
    client = write(
        databases, Side.ERP, "client",
        "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (f"files {tag()}",),
    )  # fmt: skip
    await sinks[Side.CRM].apply([command(client)])
    account = one(databases, Side.ERP, "SELECT crm_id FROM clientes WHERE id = %s",
                  (int(client.key),))  # fmt: skip
    number = f"F-{tag()}"
    crm_file = int(
        one(
            databases, Side.CRM,
            "INSERT INTO files (file_number, account_id, title) VALUES (%s, %s, 'crm')"
            " RETURNING id",
            (number, account),
        )
    )  # fmt: skip

    def erp_file(numero: str) -> ChangeEvent:
        return write(
            databases, Side.ERP, "file",
            "INSERT INTO expedientes (numero, cliente_id, descripcion) VALUES (%s, %s, 'erp')"
            " RETURNING id", (numero, int(client.key)),
        )  # fmt: skip

    matched = erp_file(number)
    result = await sinks[Side.CRM].apply([command(matched)])
    assert result.matched == 1
    assert query(databases, Side.CRM, "SELECT erp_id, title FROM files WHERE id = %s",
                 (crm_file,)) == [(int(matched.key), "erp")]  # fmt: skip
    # The number is now held by a linked file: another OfiViaje file with it crosses as -OV.
    query(databases, Side.ERP, "UPDATE expedientes SET numero = numero || '-old' WHERE id = %s",
          (int(matched.key),))  # fmt: skip
    other = erp_file(number)
    result = await sinks[Side.CRM].apply([command(other)])
    assert not result.dead and result.matched == 0
    assert one(databases, Side.CRM, "SELECT file_number FROM files WHERE erp_id = %s",
               (int(other.key),)) == f"{number}-OV"  # fmt: skip
    for sink in sinks.values():
        await sink.close()
