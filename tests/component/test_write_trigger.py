"""The write trigger on a synced table (streams/db/sync.sql): what each write leaves in the row's
sync columns, whoever wrote last. The trigger is not run for a write of the sync's to a row it
last wrote under the same mark; the row must end as if it had been."""

from __future__ import annotations

from typing import Any

import psycopg

from streams.core.model import Side
from streams.ops import doctor
from streams.settings import Settings
from streams.stack.postgres import Cluster
from tests.component.helpers import dsn, one, tag

Marks = tuple[str | None, str | None, Any]


def write(settings: Settings, origin: str | None, sql: str, params: Any) -> None:
    with psycopg.connect(dsn(settings, Side.CRM), autocommit=True) as conn:
        if origin is not None:
            conn.execute("SELECT set_config('ofisync.origin', %s, false)", (origin,))
        conn.execute(sql, params)


def stale_tables(conn: psycopg.Connection[Any]) -> set[str]:
    return {r[0] for r in conn.execute("SELECT ofisync.stale_write_triggers()::text")}


def marks(settings: Settings, account: int) -> Marks:
    return one(  # type: ignore[no-any-return]
        settings,
        Side.CRM,
        "SELECT ofisync_origin, ofisync_writer, ofisync_clocks FROM accounts WHERE id = %s",
        (account,),
    )


