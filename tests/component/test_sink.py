"""The sink against real PostgreSQL, called directly: positions, clocks and conflicts, flags,
pauses, values too long, history, alignment."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
from psycopg import pq

from streams.apply.results import BatchResult
from streams.apply.sink import Sink
from streams.core.conflicts import Policy
from streams.core.model import Command, CommandOp, Side
from streams.settings import Settings
from tests.component.conftest import sink_for
from tests.component.helpers import (
    command,
    linked_client,
    one,
    query,
    run,
    skipped,
    tag,
    write,
    writes_in_one_transaction,
)


def sinks_for(settings: Settings, policy: Policy = Policy.LATER_WINS) -> dict[Side, Sink]:
    return {side: sink_for(settings, side, policy) for side in Side}


async def close(sinks: dict[Side, Sink]) -> None:
    for sink in sinks.values():
        await sink.close()


def erp_update(settings: Settings, client: int, column: str, value: object) -> Command:
    return command(
        write(
            settings, Side.ERP, "client",
            f"UPDATE clientes SET {column} = %s WHERE id = %s", (value, client), client,
        )
    )  # fmt: skip


def crm_update(settings: Settings, account: int, column: str, value: object) -> Command:
    return command(
        write(
            settings, Side.CRM, "client",
            f"UPDATE accounts SET {column} = %s WHERE id = %s", (value, account), account,
        )
    )  # fmt: skip


def erp_field(settings: Settings, client: int, column: str) -> object:
    return one(settings, Side.ERP, f"SELECT {column} FROM clientes WHERE id = %s", (client,))


def crm_field(settings: Settings, account: int, column: str) -> object:
    return one(settings, Side.CRM, f"SELECT {column} FROM accounts WHERE id = %s", (account,))


@run
async def test_a_change_applied_twice_is_applied_once(databases: Settings) -> None:
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"twice {tag()}")
    change = erp_update(databases, client, "telefono", "111")
    first = await sinks[Side.CRM].apply([change])
    again = await sinks[Side.CRM].apply([change])
    assert len(first.applied) == 1 and again.duplicates == 1 and not again.applied
    row = query(
        databases, Side.CRM,
        "SELECT phone, ofisync_applied_lsn, ofisync_clocks->>'phone' FROM accounts WHERE id = %s",
        (account,),
    )  # fmt: skip
    assert row == [("111", change.lsn, f"t:{change.commit_us}")]
    # A change older than the row's position (redelivered after a later one) is a duplicate too.
    later = erp_update(databases, client, "telefono", "222")
    await sinks[Side.CRM].apply([later])
    stale = await sinks[Side.CRM].apply([change])
    assert stale.duplicates == 1 and crm_field(databases, account, "phone") == "222"
    await close(sinks)


@run
async def test_what_the_sync_writes_carries_the_time_of_its_own_commit(databases: Settings) -> None:
    """A session with a replication origin would give every transaction the commit time of its
    first: each of the sink's takes its own."""
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"times {tag()}")
    committed = []
    for value in ("1", "2"):
        await sinks[Side.CRM].apply([erp_update(databases, client, "telefono", value)])
        committed.append(
            query(
                databases, Side.CRM,
                "SELECT pg_xact_commit_timestamp(xmin) > now() - interval '5 seconds',"
                " pg_xact_commit_timestamp(xmin) FROM accounts WHERE id = %s", (account,),
            )[0]
        )  # fmt: skip
        await asyncio.sleep(0.2)
    assert all(recent for recent, _ in committed) and committed[0][1] < committed[1][1]
    await close(sinks)


