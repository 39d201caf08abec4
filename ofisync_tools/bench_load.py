"""Benchmark load (operations): the changes `ofisync bench` writes and how it sees them land.

A `Lane` is one direction of one system (the sync, or the native reference of
ofisync_tools/bench_native.py): it writes realistic changes at the source in short transactions on
one connection and reads, on another, the target rows of the changes still on their way.
Client updates carry a tag "bench <run> <seq>" in the notes, so the target row version that
holds a change is recognised; new files and segments are found by their link column (the sync)
or their id (the native copy). Each change keeps its source transaction id, whose commit time is
read afterwards with `pg_xact_commit_timestamp`, and the arrival time of the target version
(the route's `arrived` expression). A client is changed again only after its previous change
landed, so no version is overwritten before it is seen.

The stage breakdown (`stages`) follows the same client updates through Kafka: when Debezium
read each (its envelope's ts_us), when Connect produced it, and when the worker's write of it
committed on the target.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
from psycopg import sql

from streams.core.model import Side
from streams.settings import Settings
from streams.stack.procs import StackError

TAG = "bench"
CLIENT_SHARE = 0.7  # events that are client updates; the rest are new files
BACKLOG_TX = 100  # changes per transaction while a backlog is built


def tag(run: str, seq: int) -> str:
    return f"{TAG} {run} {seq}"


def tag_of(notes: str | None) -> str | None:
    """The bench tag at the start of a notes field ("bench <run> <seq> …"), if any."""
    parts = (notes or "").split(" ", 3)
    return " ".join(parts[:3]) if len(parts) >= 3 and parts[0] == TAG else None


Pair = tuple[int, int]  # a bench client: its id on the source side, its id on the target side


@dataclass(frozen=True)
class Landing:
    """Where one kind of change lands on the target and how it is recognised there."""

    table: str
    key: str  # the target column that holds the change's key
    tag: str | None = None  # the target column that carries a client update's tag


SYSTEMS = ("ofisync", "native")  # what a Route runs through: the sync, or the reference


@dataclass(frozen=True)
class Route:
    """One direction of one system: where changes are written and where they land."""

    system: str
    source: Side
    source_dsn: str
    target_dsn: str
    landings: Mapping[str, Landing]  # kind ("client", "file", "segment") → landing
    arrived: str  # SQL: when the target row version arrived (a timestamptz)
    pairs: tuple[Pair, ...]

    @property
    def direction(self) -> str:
        return f"{self.source.value}_to_{self.source.other.value}"


OURS_LANDINGS = {
    Side.ERP: {"client": Landing("accounts", "id", "notes"), "file": Landing("files", "erp_id")},
    Side.CRM: {
        "client": Landing("clientes", "id", "observaciones"),
        "file": Landing("expedientes", "crm_id"),
        "segment": Landing("billetes", "crm_trayecto_id"),
    },
}
NATIVE_LANDINGS = {
    Side.ERP: {"client": Landing("clientes", "id", "observaciones"),
               "file": Landing("expedientes", "id")},
    Side.CRM: {"client": Landing("accounts", "id", "notes"), "file": Landing("files", "id"),
               "segment": Landing("segments", "id")},
}  # fmt: skip
OURS_ARRIVED = "pg_xact_commit_timestamp(xmin)"

_UPDATE_CLIENTS = {
    Side.ERP: "UPDATE clientes c SET observaciones = v.notes,"
    " telefono = coalesce(v.phone, c.telefono), movil = coalesce(v.mobile, c.movil),"
    " email = coalesce(v.email, c.email), direccion = coalesce(v.street, c.direccion)",
    Side.CRM: "UPDATE accounts c SET notes = v.notes,"
    " phone = coalesce(v.phone, c.phone), mobile = coalesce(v.mobile, c.mobile),"
    " email = coalesce(v.email, c.email), street = coalesce(v.street, c.street)",
}
_FROM_CLIENTS = (
    " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[])"
    " AS v(id, notes, phone, mobile, email, street) WHERE c.id = v.id"
)
_INSERT_FILES = {
    Side.ERP: "INSERT INTO expedientes (numero, cliente_id, vendedor_id, sucursal_id, serie, tipo,"
    " descripcion, destino, fecha_salida, fecha_regreso, pasajeros, importe_total, estado)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::bigint[], %s::text[],"
    " %s::text[], %s::text[], %s::text[], %s::date[], %s::date[], %s::int[], %s::numeric[],"
    " %s::text[]) RETURNING id, numero",
    Side.CRM: "INSERT INTO files (file_number, account_id, owner_username, agency_id, title,"
    " destination, departure_date, return_date, travellers, total_amount, status, stage,"
    " priority, next_follow_up, crm_notes, lead_source)"
    " SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[],"
    " %s::text[], %s::date[], %s::date[], %s::int[], %s::numeric[], %s::text[], %s::text[],"
    " %s::text[], %s::date[], %s::text[], %s::text[]) RETURNING id, file_number",
}
_INSERT_SEGMENTS = (
    "INSERT INTO segments (file_id, kind, origin, destination, departure_at, carrier,"
    " service_number, passenger_name, fare)"
    " SELECT * FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::timestamp[],"
    " %s::text[], %s::text[], %s::text[], %s::numeric[])"
    " RETURNING id"
)
CLIENT_COLUMNS = {
    Side.ERP: ("nombre", "nif", "direccion", "codigo_postal", "poblacion", "provincia", "pais",
               "contacto", "cargo_contacto", "telefono", "movil", "email", "observaciones"),
    Side.CRM: ("name", "tax_id", "street", "postal_code", "city", "region", "country",
               "contact_name", "contact_title", "phone", "mobile", "email", "notes"),
}  # fmt: skip


def _columns(rows: Sequence[Sequence[Any]], width: int) -> list[list[Any]]:
    """Rows as one list per column (for `unnest`)."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


