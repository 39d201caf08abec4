"""A side's own changes applied to itself again (`ofisync replay` after a restore), on real
PostgreSQL: what a restore lost comes back, with its ids and links; what it kept stays."""

from __future__ import annotations

import psycopg

from streams.core.model import ChangeEvent, Command, Side
from streams.core.routing import replayed
from streams.settings import Settings
from tests.component.conftest import sink_for
from tests.component.helpers import command, one, query, run, tag, write


def own(event: ChangeEvent) -> Command:
    """The change's command for its own side (REAPPLY), as a replay makes it."""
    found = replayed(event)
    assert isinstance(found, list) and len(found) == 2, found
    assert all(c.replay for c in found)
    return found[1]


def restore(settings: Settings, statement: str, params: tuple[object, ...]) -> None:
    """What a restore from a backup does, marked as the runbook says (never captured)."""
    with psycopg.connect(settings.crm.dsn, autocommit=True) as conn:
        conn.execute("SET ofisync.origin = 'restore'")
        conn.execute(statement, params)


@run
async def test_a_restored_side_gets_back_its_own_edits_and_records_with_their_ids_and_links(
    databases: Settings,
) -> None:
    sinks = {side: sink_for(databases, side) for side in Side}
    # A CRM account, synced down (OfiViaje links it), then edited in the CRM.
    created = write(
        databases, Side.CRM, "client",
        "INSERT INTO accounts (name, city) VALUES (%s, 'Soria') RETURNING id",
        (f"restored {tag()}",),
    )  # fmt: skip
    await sinks[Side.ERP].apply([command(created)])
    account = int(created.key)
    client = one(databases, Side.ERP, "SELECT id FROM clientes WHERE crm_id = %s", (account,))
    edited = write(
        databases, Side.CRM, "client",
        "UPDATE accounts SET city = 'Teruel' WHERE id = %s", (account,), account,
    )  # fmt: skip
    await sinks[Side.ERP].apply([command(edited)])
    kept = query(databases, Side.CRM, "SELECT * FROM accounts WHERE id = %s", (account,))

    # Over data in sync, the side's own history changes nothing.
    result = await sinks[Side.CRM].apply([own(created), own(edited)])
    assert not result.applied and result.conflicts == 0
    assert query(databases, Side.CRM, "SELECT * FROM accounts WHERE id = %s", (account,)) == kept

    # The CRM restored from before the account existed: it comes back, id, values and link.
    restore(databases, "DELETE FROM accounts WHERE id = %s", (account,))
    await sinks[Side.CRM].apply([own(created), own(edited)])
    assert query(
        databases, Side.CRM, "SELECT name, city, erp_id FROM accounts WHERE id = %s", (account,)
    ) == [(kept[0][1], "Teruel", client)]  # fmt: skip
    # The application's next account does not collide with the one written back.
    fresh = one(databases, Side.CRM, "INSERT INTO accounts (name) VALUES ('next') RETURNING id")
    assert fresh > account

    # The CRM restored from before the edit: the edit comes back, nothing older overwrites it.
    restore(
        databases,
        "UPDATE accounts SET city = 'Soria', ofisync_clocks = NULL WHERE id = %s",
        (account,),
    )
    await sinks[Side.CRM].apply([own(edited), own(created)])
    assert one(databases, Side.CRM, "SELECT city FROM accounts WHERE id = %s", (account,)) == (
        "Teruel"
    )
    for sink in sinks.values():
        await sink.close()


@run
async def test_a_record_a_person_deleted_after_the_backup_is_flagged_not_deleted(
    databases: Settings,
) -> None:
    sink = sink_for(databases, Side.CRM)
    created = write(
        databases, Side.CRM, "client",
        "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (f"deleted {tag()}",),
    )  # fmt: skip
    account = int(created.key)
    deleted = write(
        databases, Side.CRM, "client", "DELETE FROM accounts WHERE id = %s", (account,), account
    )
    # Restored from before the delete: the account is back, and the delete re-applied flags it.
    restore(databases, "INSERT INTO accounts (id, name) VALUES (%s, 'back')", (account,))
    await sink.apply([own(deleted)])
    await sink.close()
    assert query(
        databases, Side.CRM, "SELECT ofisync_deleted_at IS NOT NULL FROM accounts WHERE id = %s",
        (account,),
    ) == [(True,)]  # fmt: skip