@run
async def test_a_row_changed_while_the_sink_waited_for_its_lock_is_decided_with_its_own_clock(
    databases: Settings,
) -> None:
    """Issue 28, case 1: the CRM holds the row in a long transaction and commits after OfiViaje's
    edit of the same field; the sink, blocked on that row, must see the CRM's commit time."""
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"race {tag()}")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait(10)

    crm_late = asyncio.create_task(
        asyncio.to_thread(
            write, databases, Side.CRM, "client",
            "UPDATE accounts SET notes = 'late' WHERE id = %s", (account,), account, hold,
        )
    )  # fmt: skip
    await asyncio.to_thread(held.wait, 10)
    erp_early = erp_update(databases, client, "observaciones", "early")
    applying = asyncio.create_task(sinks[Side.CRM].apply([erp_early]))
    await asyncio.sleep(0.5)
    assert not applying.done()  # waiting for the CRM's row lock
    release.set()
    crm_change = command(await crm_late)
    at_crm: BatchResult = await applying
    at_erp = await sinks[Side.ERP].apply([crm_change])
    assert crm_change.commit_us > erp_early.commit_us
    assert crm_field(databases, account, "notes") == "late"
    assert erp_field(databases, client, "observaciones") == "late"
    assert at_crm.conflicts == 1 and at_erp.conflicts == 1
    recorded = query(
        databases, Side.CRM,
        "SELECT winner, local_commit_us FROM ofisync.conflicts WHERE target_key = %s",
        (str(account),),
    )  # fmt: skip
    assert recorded == [("local", crm_change.commit_us)]
    # Decided again (a redelivery), the conflict is not recorded twice.
    await sinks[Side.CRM].apply([erp_early._replace(lsn=erp_early.lsn + 1)])
    assert one(
        databases, Side.CRM,
        "SELECT count(*) FROM ofisync.conflicts WHERE target_key = %s", (str(account),),
    ) == 1  # fmt: skip
    await close(sinks)


@run
async def test_an_undone_edit_is_still_concurrent_with_the_other_side_s_change(
    databases: Settings,
) -> None:
    """The CRM goes b and back to a while OfiViaje's a→e is on its way: same value, another
    version. Under OfiViaje-wins OfiViaje's value lands; judged by value alone it would too, but
    the CRM's own last edit (a, based on b) must then lose at OfiViaje."""
    sinks = sinks_for(databases, Policy.ERP_WINS)
    client, account = await linked_client(databases, sinks, f"aba {tag()}")
    to_crm = erp_update(databases, client, "email", "e@erp")
    b = crm_update(databases, account, "email", "b@crm")
    a = crm_update(databases, account, "email", None)
    assert (await sinks[Side.CRM].apply([to_crm])).conflicts == 1
    await sinks[Side.ERP].apply([b, a])
    assert erp_field(databases, client, "email") == crm_field(databases, account, "email")
    assert erp_field(databases, client, "email") == "e@erp"
    await close(sinks)


@run
async def test_a_record_deleted_on_the_other_side_stays_out_until_a_person_relinks_it(
    databases: Settings,
) -> None:
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"gone {tag()}")
    deleted = write(
        databases, Side.ERP, "client", "DELETE FROM clientes WHERE id = %s", (client,), client
    )
    await sinks[Side.CRM].apply([command(deleted)])
    assert query(
        databases, Side.CRM,
        "SELECT erp_id, ofisync_deleted_at IS NOT NULL, ofisync_unlinked_from FROM accounts"
        " WHERE id = %s", (account,),
    ) == [(None, True, client)]  # fmt: skip
    # The CRM edits it: the change does not cross.
    edit = write(
        databases, Side.CRM, "client",
        "UPDATE accounts SET email = 'x@gone' WHERE id = %s", (account,), account,
    )  # fmt: skip
    assert "clear its ofisync_deleted_at" in skipped(edit).reason
    # An OfiViaje change on its way when the client was deleted finds the row flagged.
    late = command(deleted)._replace(op=CommandOp.UPSERT, values=(), lsn=deleted.lsn + 1)
    assert (await sinks[Side.CRM].apply([late])).flagged == 1
    # A person clears the flag: it crosses as a new client.
    relinked = write(
        databases, Side.CRM, "client",
        "UPDATE accounts SET ofisync_deleted_at = NULL WHERE id = %s", (account,), account,
    )  # fmt: skip
    again = command(relinked)
    assert again.full and again.link_key is None
    assert one(databases, Side.CRM, "SELECT ofisync_unlinked_from FROM accounts WHERE id = %s",
               (account,)) is None  # fmt: skip
    result = await sinks[Side.ERP].apply([again])
    assert len(result.applied) == 1 and result.links
    new_client = crm_field(databases, account, "erp_id")
    assert new_client not in (None, client)
    assert erp_field(databases, int(str(new_client)), "email") == "x@gone"
    await close(sinks)