@dataclass(frozen=True)
class Values:
    """Realistic content for the load, from the demo data generator and the mapping in place."""

    clients: tuple[tuple[Any, ...], ...]  # the 13 synced client fields
    erp_files: tuple[tuple[Any, ...], ...]  # serie, tipo, descripcion … estado
    crm_files: tuple[tuple[tuple[Any, ...], tuple[tuple[Any, ...], ...]], ...]  # values, segments
    sellers: tuple[int | None, ...]
    branches: tuple[int | None, ...]
    owners: tuple[tuple[str | None, str | None], ...]  # CRM user name and agency

    @classmethod
    def load(cls, settings: Settings) -> Values:
        from ofisync_tools.demo import build_demo

        demo = build_demo(seed=11)
        with psycopg.connect(settings.erp.dsn) as erp, psycopg.connect(settings.crm.dsn) as crm:
            sellers = [r[0] for r in erp.execute("SELECT id FROM vendedores ORDER BY id")]
            branches = [r[0] for r in erp.execute("SELECT id FROM sucursales ORDER BY id")]
            owners = crm.execute("SELECT username, agency_id FROM users ORDER BY id").fetchall()
        return cls(
            clients=tuple(c.values for c in [*demo.clients, *demo.accounts]),
            erp_files=tuple(
                (
                    f.serie,
                    f.tipo,
                    f.descripcion,
                    f.destino,
                    f.salida,
                    f.regreso,
                    f.pasajeros,
                    f.importe,
                    f.estado,
                )
                for f in demo.erp_files
            ),
            crm_files=tuple((f.values[3:], tuple(f.segments)) for f in demo.crm_files),
            sellers=tuple(sellers) or (None,),
            branches=tuple(branches) or (None,),
            owners=tuple((r[0], r[1]) for r in owners) or ((None, None),),
        )


@dataclass
class Change:
    kind: str
    key: int  # the value of the landing's key column on the target
    xid: int  # the source transaction (32 bits, as pg_xact_commit_timestamp takes it)
    tag: str | None = None
    pair: Pair | None = None
    source_us: int | None = None
    target_us: int | None = None