def test_each_write_leaves_its_writer_whoever_wrote_before(databases: Settings) -> None:
    name = f"trigger {tag()}"
    account = one(
        databases, Side.CRM, "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (name,)
    )
    origin, writer, clocks = marks(databases, account)
    assert origin is None and writer is not None and writer.startswith("postgres")
    assert clocks is None

    notes = "UPDATE accounts SET notes = %s WHERE id = %s"
    write(databases, "sync", notes, ("from the sync", account))  # after a person's write
    assert marks(databases, account) == ("sync", None, None)

    write(databases, "sync", notes, ("from the sync again", account))  # after the sync's own
    assert marks(databases, account) == ("sync", None, None)
    assert one(databases, Side.CRM, "SELECT notes FROM accounts WHERE id = %s", (account,)) == (
        "from the sync again"
    )

    write(databases, None, notes, ("a person's", account))  # after the sync's
    origin, writer, clocks = marks(databases, account)
    assert origin is None and writer is not None and writer.startswith("postgres")
    assert set(clocks) == {"notes"}  # the field the person changed, stamped

    write(databases, "sync", notes, ("the sync's", account))
    assert marks(databases, account) == ("sync", None, clocks)

    write(databases, "restore", notes, ("restored", account))  # the sync's, another mark
    assert marks(databases, account) == ("restore", None, clocks)

    # A row the sync last wrote that somehow names a writer is put right by the sync's next write.
    with psycopg.connect(dsn(databases, Side.CRM), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no triggers for this one
        conn.execute(
            "UPDATE accounts SET ofisync_origin = 'sync', ofisync_writer = 'someone' WHERE id = %s",
            (account,),
        )
    write(databases, "sync", notes, ("the sync's once more", account))
    assert marks(databases, account) == ("sync", None, clocks)


def test_a_person_editing_a_row_from_before_the_sync_is_recorded(databases: Settings) -> None:
    with psycopg.connect(dsn(databases, Side.CRM), autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # as before `ofisync.track`
        account = conn.execute(
            "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (f"older {tag()}",)
        ).fetchone()[0]  # type: ignore[index]
    assert marks(databases, account) == (None, None, None)
    write(databases, None, "UPDATE accounts SET city = 'Teruel' WHERE id = %s", (account,))
    origin, writer, clocks = marks(databases, account)
    assert origin is None and writer is not None and set(clocks) == {"city"}


def test_a_row_a_person_writes_twice_in_one_transaction_keeps_every_field_s_clock(
    databases: Settings,
) -> None:
    """Fields the transaction changed earlier keep its "x:" entry (it has no commit time yet),
    and a field it changes again names that same entry as its base; the next transaction
    resolves them all to the first one's commit time."""
    account = one(
        databases, Side.CRM, "INSERT INTO accounts (name) VALUES (%s) RETURNING id", (tag(),)
    )
    write(databases, None, "UPDATE accounts SET city = 'Soria' WHERE id = %s", (account,))
    with psycopg.connect(dsn(databases, Side.CRM)) as conn:
        update = "UPDATE accounts SET {} = %s WHERE id = %s"
        conn.execute(update.format("notes"), ("first", account))
        conn.execute(update.format("email"), ("a@x.es", account))
        conn.execute(update.format("notes"), ("second", account))
        xid = conn.execute("SELECT txid_current() % 4294967296").fetchone()[0]  # type: ignore[index]
        clocks, base = conn.execute(
            "SELECT ofisync_clocks, ofisync_base FROM accounts WHERE id = %s", (account,)
        ).fetchone()  # type: ignore[misc]
        city_us = int(clocks["city"][2:])
    assert clocks == {"city": f"t:{city_us}", "notes": f"x:{xid}", "email": f"x:{xid}"}
    assert base == {"notes": f"x:{xid}"}

    write(databases, None, "UPDATE accounts SET phone = '1' WHERE id = %s", (account,))
    committed = one(
        databases,
        Side.CRM,
        "SELECT (extract(epoch FROM pg_xact_commit_timestamp(%s::text::xid)) * 1e6)::bigint",
        (xid,),
    )
    clocks = one(
        databases, Side.CRM, "SELECT ofisync_clocks FROM accounts WHERE id = %s", (account,)
    )
    assert {c: clocks[c] for c in ("city", "notes", "email")} == {
        "city": f"t:{city_us}", "notes": f"t:{committed}", "email": f"t:{committed}",
    }  # fmt: skip
    assert clocks["phone"].startswith("x:")


def test_a_table_changed_under_its_write_trigger_is_still_stamped_the_same_and_doctor_says_so(
    databases: Settings,
) -> None:
    """Each table's trigger compares the columns it was made for. Once one of them is dropped,
    it walks the rows instead: the application's writes go on, stamped as the comparison would
    have stamped them; `ofisync doctor` says to prepare the database again, which makes the
    trigger for the table's columns. Both tables get the same writes in the same transactions,
    so their clocks can be compared."""
    compared, walked = f"compared_{tag()}", f"walked_{tag()}"
    tables = (compared, walked)
    with psycopg.connect(dsn(databases, Side.CRM), autocommit=True) as conn:
        for table in tables:
            conn.execute(
                f"CREATE TABLE {table} (id int PRIMARY KEY, a text, b int, c text, d text)"
            )
            conn.execute("SELECT ofisync.track(%s)", (table,))
        assert not stale_tables(conn) & {compared, walked}
        for table in tables:
            conn.execute(f"ALTER TABLE {table} DROP COLUMN c")
        assert stale_tables(conn) & {compared, walked} == {compared, walked}
    remade = Cluster(databases, databases.crm).ensure_database()  # prepared again
    assert set(remade) >= {compared, walked}
    with psycopg.connect(dsn(databases, Side.CRM), autocommit=True) as conn:
        assert not stale_tables(conn) & {compared, walked}
        conn.execute(f"ALTER TABLE {walked} DROP COLUMN d")
        assert stale_tables(conn) & {compared, walked} == {walked}
        check = doctor.write_triggers(databases.crm.title, conn)
        assert not check.ok and walked in check.detail and "ofisync up" in check.fix
    try:
        steps = [
            ("INSERT INTO {table} VALUES (1, 'a', 1)",),
            ("UPDATE {table} SET a = 'b'",),
            ("UPDATE {table} SET b = 2", "UPDATE {table} SET a = 'c', b = 3"),  # b twice
            ("UPDATE {table} SET a = 'c'",),  # nothing changed
            ("UPDATE {table} SET b = NULL, a = 'd'",),
        ]
        seen = []
        for statements in steps:
            by_comparison, by_walk = in_one_transaction(databases, tables, statements)
            assert by_comparison == by_walk
            seen.append(by_comparison)
    finally:
        with psycopg.connect(dsn(databases, Side.CRM), autocommit=True) as conn:
            for table in tables:
                conn.execute(f"DROP TABLE {table}")
                conn.execute(f"DROP FUNCTION ofisync.on_write_{table}()")

    def committed(entry: str) -> str:
        return str(one(databases, Side.CRM, "SELECT 't:' || ofisync.clock_us(%s)", (entry,)))

    inserted, first, twice, unchanged, last = seen
    assert inserted == (None, None)
    x2 = first[0]["a"]
    assert first == ({"a": x2}, None)  # a had no clock before: no base
    x3 = twice[0]["a"]
    assert twice == ({"a": x3, "b": x3}, {"a": committed(x2), "b": x3})
    assert unchanged == ({"a": committed(x3), "b": committed(x3)}, None)
    x5 = last[0]["a"]
    assert last == ({"a": x5, "b": x5}, {"a": committed(x3), "b": committed(x3)})
    assert len({x2, x3, x5}) == 3 and all(x.startswith("x:") for x in (x2, x3, x5))


def in_one_transaction(
    settings: Settings, tables: tuple[str, str], statements: tuple[str, ...]
) -> list[Any]:
    """Each statement run on both tables in one transaction; then each table's row's clocks and
    base. Only the second table's updates may walk the rows (PostgreSQL counts the calls)."""
    with psycopg.connect(dsn(settings, Side.CRM)) as conn:
        conn.execute("SET track_functions = 'all'")
        for statement in statements:
            for table in tables:
                conn.execute(statement.format(table=table))
        walks = conn.execute(
            "SELECT coalesce(pg_stat_get_xact_function_calls("
            "'ofisync.walk_clocks(jsonb, jsonb, jsonb, text)'::regprocedure), 0)"
        ).fetchone()[0]  # type: ignore[index]
    assert walks == sum(s.startswith("UPDATE") for s in statements)
    return [
        one(settings, Side.CRM, f"SELECT ofisync_clocks, ofisync_base FROM {t}") for t in tables
    ]