@run
async def test_a_replay_of_a_record_whose_pair_was_deleted_since_recreates_nothing(
    databases: Settings,
) -> None:
    """The CRM deleted the account; OfiViaje's client is flagged (a write of the sync, never
    captured). Replaying the client's history must not create a new account."""
    sinks = sinks_for(databases)
    created = write(
        databases, Side.ERP, "client",
        "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
        (f"pair gone {tag()}",),
    )  # fmt: skip
    await sinks[Side.CRM].apply([command(created)])
    client = int(created.key)
    account = int(str(erp_field(databases, client, "crm_id")))
    deleted = write(
        databases, Side.CRM, "client", "DELETE FROM accounts WHERE id = %s", (account,), account
    )
    await sinks[Side.ERP].apply([command(deleted)])
    assert erp_field(databases, client, "crm_id") is None
    result = await sinks[Side.CRM].apply([command(created)._replace(replay=True)])
    assert result.flagged == 1 and not result.links
    assert one(databases, Side.CRM, "SELECT count(*) FROM accounts WHERE erp_id = %s",
               (client,)) == 0  # fmt: skip
    await close(sinks)


@run
async def test_a_change_for_a_record_deleted_here_meanwhile_recreates_nothing(
    databases: Settings,
) -> None:
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"meanwhile {tag()}")
    on_its_way = crm_update(databases, account, "city", "Ávila")
    query(databases, Side.ERP, "DELETE FROM clientes WHERE id = %s", (client,))
    result = await sinks[Side.ERP].apply([on_its_way])
    assert result.gone == 1 and not result.applied
    assert one(databases, Side.ERP, "SELECT count(*) FROM clientes WHERE crm_id = %s",
               (account,)) == 0  # fmt: skip
    await close(sinks)


@run
async def test_an_unchecked_client_takes_nothing_from_the_crm(databases: Settings) -> None:
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"paused {tag()}")
    unchecked = write(
        databases, Side.ERP, "client",
        "UPDATE clientes SET sincronizar_crm = false, telefono = '111' WHERE id = %s",
        (client,), client,
    )  # fmt: skip
    assert "not checked" in skipped(unchecked).reason
    result = await sinks[Side.ERP].apply([crm_update(databases, account, "phone", "crm-222")])
    assert result.paused == 1
    assert erp_field(databases, client, "telefono") == "111"
    assert erp_field(databases, client, "crm_id") == account  # the link stays
    await close(sinks)


@run
async def test_a_value_too_long_is_held_back_alone_and_its_retry_lands_the_latest(
    databases: Settings,
) -> None:
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"long {tag()}")
    change = command(
        write(
            databases, Side.CRM, "client",
            "UPDATE accounts SET phone = repeat('9', 35), email = 'short@x.es' WHERE id = %s",
            (account,), account,
        )
    )  # fmt: skip
    result = await sinks[Side.ERP].apply([change])
    assert erp_field(databases, client, "email") == "short@x.es"
    ((held, reason),) = result.dead
    assert [v.field for v in held.values] == ["telefono"]
    assert reason == (
        "clientes.telefono holds 30 characters, the value has 35: shorten it at the source"
    )
    fixed = crm_update(databases, account, "phone", "12345")
    await sinks[Side.ERP].apply([fixed])
    retried = await sinks[Side.ERP].apply([held._replace(replay=True)])
    assert not retried.dead and retried.conflicts == 0
    assert erp_field(databases, client, "telefono") == "12345"
    await close(sinks)


@run
async def test_history_older_than_the_target_changes_nothing_and_records_no_conflict(
    databases: Settings,
) -> None:
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"history {tag()}")
    old = erp_update(databases, client, "movil", "600")
    await sinks[Side.CRM].apply([old])
    newer = crm_update(databases, account, "mobile", "700")
    await sinks[Side.ERP].apply([newer])
    before = query(databases, Side.CRM, "SELECT * FROM accounts WHERE id = %s", (account,))
    result = await sinks[Side.CRM].apply([old._replace(replay=True)])
    assert result.noops == 1 and result.conflicts == 0
    assert query(databases, Side.CRM, "SELECT * FROM accounts WHERE id = %s", (account,)) == before
    await close(sinks)