class Lane:
    """One direction of one system under load: writes changes at the source, one transaction at
    a time on one connection, and watches them land on the target on another."""

    def __init__(self, route: Route, values: Values, run: str, seqs: Iterator[int]) -> None:
        self.route = route
        self.values = values
        self.run = run
        self.seqs = seqs
        self.rng = random.Random(f"{run}-{route.system}-{route.direction}")
        shuffled = list(route.pairs)
        self.rng.shuffle(shuffled)
        self.free: deque[Pair] = deque(shuffled)
        self.waiting: dict[str, dict[int, Change]] = {kind: {} for kind in route.landings}
        self.landed: list[Change] = []
        self.written = 0
        self.arrival = asyncio.Event()
        self._src: psycopg.AsyncConnection[Any] | None = None
        self._dst: psycopg.AsyncConnection[Any] | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[Lane]:
        self._src = await _connect(self.route.source_dsn, autocommit=False)
        try:
            self._dst = await _connect(self.route.target_dsn, autocommit=True)
            try:
                yield self
            finally:
                await self._dst.close()
        finally:
            await self._src.close()

    @property
    def src(self) -> psycopg.AsyncConnection[Any]:
        assert self._src is not None, "open the lane first"
        return self._src

    @property
    def dst(self) -> psycopg.AsyncConnection[Any]:
        assert self._dst is not None, "open the lane first"
        return self._dst

    @property
    def in_flight(self) -> int:
        return sum(len(w) for w in self.waiting.values())

    def _client_update(self, pair: Pair) -> tuple[Any, ...]:
        v = self.rng.choice(self.values.clients)
        notes = tag(self.run, next(self.seqs))
        if v[12]:
            notes += f" · {v[12]}"
        street, phone, mobile, email = (
            x if self.rng.random() < 0.4 else None for x in (v[2], v[9], v[10], v[11])
        )
        return (pair[0], notes, phone, mobile, email, street)

    async def write(self, budget: int) -> int:
        """Writes about `budget` changes (a whole file with its segments counts fully) in one
        source transaction; fewer when every bench client still has a change on its way."""
        updates: list[tuple[Any, ...]] = []
        targets: list[Pair] = []
        files: list[tuple[Any, ...]] = []
        segments: dict[str, tuple[tuple[Any, ...], ...]] = {}
        n = 0
        side = self.route.source
        while n < budget:
            if self.rng.random() < CLIENT_SHARE:
                if not self.free:
                    break
                pair = self.free.popleft()
                targets.append(pair)
                updates.append(self._client_update(pair))
                n += 1
                continue
            number = f"B{self.run}-{next(self.seqs)}"
            if side is Side.ERP:
                serie, tipo, *rest = self.rng.choice(self.values.erp_files)
                client = self.rng.choice(self.route.pairs)[0]
                seller = self.rng.choice(self.values.sellers)
                branch = self.rng.choice(self.values.branches)
                year = date.today().year
                files.append((f"{year}/{number}", client, seller, branch, serie, tipo, *rest))
                n += 1
            else:
                values, legs = self.rng.choice(self.values.crm_files)
                owner, agency = self.rng.choice(self.values.owners)
                files.append((f"CRM-{number}", self.rng.choice(self.route.pairs)[0], owner,
                              agency, *values))  # fmt: skip
                segments[f"CRM-{number}"] = legs
                n += 1 + len(legs)
        if not n:
            return 0
        changes: list[Change] = []
        async with self.src.transaction():
            cur = await self.src.execute("SELECT pg_current_xact_id()::text")
            row = await cur.fetchone()
            assert row is not None
            xid = int(row[0]) & 0xFFFFFFFF
            if updates:
                await self.src.execute(_UPDATE_CLIENTS[side] + _FROM_CLIENTS, _columns(updates, 6))
                for (_, notes, *_rest), pair in zip(updates, targets, strict=True):
                    changes.append(Change("client", pair[1], xid, tag_of(notes), pair))
            if files:
                cur = await self.src.execute(_INSERT_FILES[side], _columns(files, len(files[0])))
                legs_rows = []
                for file_id, number in await cur.fetchall():
                    changes.append(Change("file", int(file_id), xid))
                    legs_rows += [(file_id, *leg) for leg in segments.get(number, ())]
                if legs_rows:
                    cur = await self.src.execute(_INSERT_SEGMENTS, _columns(legs_rows, 9))
                    changes += [Change("segment", int(r[0]), xid) for r in await cur.fetchall()]
        for c in changes:
            self.waiting[c.kind][c.key] = c
        self.written += len(changes)
        return len(changes)

    async def write_backlog(self, total: int, done: Callable[[int], None]) -> dict[int, str]:
        """Writes `total` client updates round-robin over every bench client, BACKLOG_TX per
        transaction, as fast as possible, whatever is on its way; returns the last tag written
        for each client (by target id)."""
        pairs = list(self.route.pairs)
        size = min(BACKLOG_TX, len(pairs))
        last: dict[int, str] = {}
        offset = 0
        written = 0
        while written < total:
            chunk = [pairs[(offset + i) % len(pairs)] for i in range(min(size, total - written))]
            offset += len(chunk)
            rows = [self._client_update(p) for p in chunk]
            async with self.src.transaction():
                await self.src.execute(
                    _UPDATE_CLIENTS[self.route.source] + _FROM_CLIENTS, _columns(rows, 6)
                )
            for p, r in zip(chunk, rows, strict=True):
                last[p[1]] = tag_of(r[1]) or ""
            written += len(chunk)
            done(written)
        self.written += written
        return last

    def _query(self, landing: Landing) -> sql.Composed:
        return sql.SQL(
            "SELECT {}, {}, (extract(epoch FROM {}) * 1000000)::bigint FROM {} WHERE {} = ANY(%s)"
        ).format(
            sql.Identifier(landing.key),
            sql.Identifier(landing.tag) if landing.tag else sql.SQL("NULL"),
            sql.SQL(self.route.arrived),
            sql.Identifier(landing.table),
            sql.Identifier(landing.key),
        )

    async def poll(self) -> int:
        """Reads the target rows of the changes on their way; keeps the arrival time of those
        that landed. Returns how many landed."""
        landed = 0
        for kind, waiting in self.waiting.items():
            if not waiting:
                continue
            cur = await self.dst.execute(self._query(self.route.landings[kind]), (list(waiting),))
            for key, notes, arrived_us in await cur.fetchall():
                change = waiting.get(int(key))
                if change is None or arrived_us is None:
                    continue
                if change.tag is not None and tag_of(notes) != change.tag:
                    continue
                change.target_us = int(arrived_us)
                del waiting[change.key]
                self.landed.append(change)
                if change.pair is not None:
                    self.free.append(change.pair)
                landed += 1
        if landed:
            self.arrival.set()
        return landed

    async def landed_last(self, last: Mapping[int, str]) -> tuple[int, int | None]:
        """How many clients hold their last tag on the target, and the latest arrival time."""
        cur = await self.dst.execute(self._query(self.route.landings["client"]), (list(last),))
        found, latest = 0, None
        for key, notes, arrived_us in await cur.fetchall():
            if tag_of(notes) == last.get(int(key)) and arrived_us is not None:
                found += 1
                latest = max(latest or 0, int(arrived_us))
        return found, latest

    async def resolve(self) -> None:
        """The source commit time of every landed change, from its transaction id."""
        xids = sorted({c.xid for c in self.landed if c.source_us is None})
        if not xids:
            return
        cur = await self.src.execute(
            "SELECT x, (extract(epoch FROM pg_xact_commit_timestamp(x::text::xid)) * 1000000)"
            "::bigint FROM unnest(%s::bigint[]) AS x",
            (xids,),
        )
        times = {int(x): t for x, t in await cur.fetchall()}
        await self.src.commit()
        for c in self.landed:
            t = times.get(c.xid)
            c.source_us = None if t is None else int(t)

    def latencies(self, kind: str | None = None) -> list[float]:
        return [
            (c.target_us - c.source_us) / 1000
            for c in self.landed
            if c.source_us is not None and c.target_us is not None and kind in (None, c.kind)
        ]


