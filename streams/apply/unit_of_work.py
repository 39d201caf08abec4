"""Unit of work (apply stage): the target rows one batch touches, read set-wise and written back
set-wise, inside the sink's batch transaction (streams/apply/batch.py).

The rows of a batch's commands are read, and locked, in one query per table, each with its clocks,
position and flags (streams/apply/statements.py); the parents its commands name are looked up in one
query per parent table, and the records a new one may be (streams/core/matching.py) in one more. All
of these are sent before any answer is awaited, and the ids of new rows are reserved with the
candidates' read: in the batch's pipeline, reading takes two round trips however many tables the
batch touches (one when it inserts nothing). The decisions (streams/apply/records.py) then run in
Python over these rows, and their writes wait here until `flush`: one INSERT per table and column
set, one UPDATE per table, one DELETE per table, one insert of conflicts. What the sync keeps about
a row lives in the row itself, so an applied change writes its row and nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable, Iterator, Sequence
from typing import Any

import psycopg

from streams.apply import statements as q
from streams.apply.statements import APPLIED_LSN, CLOCKS, DELETED, UNLINKED_FROM, json_rows
from streams.core.contract import ENTITIES, FILE
from streams.core.model import Command, CommandOp, Entity, Side

Row = dict[str, Any]
# Keeps what a sent read found, once it is answered.
Answer = Callable[[], Awaitable[None]]


async def _answered(reads: Iterable[Answer | None]) -> None:
    for keep in reads:
        if keep is not None:
            await keep()


def _rows(entity: Entity, side: Side, found: Iterable[Sequence[Any]]) -> list[Row]:
    """Rows as dicts: the columns of `row_columns`, then the resolved clocks (CLOCKS)."""
    names = q.row_columns(entity, side)
    width = len(names) + 1
    rows = []
    for values in found:
        if len(values) != width:
            raise ValueError(f"a row of {len(values)} values for {width} names: {names}")
        row = dict(zip(names, values, strict=False))  # to the last name: the clocks follow
        row[CLOCKS] = values[-1] or {}
        rows.append(row)
    return rows


async def ask_rows(
    conn: psycopg.AsyncConnection[Any],
    entity: Entity,
    side: Side,
    ids: Sequence[int] = (),
    links: Sequence[int] = (),
) -> psycopg.AsyncCursor[Any]:
    """Sends the read of the rows of `entity` on `side` with these ids, or linked (or, flagged,
    once linked) to these ids of the other side; locked, with their resolved clocks (CLOCKS).
    In a pipeline it is answered with the next read whose answer is awaited."""
    by_link = entity.link(side) is not None and bool(links)
    linked = q.int_array(links)  # matched twice: by link, and by the link a flagged row had
    params = [q.int_array(ids), linked, linked] if by_link else [q.int_array(ids)]
    return await conn.execute(q.select_sql(entity, side, by_link), params)


async def select_rows(
    conn: psycopg.AsyncConnection[Any],
    entity: Entity,
    side: Side,
    ids: Sequence[int] = (),
    links: Sequence[int] = (),
) -> list[Row]:
    """The rows `ask_rows` asks for."""
    cur = await ask_rows(conn, entity, side, ids, links)
    return _rows(entity, side, await cur.fetchall())


class WorkingSet:
    """One batch's target rows and its pending writes (see the module docstring)."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], target: Side) -> None:
        self.conn = conn
        self.target = target
        # Ids reserved for rows this batch inserts (sequence values stay valid after a rollback).
        self._free_ids: dict[str, list[int]] = defaultdict(list)
        self._reserving: dict[str, list[psycopg.AsyncCursor[Any]]] = defaultdict(list)
        # The inserts whose RETURNING gives own numbers, read once the batch is over.
        self._numbering: list[tuple[str, psycopg.AsyncCursor[Any]]] = []
        # Tables rows were written to with ids of their own (a replay restoring them).
        self._own_ids: set[str] = set()
        self._forget_reads()
        self._forget_writes()

    def _forget_reads(self) -> None:
        self.rows: dict[str, dict[int, Row]] = defaultdict(dict)
        self._loaded_ids: dict[str, set[int]] = defaultdict(set)
        # The other side's id → target id (None: no row holds it): linked rows, and parents.
        self._by_link: dict[str, dict[int, int | None]] = defaultdict(dict)
        # The other side's id → flagged target row that was linked to it before a delete.
        self._by_former: dict[str, dict[int, int]] = defaultdict(dict)
        self._parents: dict[str, dict[int, int | None]] = defaultdict(dict)
        # Matching key → target rows a new record may be (streams/core/matching.py).
        self._candidates: dict[str, dict[str, list[int]]] = defaultdict(dict)
        self._pnr_files: dict[int, bool] = {}  # OfiViaje file id → holds PNR tickets
        # The upserts `load` found no target row for: new records, or ones to match.
        self.unfound: list[Command] = []

    def _forget_writes(self) -> None:
        self._inserts: dict[str, list[tuple[Row, str | None]]] = defaultdict(list)
        self._patches: dict[str, dict[int, Row]] = defaultdict(dict)
        self._deletes: dict[str, set[int]] = defaultdict(set)
        self._conflicts: list[dict[str, Any]] = []

    def pending_texts(self) -> Iterator[tuple[str, str, str]]:
        """(table, column, value) of every text waiting to be written."""
        for table, inserts in self._inserts.items():
            for row, _ in inserts:
                yield from ((table, c, v) for c, v in row.items() if isinstance(v, str))
        for table, patches in self._patches.items():
            for write in patches.values():
                yield from ((table, c, v) for c, v in write["patch"].items() if isinstance(v, str))

    def forget(self) -> None:
        """Drops what was read and what waits to be written (after a savepoint rolled back, or
        when other code wrote to the target): later lookups read the database again."""
        self._forget_reads()
        self._forget_writes()

    # --- reads ---------------------------------------------------------------------------

    def _keep(self, entity: Entity, found: Iterable[Row]) -> None:
        table = entity.table(self.target)
        link = entity.link(self.target)
        for row in found:
            self.rows[table][row["id"]] = row
            self._loaded_ids[table].add(row["id"])
            if link is not None and row[link] is not None:
                self._by_link[table][row[link]] = row["id"]
            if row[DELETED] is not None and row[UNLINKED_FROM] is not None:
                self._by_former[table][row[UNLINKED_FROM]] = row["id"]

    async def _ask(
        self, entity: Entity, ids: Collection[int], links: Collection[int]
    ) -> Answer | None:
        """Sends the read of the rows of these ids and links that no read of this batch has
        covered; the step it returns keeps what the read found, once answered."""
        table = entity.table(self.target)
        loaded, known = self._loaded_ids[table], self._by_link[table]
        if all(i in loaded for i in ids) and all(v in known for v in links):
            return None  # asked for every command: its row was read with the batch's
        unread_ids = sorted(set(ids) - loaded)
        unread_links = sorted({value for value in links if value not in known})
        cur = await ask_rows(self.conn, entity, self.target, unread_ids, unread_links)

        async def keep() -> None:
            self._keep(entity, _rows(entity, self.target, await cur.fetchall()))
            loaded.update(unread_ids)
            for value in unread_links:
                known.setdefault(value, None)

        return keep

    async def _load(self, entity: Entity, ids: Collection[int], links: Collection[int]) -> None:
        await _answered([await self._ask(entity, ids, links)])

    async def load(self, commands: Sequence[Command]) -> None:
        """Reads the target rows of `commands` (row writes) and the parents they name,
        set-wise, all sent before any answer is awaited, and reserves ids for the rows they may
        insert."""
        by_entity: dict[str, list[Command]] = defaultdict(list)
        for cmd in commands:
            by_entity[cmd.entity].append(cmd)
        reads: list[Answer | None] = []
        for name, group in by_entity.items():
            entity = ENTITIES[name]
            own = [c for c in group if c.target is c.source]  # a side's own rows, by id
            other = [c for c in group if c.target is not c.source]
            ids = [int(c.link_key) for c in other if c.link_key is not None]
            links = [int(c.source_key) for c in other] if entity.link(self.target) else []
            reads.append(await self._ask(entity, ids + [int(c.source_key) for c in own], links))
            parent_field = entity.parent
            if parent_field is not None and parent_field.ref is not None and other:
                column = parent_field.column(self.target)
                wanted = {
                    int(value)
                    for c in other
                    for v in c.values
                    if v.field == column
                    for value in (v.after, v.before)
                    if value is not None
                }
                reads.append(await self._ask_parents(ENTITIES[parent_field.ref], wanted))
        await _answered(reads)
        self.unfound = [
            c
            for c in commands
            if c.op is CommandOp.UPSERT and self.cached(ENTITIES[c.entity], c) is None
        ]
        new: dict[str, set[str]] = defaultdict(set)
        for c in self.unfound:
            new[c.entity].add(c.source_key)
        for name, keys in new.items():
            await self._reserve_ids(ENTITIES[name], len(keys))

    async def load_candidates(self, entity: Entity, keys: Iterable[str]) -> None:
        """Reads the rows that new records with these matching keys may be (by tax id for
        clients, by number for files), locked like the rest."""
        table = entity.table(self.target)
        known = self._candidates[table]
        wanted = sorted({k for k in keys if k not in known})
        if not wanted:
            return
        by_tax_id = entity is not FILE
        cur = await self.conn.execute(q.candidates_sql(entity, self.target, by_tax_id), (wanted,))
        found = list(await cur.fetchall())
        rows = _rows(entity, self.target, (values[:-1] for values in found))
        self._keep(entity, rows)
        for key in wanted:
            known[key] = []
        for row, values in zip(rows, found, strict=True):
            known[values[-1]].append(row["id"])

    def candidates(self, entity: Entity, key: str) -> list[Row]:
        """The rows loaded for `key` (see `load_candidates`) that are still there."""
        table = entity.table(self.target)
        rows = self.rows[table]
        return [rows[i] for i in self._candidates[table].get(key, []) if i in rows]

    async def _ask_parents(self, parent: Entity, source_ids: Iterable[int]) -> Answer | None:
        """Sends the read of the target ids of these parents (by the source's ids) that no read
        of this batch has covered; the step it returns keeps them, once answered."""
        table = parent.table(self.target)
        link = parent.link(self.target)
        assert link is not None
        known, parents = self._by_link[table], self._parents[table]
        wanted = sorted({v for v in source_ids if v not in known and v not in parents})
        if not wanted:
            return None
        cur = await self.conn.execute(q.parents_sql(table, link), (wanted,))

        async def keep() -> None:
            found = dict(await cur.fetchall())
            for value in wanted:
                parents[value] = found.get(value)

        return keep

    def cached(self, entity: Entity, cmd: Command) -> Row | None:
        """The target row of `cmd` among those read: the row itself for a side's own command;
        else by the id the source knows, by link column, or flagged, by the id it was once
        linked to."""
        table = entity.table(self.target)
        rows = self.rows[table]
        if cmd.target is cmd.source:
            return rows.get(int(cmd.source_key))
        if cmd.link_key is not None:
            row = rows.get(int(cmd.link_key))
            if row is not None and row[entity.link(self.target) or "id"] in (
                None,
                int(cmd.source_key),
            ):
                return row
        source_id = int(cmd.source_key)
        target_id = self._by_link[table].get(source_id)
        if target_id is None:
            target_id = self._by_former[table].get(source_id)
        return None if target_id is None else rows.get(target_id)

    async def find(self, entity: Entity, cmd: Command) -> Row | None:
        """The target row of `cmd` (see `cached`), read when it was not."""
        # Found by id or link among the rows read, it is what a read would find (a link is
        # unique); a flagged one was found by its former link, which a read may still beat.
        row = self.cached(entity, cmd)
        if row is not None and row[DELETED] is None:
            return row
        if cmd.target is cmd.source:
            await self._load(entity, [int(cmd.source_key)], [])
        else:
            links = [int(cmd.source_key)] if entity.link(self.target) else []
            ids = [int(cmd.link_key)] if cmd.link_key is not None else []
            await self._load(entity, ids, links)
        return self.cached(entity, cmd)

    async def parent_id(self, parent: Entity, source_id: int) -> int | None:
        """The target id of the parent whose source id is `source_id`, if it is linked here."""
        table = parent.table(self.target)
        if source_id in self._by_link[table]:
            return self._by_link[table][source_id]
        await _answered([await self._ask_parents(parent, [source_id])])
        return self._parents[table][source_id]

    async def has_pnr_tickets(self, file_id: int) -> bool:
        """Whether OfiViaje's file `file_id` holds tickets captured from a PNR (placeholder
        zeroing): asked once for every file the batch has read."""
        if file_id not in self._pnr_files:
            files = self._known_ids(FILE) | {file_id}
            cur = await self.conn.execute(q.PNR_FILES_SQL, (sorted(files),))
            found = {row[0] for row in await cur.fetchall()}
            self._pnr_files.update((f, f in found) for f in files)
        return self._pnr_files[file_id]

    def _known_ids(self, entity: Entity) -> set[int]:
        table = entity.table(self.target)
        known = set(self.rows[table])
        for ids in (self._by_link[table].values(), self._parents[table].values()):
            known.update(i for i in ids if i is not None)
        return known

    async def _reserve_ids(self, entity: Entity, count: int) -> None:
        """Sends the reservation of `count` ids; they are read when an insert needs one, so in a
        pipeline the reservation goes with the batch's next read (the candidates')."""
        if count <= 0:
            return
        table = entity.table(self.target)
        self._reserving[table].append(
            await self.conn.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                (table, count),
            )
        )

    async def _free_id(self, entity: Entity) -> int:
        table = entity.table(self.target)
        free, reserving = self._free_ids[table], self._reserving[table]
        while not free:
            if not reserving:
                await self._reserve_ids(entity, 1)
            free += [int(r[0]) for r in await reserving.pop(0).fetchall()]
        return free.pop(0)

    # --- writes (pending until flush) ------------------------------------------------------

    async def insert(
        self,
        entity: Entity,
        columns: Row,
        clocks: dict[str, int | None],
        lsn: int | None,
        generated_number: str | None = None,
        own_id: int | None = None,
    ) -> Row:
        """Queues a new row (`own_id`: with that id, else a reserved one); `generated_number`: its
        own-number column, filled by ofisync.next_file_number() when flushed. Returns the row as
        later commands see it."""
        table = entity.table(self.target)
        if own_id is None:
            own_id = await self._free_id(entity)
        else:
            self._own_ids.add(table)
        row = {"id": own_id, **columns}
        written = dict(row, ofisync_clocks=q.clocks_json(clocks), ofisync_applied_lsn=lsn)
        self._inserts[table].append((written, generated_number))
        cached: Row = {name: row.get(name) for name in q.row_columns(entity, self.target)}
        cached[CLOCKS] = {c: us for c, us in clocks.items() if us is not None}
        cached[APPLIED_LSN] = lsn
        self._keep(entity, [cached])
        return cached

    def update(
        self,
        entity: Entity,
        row: Row,
        changes: Row,
        stamps: dict[str, int | None] | None = None,
        lsn: int | None = None,
        unlinked: bool = False,
    ) -> None:
        """Queues `changes` to a row, its fields' new clocks (`stamps`), the position of the
        change, and whether it unlinks the row (the other side deleted its record)."""
        table = entity.table(self.target)
        link = entity.link(self.target)
        if link is not None and link in changes and row[link] != changes[link]:
            if row[link] is not None:
                self._by_link[table][row[link]] = None
            if changes[link] is not None:
                self._by_link[table][changes[link]] = row["id"]
        write = self._patches[table].setdefault(
            row["id"], {"id": row["id"], "patch": {}, "clocks": None, "lsn": None}
        )
        if unlinked:
            write["unlinked"], write["former"] = True, row[link] if link else None
            row[DELETED] = True
        row.update(changes)
        write["patch"].update(changes)
        if stamps:
            row[CLOCKS] = {**row[CLOCKS], **stamps}
            write["clocks"] = q.clocks_json(row[CLOCKS])
        if lsn is not None and (row[APPLIED_LSN] is None or lsn > row[APPLIED_LSN]):
            row[APPLIED_LSN] = write["lsn"] = lsn

    def delete(self, entity: Entity, row: Row) -> None:
        table = entity.table(self.target)
        link = entity.link(self.target)
        self.rows[table].pop(row["id"], None)
        if link is not None and row[link] is not None:
            self._by_link[table][row[link]] = None
        self._patches[table].pop(row["id"], None)
        self._deletes[table].add(row["id"])

    def conflict(self, **record: Any) -> None:
        """A row of ofisync.conflicts (entity, target_key, field, incoming source, value and
        commit µs, local value and commit µs, policy, winner)."""
        self._conflicts.append(record)

    async def flush(self) -> None:
        """Writes what waits, set-wise: inserts (parents first), updates, deletes (children
        first), conflicts."""
        order = list(ENTITIES.values())
        for entity in order:
            await self._flush_inserts(entity)
        for entity in order:
            await self._flush_updates(entity)
        for entity in reversed(order):
            table = entity.table(self.target)
            if self._deletes[table]:
                await self.conn.execute(q.delete_sql(table), (sorted(self._deletes[table]),))
        if self._conflicts:
            await self.conn.execute(q.CONFLICTS_SQL, (json_rows(self._conflicts),))
        for table in sorted(self._own_ids):
            await self.conn.execute(q.bump_sequence_sql(table))
        self._own_ids.clear()
        self._forget_writes()

    async def _flush_inserts(self, entity: Entity) -> None:
        table = entity.table(self.target)
        groups: dict[tuple[tuple[str, ...], str | None], list[Row]] = defaultdict(list)
        for row, generated in self._inserts[table]:
            groups[(tuple(row), generated)].append(row)
        for (names, generated), rows in groups.items():
            cur = await self.conn.execute(q.insert_sql(table, names, generated), (json_rows(rows),))
            if generated is not None:
                self._numbering.append((table, cur))

    async def generated_numbers(self) -> dict[tuple[str, int], str]:
        """(table, id) → the own number generated for a row this batch inserted. Read once the
        batch is over: in a pipeline, the inserts' answers come with the COMMIT's."""
        return {
            (table, target_id): number
            for table, cur in self._numbering
            for target_id, number in await cur.fetchall()
        }

    async def _flush_updates(self, entity: Entity) -> None:
        table = entity.table(self.target)
        patches = self._patches[table]
        if not patches:
            return
        columns = tuple(sorted({c for write in patches.values() for c in write["patch"]}))
        await self.conn.execute(
            q.update_sql(table, columns), (q.int_array(patches), json_rows(list(patches.values())))
        )


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