@run
async def test_a_replayed_create_over_newer_values_touches_neither_side(
    databases: Settings,
) -> None:
    """History: the create's values are older than both sides' now; nothing is written, and the
    source is not aligned either (a replay changes nothing)."""
    sinks = sinks_for(databases)
    created = write(
        databases, Side.ERP, "client",
        "INSERT INTO clientes (nombre, telefono, sincronizar_crm) VALUES (%s, '1', true)"
        " RETURNING id", (f"replayed {tag()}",),
    )  # fmt: skip
    await sinks[Side.CRM].apply([command(created)])
    client = int(created.key)
    account = int(str(erp_field(databases, client, "crm_id")))
    await sinks[Side.CRM].apply([erp_update(databases, client, "telefono", "2")])
    await sinks[Side.ERP].apply([crm_update(databases, account, "phone", "3")])
    rows = [
        query(databases, Side.ERP, "SELECT * FROM clientes WHERE id = %s", (client,)),
        query(databases, Side.CRM, "SELECT * FROM accounts WHERE id = %s", (account,)),
    ]
    result = await sinks[Side.CRM].apply([command(created)._replace(replay=True)])
    assert not result.aligns and result.conflicts == 0
    assert rows == [
        query(databases, Side.ERP, "SELECT * FROM clientes WHERE id = %s", (client,)),
        query(databases, Side.CRM, "SELECT * FROM accounts WHERE id = %s", (account,)),
    ]
    await close(sinks)


@run
async def test_a_full_push_that_meets_a_newer_value_leaves_it_and_aligns_the_source(
    databases: Settings,
) -> None:
    """Checked again after a pause: OfiViaje's values go up where they are newer; where the
    CRM's are, OfiViaje takes them (ALIGN), with the CRM's clocks."""
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"recheck {tag()}")
    write(
        databases, Side.ERP, "client",
        "UPDATE clientes SET sincronizar_crm = false, email = 'old@erp' WHERE id = %s",
        (client,), client,
    )  # fmt: skip
    crm_update(databases, account, "phone", "crm-newer")  # skipped while paused: not applied
    rechecked = command(
        write(
            databases, Side.ERP, "client",
            "UPDATE clientes SET sincronizar_crm = true WHERE id = %s", (client,), client,
        )
    )  # fmt: skip
    assert rechecked.full
    result = await sinks[Side.CRM].apply([rechecked])
    assert crm_field(databases, account, "email") == "old@erp"
    assert crm_field(databases, account, "phone") == "crm-newer"
    (align,) = result.aligns
    assert align.op is CommandOp.ALIGN and [v.field for v in align.values] == ["telefono"]
    await sinks[Side.ERP].apply(result.aligns)
    assert erp_field(databases, client, "telefono") == "crm-newer"
    clocks = [
        one(databases, side, f"SELECT ofisync_clocks->>'{c}' FROM {t} WHERE id = %s", (i,))
        for side, t, c, i in (
            (Side.ERP, "clientes", "telefono", client), (Side.CRM, "accounts", "phone", account)
        )
    ]  # fmt: skip
    assert clocks[0] == clocks[1] is not None  # one version of the field on both sides
    await close(sinks)