async def _connect(dsn: str, autocommit: bool) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, application_name="ofisync-bench", connect_timeout=5
        )
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0]
        raise StackError(
            f"a database did not answer ({first}); is the stack up (`ofisync up`)?"
        ) from exc


# --- Kafka: what Debezium captured, the worker's lag, and where the time went ---------------


def _kafka_consumer(settings: Settings) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=str(settings.kafka),
        client_id="ofisync-bench",
        enable_auto_commit=False,
        consumer_timeout_ms=1000,
    )


def end_offsets(settings: Settings, topics: Sequence[str]) -> dict[Any, int]:
    from kafka import TopicPartition

    consumer = _kafka_consumer(settings)
    try:
        parts = [
            TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()
        ]
        found: dict[Any, int] = consumer.end_offsets(parts) if parts else {}
        return found
    finally:
        consumer.close()


def _records(settings: Settings, since: Mapping[Any, int]) -> Iterator[Any]:
    """Every record of the partitions in `since` from those offsets to their current end."""
    consumer = _kafka_consumer(settings)
    try:
        ends = consumer.end_offsets(list(since))
        todo = {tp: end for tp, end in ends.items() if end > since[tp]}
        if not todo:
            return
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, since[tp])
        while todo:
            batch = consumer.poll(timeout_ms=1000, max_records=5000)
            if not batch:
                return
            for tp, records in batch.items():
                for record in records:
                    if record.offset < todo.get(tp, -1):
                        yield record
                if records and records[-1].offset + 1 >= todo.get(tp, 0):
                    todo.pop(tp, None)
    finally:
        consumer.close()


