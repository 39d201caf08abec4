"""Statements (apply stage): the SQL the sink runs, composed once per shape and kept as text
(composing quotes every identifier again, which cost more than the rest of a small batch).

Rows go in as one JSON parameter (`json_rows`), read with jsonb_to_recordset and
jsonb_populate_record: one C call, where an array parameter per column was dumped value by value.
Rows keep the values psycopg reads (dates, decimals, …); `_json` turns them into the text
PostgreSQL parses back into the column's type.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from functools import cache, lru_cache, partial
from typing import Any

import orjson
from psycopg import sql
from psycopg.types.json import Jsonb

from streams.core.contract import PNR_TABLE
from streams.core.model import Entity, Side

# The columns a row read by the sink carries besides its own.
CLOCKS = "ofisync_clocks"  # {column: commit µs}, resolved
DELETED = "ofisync_deleted_at"
APPLIED_LSN = "ofisync_applied_lsn"
UNLINKED_FROM = "ofisync_unlinked_from"
TAX_ID = {Side.ERP: "nif", Side.CRM: "tax_id"}


def ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def row_columns(entity: Entity, side: Side) -> list[str]:
    """The columns of `entity`'s table on `side` that the sink reads: synced fields, marker,
    link, own number, opt-in box, and what the sync keeps in the row."""
    names = ["id", *(f.column(side) for f in entity.fields), *entity.marker(side)]
    opt_in = entity.erp_opt_in if side is Side.ERP else None
    for extra in (entity.link(side), entity.number(side), opt_in):
        if extra and extra not in names:
            names.append(extra)
    return [*names, DELETED, APPLIED_LSN, UNLINKED_FROM]


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot go into a JSON row")


# orjson writes dates and times as ISO 8601, which PostgreSQL reads back into the column's type.
_json = partial(orjson.dumps, default=_json_default)


def json_rows(rows: Any) -> Jsonb:
    return Jsonb(rows, dumps=_json)


def int_array(values: Iterable[int]) -> str:
    """Ids as a PostgreSQL array literal, for a `%s::bigint[]` parameter: psycopg dumps a list
    element by element (2.5 ms for the 2,000 ids of a batch, five times as long as this)."""
    return "{" + ",".join(map(str, values)) + "}"


# A row's clocks with every entry resolved to µs (ofisync.clock_us): what the sink decides
# conflicts with. Read in the statement that locks the row, from the row version it locked, so a
# change committed while the sink waited for the lock is seen with its own clock. A subquery, not
# a function: PostgreSQL never inlines a SQL function that aggregates, and calling one costs it
# about 45 µs a row (a batch's read of 2,000 rows: 90 ms, against 20 with the subquery).
RESOLVED_CLOCKS = (
    "(SELECT coalesce(jsonb_object_agg(e.key, ofisync.clock_us(e.value)), '{}')"
    " FROM jsonb_each_text(ofisync_clocks) e)"
)


def _selected(entity: Entity, side: Side) -> sql.Composable:
    return sql.SQL(", ").join(
        [
            *(sql.SQL("t.{}").format(ident(n)) for n in row_columns(entity, side)),
            sql.SQL(RESOLVED_CLOCKS),
        ]
    )


@cache
def select_sql(entity: Entity, side: Side, by_link: bool) -> str:
    """Rows by id, or (`by_link`) by the other side's id in their link column, or, flagged, in
    the column keeping the id they were linked to before a delete. Locked in id order, the lock
    an UPDATE of non-key columns takes (`FOR UPDATE` would also block the key-share locks of other
    transactions' foreign-key checks, and two workers' sinks deadlocked on that). The clocks are
    read from the row version locked: a change committed while the sink waited for the lock is
    decided with its own clocks."""
    link = entity.link(side)
    where: list[sql.Composable] = [sql.SQL("t.id = ANY(%s::bigint[])")]
    if by_link and link is not None:
        where.append(sql.SQL("t.{} = ANY(%s::bigint[])").format(ident(link)))
        where.append(
            sql.SQL("(t.{} = ANY(%s::bigint[]) AND t.{} IS NOT NULL)").format(
                ident(UNLINKED_FROM), ident(DELETED)
            )
        )
    return (
        sql.SQL("SELECT {} FROM {} t WHERE {} ORDER BY t.id FOR NO KEY UPDATE OF t")
        .format(_selected(entity, side), ident(entity.table(side)), sql.SQL(" OR ").join(where))
        .as_string()
    )


@cache
def candidates_sql(entity: Entity, side: Side, by_tax_id: bool) -> str:
    """Rows another side's new record may be: unlinked and not flagged, by tax id (clients) or,
    linked or not, by number (files: a linked one holds a number a new file cannot take)."""
    link = entity.link(side)
    assert link is not None
    if by_tax_id:
        key = sql.SQL("ofisync.tax_key(t.{})").format(ident(TAX_ID[side]))
        where = sql.SQL("t.{} IS NULL AND t.{} IS NULL AND {} = ANY(%s::text[])").format(
            ident(link), ident(DELETED), key
        )
    else:
        number = entity.number(side)
        assert number is not None
        key = sql.SQL("t.{}").format(ident(number))
        where = sql.SQL("{} = ANY(%s::text[])").format(key)
    return (
        sql.SQL("SELECT {}, {} FROM {} t WHERE {} ORDER BY t.id FOR NO KEY UPDATE OF t")
        .format(_selected(entity, side), key, ident(entity.table(side)), where)
        .as_string()
    )


@cache
def flagged_sql(table: str) -> str:
    """Which of these rows are flagged as deleted on the other side."""
    return (
        sql.SQL("SELECT id FROM {} WHERE id = ANY(%s::bigint[]) AND ofisync_deleted_at IS NOT NULL")
        .format(ident(table))
        .as_string()
    )


@cache
def parents_sql(table: str, link: str) -> str:
    return (
        sql.SQL("SELECT {link}, id FROM {table} WHERE {link} = ANY(%s::bigint[])")
        .format(link=ident(link), table=ident(table))
        .as_string()
    )


PNR_FILES_SQL = (
    f"SELECT DISTINCT expediente_id FROM {PNR_TABLE}"
    " WHERE expediente_id = ANY(%s::bigint[]) AND origen_registro = 'pnr'"
)


@cache
def delete_sql(table: str) -> str:
    return sql.SQL("DELETE FROM {} WHERE id = ANY(%s::bigint[])").format(ident(table)).as_string()


@lru_cache(maxsize=1024)
def insert_sql(table: str, names: tuple[str, ...], generated: str | None) -> str:
    """Rows from a JSON array (their clocks and position among their columns); `generated`: the
    own-number column, filled by ofisync.next_file_number()."""
    columns = [ident(n) for n in names]
    values: list[sql.Composable] = [sql.SQL("p.{}").format(c) for c in columns]
    if generated is not None:
        columns.append(ident(generated))
        values.append(sql.SQL("ofisync.next_file_number()"))
    return (
        sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT {values}"
            " FROM jsonb_array_elements(%s::jsonb) e,"
            " jsonb_populate_record(NULL::{table}, e.value) p RETURNING id, {number}"
        )
        .format(
            table=ident(table),
            columns=sql.SQL(", ").join(columns),
            values=sql.SQL(", ").join(values),
            number=ident(generated) if generated else sql.NULL,
        )
        .as_string()
    )


@lru_cache(maxsize=1024)
def update_sql(table: str, columns: tuple[str, ...]) -> str:
    """Each row's changes as a JSON patch over the row itself, with its clocks (the whole map,
    when they changed), its position and whether the change unlinks it (a delete on the other
    side: flagged, and the id it was linked to kept)."""
    names = [ident(c) for c in columns]
    assigned = (
        sql.SQL("({}) = (SELECT {} FROM jsonb_populate_record(t, v.patch) p), ").format(
            sql.SQL(", ").join(names), sql.SQL(", ").join(sql.SQL("p.{}").format(n) for n in names)
        )
        if columns
        else sql.SQL("")
    )
    return (
        sql.SQL(
            "UPDATE {table} AS t SET {assigned}"
            " ofisync_clocks = coalesce(v.clocks, t.ofisync_clocks),"
            " ofisync_applied_lsn = greatest(t.ofisync_applied_lsn, v.lsn),"
            " ofisync_deleted_at = CASE WHEN v.unlinked THEN clock_timestamp()"
            "   ELSE t.ofisync_deleted_at END,"
            " ofisync_unlinked_from = CASE WHEN v.unlinked THEN v.former"
            "   ELSE t.ofisync_unlinked_from END"
            # The ids as an array too, joined: PostgreSQL takes a JSON record set for 100 rows,
            # and then scanned the whole table for a batch of one, while an array's length it
            # knows. (Named in the WHERE instead, `t.id = ANY(ids)`, the array was sorted again
            # for every row of the batch: 0.5 ms a row for batches of 2,000.)
            " FROM unnest(%s::bigint[]) AS k(id)"
            " JOIN jsonb_to_recordset(%s::jsonb)"
            "  AS v(id bigint, patch jsonb, clocks jsonb, lsn bigint, unlinked boolean,"
            "       former bigint) ON v.id = k.id"
            " WHERE t.id = k.id"
        )
        .format(table=ident(table), assigned=assigned)
        .as_string()
    )


CONFLICTS_SQL = (
    "INSERT INTO ofisync.conflicts (entity, target_key, field, incoming_source, incoming_value,"
    " incoming_commit_us, local_value, local_commit_us, policy, winner)"
    " SELECT * FROM jsonb_to_recordset(%s::jsonb) AS v(entity text, target_key text, field text,"
    "  incoming_source text, incoming_value text, incoming_commit_us bigint, local_value text,"
    "  local_commit_us bigint, policy text, winner text)"
    " ON CONFLICT DO NOTHING"
)


def clocks_json(clocks: dict[str, int | None]) -> dict[str, str]:
    """A row's resolved clocks as the column keeps them."""
    return {column: f"t:{us}" for column, us in clocks.items() if us is not None}


def bump_sequence_sql(table: str) -> str:
    """Moves the table's id sequence past its highest id (after rows were written with their own
    ids, a replay restoring them): the application's next insert must not collide."""
    return (
        sql.SQL(
            "SELECT setval(pg_get_serial_sequence({name}, 'id'), m) FROM (SELECT max(id) AS m"
            " FROM {table}) s, pg_sequences q WHERE m IS NOT NULL"
            " AND q.schemaname || '.' || q.sequencename"
            "  = pg_get_serial_sequence({name}, 'id') AND coalesce(q.last_value, 0) < m"
        )
        .format(name=sql.Literal(table), table=ident(table))
        .as_string()
    )