@run
async def test_a_write_the_target_refuses_fails_alone(databases: Settings) -> None:
    """A batch's rows are written in one statement per table, so a write the target refuses
    (here a trigger of the CRM's) fails the whole batch: it goes again command by command, only
    that change becomes a dead letter, and the sessions take the next batch."""
    sinks = sinks_for(databases)
    refused = f"refused {tag()}"
    trigger = f"refuse_{tag()}"
    query(
        databases, Side.CRM,
        f"CREATE FUNCTION public.{trigger}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.notes = '{refused}' THEN RAISE check_violation USING MESSAGE = 'no, thanks';"
        " END IF; RETURN NEW; END $$;"
        f" CREATE TRIGGER {trigger} BEFORE UPDATE ON public.accounts FOR EACH ROW"
        f" EXECUTE FUNCTION public.{trigger}()",
    )  # fmt: skip
    try:
        pairs = [await linked_client(databases, sinks, f"refusing {tag()}") for _ in range(3)]
        notes = [f"fine {tag()}", refused, f"fine {tag()}"]
        changes = [
            erp_update(databases, client, "observaciones", note)
            for (client, _), note in zip(pairs, notes, strict=True)
        ]
        result = await sinks[Side.CRM].apply(changes)
        ((dead, reason),) = result.dead
        assert dead == changes[1] and "no, thanks" in reason
        assert [crm_field(databases, account, "notes") for _, account in pairs] == [
            notes[0], None, notes[2],
        ]  # fmt: skip
        (client, account), _, _ = pairs
        later = await sinks[Side.CRM].apply([erp_update(databases, client, "email", "l@x.es")])
        assert len(later.applied) == 1 and not later.dead
        assert crm_field(databases, account, "email") == "l@x.es"
    finally:
        query(databases, Side.CRM, f"DROP FUNCTION public.{trigger}() CASCADE")
        await close(sinks)


@run
async def test_a_record_a_person_writes_twice_in_one_transaction_crosses_without_conflicts(
    databases: Settings,
) -> None:
    """Each statement is a change of its own, all with the transaction's commit time: the second
    write of a field replaced the version the first set, and later edits on either side replace
    the version that crossed. None of it is a conflict."""
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"twice {tag()}")
    events = writes_in_one_transaction(
        databases, Side.ERP, "client", client,
        [
            "UPDATE clientes SET observaciones = 'first' WHERE id = %s",
            "UPDATE clientes SET email = 'twice@x.es' WHERE id = %s",
            "UPDATE clientes SET observaciones = 'second' WHERE id = %s",
        ],
    )  # fmt: skip
    result = await sinks[Side.CRM].apply([command(e) for e in events])
    assert (len(result.applied), result.conflicts) == (3, 0)
    assert crm_field(databases, account, "notes") == "second"
    assert crm_field(databases, account, "email") == "twice@x.es"

    from_crm = await sinks[Side.ERP].apply([crm_update(databases, account, "notes", "crm")])
    from_erp = await sinks[Side.CRM].apply([erp_update(databases, client, "email", "3@x.es")])
    assert (from_crm.conflicts, from_erp.conflicts) == (0, 0)
    assert erp_field(databases, client, "observaciones") == "crm"
    assert crm_field(databases, account, "email") == "3@x.es"
    await close(sinks)


@run
async def test_a_field_set_and_set_back_in_one_crm_transaction_ends_equal_on_both_sides(
    databases: Settings,
) -> None:
    """The second write replaced the version the first set: no conflict, so no tie for a policy
    to break (a tie goes to OfiViaje, which would have kept the first write's value)."""
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"back {tag()}")
    await sinks[Side.ERP].apply([crm_update(databases, account, "notes", "before")])
    events = writes_in_one_transaction(
        databases, Side.CRM, "client", account,
        [
            "UPDATE accounts SET notes = 'for a moment' WHERE id = %s",
            "UPDATE accounts SET notes = 'before' WHERE id = %s",
        ],
    )  # fmt: skip
    result = await sinks[Side.ERP].apply([command(e) for e in events])
    assert (len(result.applied), result.conflicts) == (2, 0)
    assert erp_field(databases, client, "observaciones") == "before"
    await close(sinks)


@contextlib.asynccontextmanager
async def traced(conn: psycopg.AsyncConnection[Any]) -> AsyncIterator[Callable[[], int]]:
    """Traces the messages of `conn` (libpq's own trace) and gives how often it waited for the
    server: each run of messages it sent that the server then answered."""
    with tempfile.TemporaryFile() as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
        senders: list[str] = []
        try:
            yield lambda: sum(1 for pair in itertools.pairwise(senders) if pair == ("F", "B"))
        finally:
            conn.pgconn.untrace()
            trace.seek(0)
            senders += [line.split(b"\t", 1)[0].decode() for line in trace if line.strip()]