def worker_lag(settings: Settings) -> int:
    """The worker's consumer lag, in messages (as `ofisync lag` counts it)."""
    from streams.ops.lag import consumer_lag

    return sum(p.lag or 0 for p in consumer_lag(settings) if p.group == settings.worker_group)


def notes_column(side: Side) -> str:
    return "observaciones" if side is Side.ERP else "notes"


def client_table(side: Side) -> str:
    return "clientes" if side is Side.ERP else "accounts"


def stages(settings: Settings, lane: Lane, since: Mapping[Any, int]) -> dict[str, list[float]]:
    """Where the time of a lane's client updates went, in ms per change and stage: source
    commit → read by Debezium (its envelope's ts_us) → produced to Kafka by Connect (record
    time) → applied by the worker (target commit). `since`: the topics' end offsets before the
    load."""
    from streams.core.topics import Topics

    source = lane.route.source
    capture = Topics(settings.tenant).capture(source, client_table(source))
    changes = {c.tag: c for c in lane.landed if c.tag and c.source_us and c.target_us}
    read: dict[str, float] = {}
    produced: dict[str, float] = {}
    ours = {tp: offset for tp, offset in since.items() if tp.topic == capture}
    for record in _records(settings, ours):
        try:
            envelope = json.loads(record.value)
            t = tag_of((envelope.get("after") or {}).get(notes_column(source)))
        except (ValueError, TypeError, AttributeError):
            continue  # not a bench change
        if t in changes and t not in read:
            read[t] = envelope["ts_us"] / 1000
            produced[t] = float(record.timestamp)
    spans: dict[str, list[float]] = {"debezium_read": [], "connect_produced": [], "applied": []}
    for t, c in changes.items():
        if t in read and c.source_us is not None and c.target_us is not None:
            spans["debezium_read"].append(read[t] - c.source_us / 1000)
            spans["connect_produced"].append(produced[t] - read[t])
            spans["applied"].append(c.target_us / 1000 - produced[t])
    return spans


def table_writes(settings: Settings) -> dict[str, dict[str, int]]:
    """Rows written so far to every table of both databases (inserted, updated, deleted), by
    side and `schema.table` (PostgreSQL's cumulative statistics; the heartbeat left out)."""
    found: dict[str, dict[str, int]] = {}
    for db in settings.databases:
        with psycopg.connect(db.dsn, connect_timeout=5) as conn:
            found[db.side] = {
                f"{schema}.{table}": int(n)
                for schema, table, n in conn.execute(
                    "SELECT schemaname, relname, n_tup_ins + n_tup_upd + n_tup_del"
                    " FROM pg_stat_user_tables WHERE relname <> 'heartbeat'"
                )
            }
    return found


def bookkeeping(
    before: Mapping[str, Mapping[str, int]],
    after: Mapping[str, Mapping[str, int]],
    target: Side,
    changes: int,
) -> dict[str, float]:
    """Rows written per change applied while the sync applied `changes` to `target` and nothing
    else wrote: to the application's tables of the target (the rows themselves; several changes
    of one row in one batch are one write), and besides them (the sync's own tables on both
    sides, and the source's rows: link-backs)."""

    def delta(side: str, keep: Callable[[str], bool]) -> int:
        return sum(n - before[side].get(t, 0) for t, n in after[side].items() if keep(t))

    def public(table: str) -> bool:
        return table.startswith("public.")

    rows = delta(target.value, public)
    besides = delta(target.other.value, public) + sum(
        delta(side.value, lambda t: not public(t)) for side in Side
    )
    return {
        "target_rows_per_change": round(rows / changes, 3) if changes else 0.0,
        "other_rows_per_change": round(besides / changes, 3) if changes else 0.0,
    }
