"""Working set (apply stage): the target rows one batch touches, read set-wise and written back
set-wise, inside the sink's batch transaction (streams/sink.py).

The rows of a batch's commands are read, and locked, in one query per table, with their field
clocks; the parents its commands name are looked up in one query per parent table. The decisions
(streams/rows.py) then run in Python over these rows, and their writes wait here until `flush`:
one INSERT per table and column set, one UPDATE per table (each row's changes applied as a JSON
patch over the row itself), one DELETE per table, one upsert of field clocks and one insert of
conflicts. Per-command round trips were what bounded the sink; a batch now costs a handful of
statements whatever its size.

Rows keep the values psycopg reads (dates, decimals, …); patches carry the same values, which
`_json` turns into the text PostgreSQL parses back into the column's type.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from functools import cache, lru_cache, partial
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from streams.core.contract import ENTITIES, FILE, PNR_TABLE
from streams.core.model import Command, CommandOp, Entity, Side

# The column a loaded row carries besides its own: its field clocks, {column: commit µs}.
CLOCKS = "ofisync_clocks"


def row_columns(entity: Entity, side: Side) -> list[str]:
    """The columns of `entity`'s table on `side` that the sink reads: synced fields, marker,
    link and own number."""
    names = ["id", *(f.column(side) for f in entity.fields), *entity.marker(side)]
    for extra in (entity.link(side), entity.number(side)):
        if extra and extra not in names:
            names.append(extra)
    return names


async def select_rows(
    conn: psycopg.AsyncConnection[Any],
    entity: Entity,
    side: Side,
    ids: Sequence[int] = (),
    links: Sequence[int] = (),
) -> list[dict[str, Any]]:
    """The rows of `entity` on `side` with these ids or link values, locked in id order, each
    with its field clocks (CLOCKS). The lock is the one an UPDATE of non-key columns takes:
    `FOR UPDATE` would also block the key-share locks with which another transaction's insert
    checks its foreign keys, and two workers' sinks, each updating a client the other's new
    file points at, deadlocked on that."""
    names = row_columns(entity, side)
    by_link = entity.link(side) is not None and bool(links)
    params = [list(ids), list(links)] if by_link else [list(ids)]
    cur = await conn.execute(_select_sql(entity, side, by_link), params)
    found = []
    for values in await cur.fetchall():
        row = dict(zip(names, values[:-1], strict=True))
        row[CLOCKS] = values[-1]
        found.append(row)
    return found


# Statements are composed once per shape and kept as text: composing quotes every identifier
# again, which cost more than the rest of a small batch's statements together.


@cache
def _select_sql(entity: Entity, side: Side, by_link: bool) -> str:
    table, link = entity.table(side), entity.link(side)
    where: list[sql.Composable] = [sql.SQL("t.id = ANY(%s::bigint[])")]
    if by_link and link is not None:
        where.append(sql.SQL("t.{} = ANY(%s::bigint[])").format(sql.Identifier(link)))
    return (
        sql.SQL(
            "SELECT {}, (SELECT coalesce(jsonb_object_agg(e.key, ofisync.clock_us(e.value)),"
            " '{{}}') FROM ofisync.field_clock fc, jsonb_each_text(fc.clocks) e"
            " WHERE fc.tbl = {} AND fc.pk = t.id::text) FROM {} t WHERE {}"
            " ORDER BY t.id FOR NO KEY UPDATE OF t"
        )
        .format(
            sql.SQL(", ").join(
                sql.SQL("t.{}").format(sql.Identifier(n)) for n in row_columns(entity, side)
            ),
            sql.Literal(table),
            sql.Identifier(table),
            sql.SQL(" OR ").join(where),
        )
        .as_string()
    )


@cache
def _parents_sql(table: str, link: str) -> str:
    return (
        sql.SQL("SELECT {link}, id FROM {table} WHERE {link} = ANY(%s::bigint[])")
        .format(link=sql.Identifier(link), table=sql.Identifier(table))
        .as_string()
    )


_PNR_FILES_SQL = (
    f"SELECT DISTINCT expediente_id FROM {PNR_TABLE}"
    " WHERE expediente_id = ANY(%s::bigint[]) AND origen_registro = 'pnr'"
)


@cache
def _delete_sql(table: str) -> str:
    return (
        sql.SQL("DELETE FROM {} WHERE id = ANY(%s::bigint[])")
        .format(sql.Identifier(table))
        .as_string()
    )


@lru_cache(maxsize=1024)
def _insert_sql(table: str, names: tuple[str, ...], generated: str | None) -> str:
    columns = [sql.Identifier(n) for n in names]
    values: list[sql.Composable] = [sql.SQL("p.{}").format(c) for c in columns]
    if generated is not None:
        columns.append(sql.Identifier(generated))
        values.append(sql.SQL("ofisync.next_file_number()"))
    return (
        sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT {values}"
            " FROM jsonb_array_elements(%s::jsonb) e,"
            " jsonb_populate_record(NULL::{table}, e.value) p RETURNING id, {number}"
        )
        .format(
            table=sql.Identifier(table),
            columns=sql.SQL(", ").join(columns),
            values=sql.SQL(", ").join(values),
            number=sql.Identifier(generated) if generated else sql.NULL,
        )
        .as_string()
    )


@lru_cache(maxsize=1024)
def _update_sql(table: str, columns: tuple[str, ...]) -> str:
    names = [sql.Identifier(c) for c in columns]
    return (
        sql.SQL(
            "UPDATE {table} AS t SET ({columns}) = (SELECT {values}"
            " FROM jsonb_populate_record(t, v.patch) p),"
            " ofisync_deleted_at = CASE WHEN v.unlinked THEN clock_timestamp() END"
            " FROM jsonb_to_recordset(%s::jsonb) AS v(id bigint, patch jsonb, unlinked boolean)"
            # The ids again, as an array: PostgreSQL takes a record set for 100 rows, and for a
            # table of some thousands it then scanned the whole table instead of the index.
            " WHERE t.id = v.id AND t.id = ANY(%s::bigint[])"
        )
        .format(
            table=sql.Identifier(table),
            columns=sql.SQL(", ").join(names),
            values=sql.SQL(", ").join(sql.SQL("p.{}").format(n) for n in names),
        )
        .as_string()
    )


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} cannot go into a JSON patch")


# orjson writes dates and times as ISO 8601, which PostgreSQL reads back into the column's type.
_json = partial(orjson.dumps, default=_json_default)


def json_rows(rows: Any) -> Jsonb:
    """A statement's rows as one JSON parameter (read with jsonb_to_recordset and the like): one
    C call, where an array parameter per column was dumped value by value."""
    return Jsonb(rows, dumps=_json)


class WorkingSet:
    """One batch's target rows and its pending writes (see the module docstring)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], target: Side) -> None:
        self.conn = conn
        self.target = target
        # Ids reserved for rows this batch inserts (sequence values stay valid after a rollback).
        self._free_ids: dict[str, list[int]] = defaultdict(list)
        self._forget_reads()
        # Own numbers of rows inserted by this batch, known once flushed (RETURNING).
        self.numbers: dict[tuple[str, int], str] = {}
        self._forget_writes()

    def _forget_reads(self) -> None:
        self.rows: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        self._loaded_ids: dict[str, set[int]] = defaultdict(set)
        # link value → target id (None: no row holds it), for rows read here or parents.
        self._by_link: dict[str, dict[int, int | None]] = defaultdict(dict)
        self._parents: dict[str, dict[int, int | None]] = defaultdict(dict)
        self._pnr_files: dict[int, bool] = {}  # OfiViaje file id → holds PNR tickets

    def _forget_writes(self) -> None:
        self._inserts: dict[str, list[tuple[dict[str, Any], str | None]]] = defaultdict(list)
        self._patches: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
        self._unlinked: dict[str, dict[int, bool]] = defaultdict(dict)
        self._deletes: dict[str, set[int]] = defaultdict(set)
        self._stamps: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
        self._conflicts: list[tuple[Any, ...]] = []

    def pending_texts(self) -> Iterator[tuple[str, str, str]]:
        """(table, column, value) of every text waiting to be written."""
        for table, inserts in self._inserts.items():
            for row, _ in inserts:
                yield from ((table, c, v) for c, v in row.items() if isinstance(v, str))
        for table, patches in self._patches.items():
            for patch in patches.values():
                yield from ((table, c, v) for c, v in patch.items() if isinstance(v, str))

    def forget(self) -> None:
        """Drops what was read and what waits to be written (after a savepoint rolled back, or
        when other code wrote to the target): later lookups read the database again."""
        self._forget_reads()
        self._forget_writes()

    # --- reads ---------------------------------------------------------------------------

    def _keep(self, entity: Entity, found: Iterable[dict[str, Any]]) -> None:
        table = entity.table(self.target)
        link = entity.link(self.target)
        for row in found:
            self.rows[table][row["id"]] = row
            if link is not None and row[link] is not None:
                self._by_link[table][row[link]] = row["id"]

    async def _load(self, entity: Entity, ids: Iterable[int], links: Iterable[int]) -> None:
        table = entity.table(self.target)
        known = self._by_link[table]
        ids = sorted(set(ids) - self._loaded_ids[table])
        links = sorted({value for value in links if value not in known})
        if not ids and not links:
            return
        self._keep(entity, await select_rows(self.conn, entity, self.target, ids, links))
        self._loaded_ids[table].update(ids)
        for value in links:
            self._by_link[table].setdefault(value, None)

    async def load(self, commands: Sequence[Command]) -> None:
        """Reads the target rows of `commands` (row writes: upserts and deletes) and the
        parents they name, set-wise, and reserves ids for the rows they will insert."""
        by_entity: dict[str, list[Command]] = defaultdict(list)
        for cmd in commands:
            by_entity[cmd.entity].append(cmd)
        for name, group in by_entity.items():
            entity = ENTITIES[name]
            await self._load(
                entity,
                (int(c.link_key) for c in group if c.link_key is not None),
                (int(c.source_key) for c in group) if entity.link(self.target) else (),
            )
            parent_field = entity.parent
            if parent_field is not None and parent_field.ref is not None:
                column = parent_field.column(self.target)
                wanted = {
                    int(value)
                    for c in group
                    for v in c.values
                    if v.field == column
                    for value in (v.after, v.before)
                    if value is not None
                }
                await self._load_parents(ENTITIES[parent_field.ref], wanted)
        for name, group in by_entity.items():
            entity = ENTITIES[name]
            new = {
                c.source_key
                for c in group
                if c.op is CommandOp.UPSERT and self._cached(entity, c) is None
            }
            await self._reserve_ids(entity, len(new))

    async def _load_parents(self, parent: Entity, source_ids: Iterable[int]) -> None:
        table = parent.table(self.target)
        link = parent.link(self.target)
        assert link is not None
        known, parents = self._by_link[table], self._parents[table]
        wanted = sorted({v for v in source_ids if v not in known and v not in parents})
        if not wanted:
            return
        cur = await self.conn.execute(_parents_sql(table, link), (wanted,))
        found = dict(await cur.fetchall())
        for value in wanted:
            self._parents[table][value] = found.get(value)

    def _cached(self, entity: Entity, cmd: Command) -> dict[str, Any] | None:
        table = entity.table(self.target)
        if cmd.link_key is not None:
            row = self.rows[table].get(int(cmd.link_key))
            if row is not None:
                return row
        target_id = self._by_link[table].get(int(cmd.source_key))
        return None if target_id is None else self.rows[table].get(target_id)

    async def find(self, entity: Entity, cmd: Command) -> dict[str, Any] | None:
        """The target row of `cmd`: by the id the source knows, else by the link column."""
        links = [int(cmd.source_key)] if entity.link(self.target) else []
        await self._load(entity, [int(cmd.link_key)] if cmd.link_key is not None else [], links)
        return self._cached(entity, cmd)

    async def parent_id(self, parent: Entity, source_id: int) -> int | None:
        """The target id of the parent whose source id is `source_id`, if it is linked here."""
        table = parent.table(self.target)
        if source_id in self._by_link[table]:
            return self._by_link[table][source_id]
        await self._load_parents(parent, [source_id])
        return self._parents[table][source_id]

    async def has_pnr_tickets(self, file_id: int) -> bool:
        """Whether OfiViaje's file `file_id` holds tickets captured from a PNR (placeholder
        zeroing, streams/rows.py). The batch's first question asks it for every file the batch
        has read, at once: a batch of segments asked once per segment before."""
        if file_id not in self._pnr_files:
            files = self._known_ids(FILE) | {file_id}
            cur = await self.conn.execute(_PNR_FILES_SQL, (sorted(files),))
            found = {row[0] for row in await cur.fetchall()}
            self._pnr_files.update((f, f in found) for f in files)
        return self._pnr_files[file_id]

    def _known_ids(self, entity: Entity) -> set[int]:
        """The ids of `entity`'s target rows this batch has read or looked up as parents."""
        table = entity.table(self.target)
        known = set(self.rows[table])
        for ids in (self._by_link[table].values(), self._parents[table].values()):
            known.update(i for i in ids if i is not None)
        return known

    async def _reserve_ids(self, entity: Entity, count: int) -> None:
        if count <= 0:
            return
        table = entity.table(self.target)
        cur = await self.conn.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            (table, count),
        )
        self._free_ids[table] += [int(r[0]) for r in await cur.fetchall()]

    # --- writes (pending until flush) ------------------------------------------------------

    async def insert(
        self, entity: Entity, columns: dict[str, Any], generated_number: str | None = None
    ) -> dict[str, Any]:
        """Queues a new row; `generated_number`: its own-number column, filled by
        ofisync.next_file_number() when flushed. Returns the row as later commands see it."""
        table = entity.table(self.target)
        if not self._free_ids[table]:
            await self._reserve_ids(entity, 1)
        row = {"id": self._free_ids[table].pop(0), **columns}
        self._inserts[table].append((row, generated_number))
        cached = {name: row.get(name) for name in row_columns(entity, self.target)}
        cached[CLOCKS] = {}
        self._keep(entity, [cached])
        self._loaded_ids[table].add(row["id"])
        return cached

    def update(
        self, entity: Entity, row: dict[str, Any], changes: dict[str, Any], unlinked: bool
    ) -> None:
        """Queues `changes` to a row; its ofisync_deleted_at is stamped when the change unlinks
        it and cleared otherwise (the newest change of the row in the batch decides)."""
        table = entity.table(self.target)
        link = entity.link(self.target)
        if link is not None and link in changes and row[link] != changes[link]:
            if row[link] is not None:
                self._by_link[table][row[link]] = None
            if changes[link] is not None:
                self._by_link[table][changes[link]] = row["id"]
        row.update(changes)
        self._patches[table].setdefault(row["id"], {}).update(changes)
        self._unlinked[table][row["id"]] = unlinked

    def delete(self, entity: Entity, row: dict[str, Any]) -> None:
        table = entity.table(self.target)
        link = entity.link(self.target)
        self.rows[table].pop(row["id"], None)
        if link is not None and row[link] is not None:
            self._by_link[table][row[link]] = None
        self._patches[table].pop(row["id"], None)
        self._unlinked[table].pop(row["id"], None)
        self._deletes[table].add(row["id"])

    def stamp(
        self, table: str, row: dict[str, Any], columns: Iterable[str], commit_us: int
    ) -> None:
        """Field clocks of values the sync wrote: the source commit time."""
        stamps = dict.fromkeys(columns, commit_us)
        row[CLOCKS].update(stamps)  # each row read or queued has a clocks dict of its own
        self._stamps[(table, str(row["id"]))].update(stamps)

    def conflict(self, *record: Any) -> None:
        """A row of ofisync.conflicts (entity, target_key, field, incoming source, value and
        commit µs, local value and commit µs, policy, winner)."""
        self._conflicts.append(record)

    async def flush(self) -> None:
        """Writes what waits, set-wise: inserts (parents first), updates, deletes (children
        first), field clocks, conflicts."""
        order = list(ENTITIES.values())
        for entity in order:
            await self._flush_inserts(entity)
        for entity in order:
            await self._flush_updates(entity)
        for entity in reversed(order):
            table = entity.table(self.target)
            if self._deletes[table]:
                await self.conn.execute(_delete_sql(table), (sorted(self._deletes[table]),))
        if self._stamps:
            await self.conn.execute(
                "INSERT INTO ofisync.field_clock AS fc (tbl, pk, clocks)"
                " SELECT v.tbl, v.pk, v.clocks"
                " FROM jsonb_to_recordset(%s::jsonb) AS v(tbl text, pk text, clocks jsonb)"
                " ON CONFLICT (tbl, pk) DO UPDATE SET clocks = fc.clocks || excluded.clocks",
                (
                    json_rows(
                        [
                            {
                                "tbl": table,
                                "pk": pk,
                                "clocks": {f: f"t:{us}" for f, us in s.items()},
                            }
                            for (table, pk), s in self._stamps.items()
                        ]
                    ),
                ),
            )
        if self._conflicts:
            async with self.conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO ofisync.conflicts (entity, target_key, field, incoming_source,"
                    " incoming_value, incoming_commit_us, local_value, local_commit_us, policy,"
                    " winner) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    self._conflicts,
                )
        self._forget_writes()

    async def _flush_inserts(self, entity: Entity) -> None:
        table = entity.table(self.target)
        groups: dict[tuple[tuple[str, ...], str | None], list[dict[str, Any]]] = defaultdict(list)
        for row, generated in self._inserts[table]:
            groups[(tuple(row), generated)].append(row)
        for (names, generated), rows in groups.items():
            cur = await self.conn.execute(_insert_sql(table, names, generated), (json_rows(rows),))
            if generated is not None:
                for target_id, number in await cur.fetchall():
                    self.numbers[(table, target_id)] = number
                    if target_id in self.rows[table]:
                        self.rows[table][target_id][generated] = number

    async def _flush_updates(self, entity: Entity) -> None:
        table = entity.table(self.target)
        patches = self._patches[table]
        if not patches:
            return
        columns = tuple(sorted({c for patch in patches.values() for c in patch}))
        changes = [
            {"id": target_id, "patch": patch, "unlinked": self._unlinked[table][target_id]}
            for target_id, patch in patches.items()
        ]
        await self.conn.execute(_update_sql(table, columns), (json_rows(changes), list(patches)))


def too_long(
    texts: Iterable[tuple[str, str, str]], limits: dict[tuple[str, str], int]
) -> list[str]:
    """Which of `texts` (table, column, value) do not fit their column, said for a person:
    PostgreSQL's own error names the type, not the column."""
    found: dict[tuple[str, str], int] = {}
    for table, column, value in texts:
        most = limits.get((table, column))
        if most is not None and len(value) > most:
            found[(table, column)] = max(len(value), found.get((table, column), 0))
    return [
        f"{table}.{column} holds {limits[(table, column)]} characters, the value has {length}"
        for (table, column), length in sorted(found.items())
    ]