@run
async def test_a_batch_of_updates_takes_two_round_trips_to_its_target(databases: Settings) -> None:
    """The batch's statements go as one pipeline: the reads with the BEGIN, the writes with the
    COMMIT (each its own round trip, they were six)."""
    sinks = sinks_for(databases)
    pairs = [await linked_client(databases, sinks, f"trips {tag()}") for _ in range(3)]
    notes = [f"trip {tag()}" for _ in pairs]
    changes = [
        erp_update(databases, client, "observaciones", note)
        for (client, _), note in zip(pairs, notes, strict=True)
    ]
    sink = sinks[Side.CRM]
    async with traced(await sink.connections.target()) as trips:
        result = await sink.apply(changes)
    assert trips() == 2
    assert len(result.applied) == 3 and not result.dead
    assert [crm_field(databases, account, "notes") for _, account in pairs] == notes
    await close(sinks)


@run
async def test_new_records_are_linked_back_in_one_round_trip_to_their_source(
    databases: Settings,
) -> None:
    sinks = sinks_for(databases)
    sink = sinks[Side.CRM]
    created = [
        command(
            write(
                databases, Side.ERP, "client",
                "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
                (f"linked back {tag()}",),
            )
        )
        for _ in range(3)
    ]  # fmt: skip
    async with traced(await sink.connections.source()) as trips:
        result = await sink.apply(created)
    assert trips() == 1
    assert len(result.applied) == 3 and len(result.links) == 3
    linked = [
        one(databases, Side.ERP, "SELECT crm_id FROM clientes WHERE id = %s", (int(c.source_key),))
        for c in created
    ]
    assert sorted(linked) == sorted(target_id for _, target_id, _ in result.links)
    await close(sinks)


NEW_SEGMENT = (
    "INSERT INTO segments (file_id, kind, origin, destination)"
    " VALUES (%s, 'flight', 'MAD', %s) RETURNING id"
)


@run
async def test_new_files_with_their_segments_take_three_round_trips_and_link_back_their_numbers(
    databases: Settings,
) -> None:
    """Every read of a batch goes before any answer is awaited, whatever tables it touches: the
    rows and parents, then the matching candidates with the new rows' ids, then the writes with
    the COMMIT, whose answer brings the numbers OfiViaje gave the new files (eight round trips
    when each read waited for its answer)."""
    sinks = sinks_for(databases)
    client, account = await linked_client(databases, sinks, f"new files {tag()}")
    crm_file = write(
        databases, Side.CRM, "file",
        "INSERT INTO files (file_number, account_id, title) VALUES (%s, %s, 'trips') RETURNING id",
        (f"CRM-{tag()}", account),
    )  # fmt: skip
    legs = [
        write(databases, Side.CRM, "segment", NEW_SEGMENT, (int(crm_file.key), destination))
        for destination in ("BCN", "LIS")
    ]
    note = f"trips {tag()}"
    changes = [command(e) for e in (crm_file, *legs)] + [
        crm_update(databases, account, "notes", note)
    ]
    sink = sinks[Side.ERP]
    await sink.connections.text_limits()  # read once, on the sink's first batch
    async with traced(await sink.connections.target()) as trips:
        result = await sink.apply(changes)
    assert trips() == 3
    assert len(result.applied) == 4 and not result.dead
    erp_file, number = query(
        databases, Side.CRM, "SELECT erp_id, erp_number FROM files WHERE id = %s",
        (int(crm_file.key),),
    )[0]  # fmt: skip
    assert number == one(databases, Side.ERP, "SELECT numero FROM expedientes WHERE id = %s",
                         (erp_file,))  # fmt: skip
    assert "/C" in number  # OfiViaje's own numbering of files from the CRM
    assert query(
        databases, Side.ERP,
        "SELECT destino FROM billetes WHERE expediente_id = %s ORDER BY destino", (erp_file,),
    ) == [("BCN",), ("LIS",)]  # fmt: skip
    assert erp_field(databases, client, "observaciones") == note
    await close(sinks)
