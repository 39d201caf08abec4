"""A randomized two-sided history (issue 28): people on both sides doing ordinary things at once,
seeded and reproducible, and then a check that the sync kept its promises.

At random, on both sides: new records, edits of the same and of different fields, the same field
edited on both sides while one transaction holds the row, deletes, a client unchecked and checked
again, CRM files with their segments (children and parents written together), OfiViaje files,
values too long for the other side (each fixed a little later, as a person would after reading
the dead letter), and once, a SIGKILL of the worker. Every write is a person's, committed, with
its commit time read from PostgreSQL.

Then: every paused client is checked again and the refused dead letters retried, the sync is
waited for, and the history is checked. Both sides equal (`verify`, and a column by column SQL
comparison of its own); no record twice; no deleted record back (its pair flagged and unlinked);
every field of every pair holding the value of the latest commit that wrote it on either side
(the default policy: the later commit wins); nothing left parked.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from streams.core.model import Side
from streams.ops.dlq import read_all, retry
from streams.ops.verify import verify
from streams.settings import Settings

# Client fields people edit here, by side: (ERP column, CRM column, most characters on ERP).
FIELDS = (("telefono", "phone", 30), ("email", "email", 254), ("observaciones", "notes", None))
CRM_COLUMN = {erp: crm for erp, crm, _ in FIELDS}
TABLE = {Side.ERP: "clientes", Side.CRM: "accounts"}
NAME = {Side.ERP: "nombre", Side.CRM: "name"}
LINK = {Side.ERP: "crm_id", Side.CRM: "erp_id"}


@dataclass(frozen=True)
class Write:
    """A person's committed write of one field of one record."""

    side: Side
    record: int
    field: str  # the ERP column of the field
    value: str | None
    commit_us: int


@dataclass
class Outcome:
    seed: int
    steps: int
    writes: int
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


class People:
    """The people of both sides, writing on connections of their own."""

    def __init__(self, settings: Settings, tag: str) -> None:
        self.settings = settings
        self.tag = tag
        self.writes: list[Write] = []
        self.names: dict[Side, list[str]] = {Side.ERP: [], Side.CRM: []}
        self.deleted: dict[Side, list[str]] = {Side.ERP: [], Side.CRM: []}  # names
        self.unchecked: set[int] = set()
        self._lock = threading.Lock()
        self._seq = 0
        self.parked_before = {side: self._last_parked(side) for side in Side}

    def dsn(self, side: Side) -> str:
        return (self.settings.erp if side is Side.ERP else self.settings.crm).dsn

    def value(self, what: str) -> str:
        with self._lock:
            self._seq += 1
            return f"{what}-{self.tag}-{self._seq}"

    def commit(
        self, side: Side, statement: str, params: Any, hold_s: float = 0.0
    ) -> tuple[list[tuple[Any, ...]], int]:
        """Runs one statement in a transaction of its own (holding it `hold_s`); its rows and
        commit time."""
        with psycopg.connect(self.dsn(side)) as conn:
            cur = conn.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
            xid = conn.execute("SELECT txid_current() % 4294967296").fetchone()
            assert xid is not None
            if hold_s:
                time.sleep(hold_s)
            conn.commit()
            at = conn.execute(
                "SELECT (extract(epoch FROM pg_xact_commit_timestamp(%s::text::xid)) * 1e6)"
                "::bigint",
                (str(xid[0]),),
            ).fetchone()
            assert at is not None
            return rows, int(at[0])

    def _last_parked(self, side: Side) -> int:
        with psycopg.connect(self.dsn(side)) as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM ofisync.parked").fetchone()
            return int(row[0]) if row else 0

    def parked(self) -> dict[Side, int]:
        """Changes of this history still parked, per target side."""
        found = {}
        for side in Side:
            with psycopg.connect(self.dsn(side)) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM ofisync.parked WHERE id > %s", (self.parked_before[side],)
                ).fetchone()
                found[side] = int(row[0]) if row else 0
        return found

    def wait_released(self, timeout_s: float) -> None:
        """Waits (up to `timeout_s`) until nothing of this history is parked."""
        deadline = time.monotonic() + timeout_s
        while any(self.parked().values()) and time.monotonic() < deadline:
            time.sleep(0.5)

    def linked(self) -> list[tuple[int, int]]:
        """This history's client pairs: (OfiViaje id, CRM id)."""
        with psycopg.connect(self.dsn(Side.ERP)) as conn:
            return [
                (int(a), int(b))
                for a, b in conn.execute(
                    "SELECT id, crm_id FROM clientes WHERE nombre LIKE %s AND crm_id IS NOT NULL"
                    " AND ofisync_deleted_at IS NULL ORDER BY id",
                    (f"h {self.tag} %",),
                )
            ]

    def new(self, side: Side) -> None:
        name = f"h {self.tag} {side.value} {self.value('n')}"
        values = {erp if side is Side.ERP else crm: self.value(erp[:3]) for erp, crm, _ in FIELDS}
        columns: dict[str, Any] = {NAME[side]: name, **values}
        if side is Side.ERP:
            columns["sincronizar_crm"] = True
        rows, at = self.commit(
            side,
            f"INSERT INTO {TABLE[side]} ({', '.join(columns)}) VALUES"
            f" ({', '.join(['%s'] * len(columns))}) RETURNING id",
            list(columns.values()),
        )
        self.names[side].append(name)
        for erp_column, crm_column, _ in FIELDS:
            column = erp_column if side is Side.ERP else crm_column
            self.writes.append(Write(side, int(rows[0][0]), erp_column, values[column], at))

    def edit(
        self, side: Side, record: int, erp_column: str, value: str | None, hold_s: float = 0
    ) -> None:
        column = CRM_COLUMN[erp_column] if side is Side.CRM else erp_column
        _, at = self.commit(
            side, f"UPDATE {TABLE[side]} SET {column} = %s WHERE id = %s", (value, record), hold_s
        )
        with self._lock:
            self.writes.append(Write(side, record, erp_column, value, at))

    def delete(self, side: Side, record: int) -> None:
        try:
            rows, _ = self.commit(
                side, f"DELETE FROM {TABLE[side]} WHERE id = %s RETURNING {NAME[side]}", (record,)
            )
        except psycopg.errors.ForeignKeyViolation:
            return  # it has files: the application refuses, as it would a person
        if rows:
            self.deleted[side].append(str(rows[0][0]))

    def check(self, client: int, checked: bool) -> None:
        self.commit(Side.ERP, "UPDATE clientes SET sincronizar_crm = %s WHERE id = %s",
                    (checked, client))  # fmt: skip
        (self.unchecked.discard if checked else self.unchecked.add)(client)

    def crm_file(self, account: int, segments: int) -> None:
        with psycopg.connect(self.dsn(Side.CRM)) as conn:
            row = conn.execute(
                "INSERT INTO files (file_number, account_id, title) VALUES (%s, %s, %s)"
                " RETURNING id",
                (self.value("HF"), account, self.value("t")),
            ).fetchone()
            assert row is not None
            for n in range(segments):
                conn.execute(
                    "INSERT INTO segments (file_id, kind, origin, destination) VALUES"
                    " (%s, 'flight', 'MAD', %s)",
                    (row[0], f"D{n}"),
                )

    def erp_file(self, client: int) -> None:
        self.commit(
            Side.ERP,
            "INSERT INTO expedientes (numero, cliente_id, descripcion) VALUES (%s, %s, %s)",
            (self.value("HE"), client, self.value("d")),
        )


def run_history(
    settings: Settings,
    seed: int,
    steps: int,
    kill_worker: Callable[[], None],
    wait: Callable[[str], None],
    say: Callable[[str], None] = lambda _: None,
) -> Outcome:
    """Runs `steps` random operations from `seed`, then checks them (see the module docstring).
    `kill_worker` SIGKILLs the worker and starts it again; `wait(what)` returns once the sync
    has caught up (or fails)."""
    rnd = random.Random(seed)
    # The operations follow the seed; the names are this run's own, so runs never meet.
    people = People(settings, f"{seed}x{uuid.uuid4().hex[:6]}")

    def settled(what: str) -> None:
        wait(what)
        people.wait_released(60)

    for side in Side:
        for _ in range(4):
            people.new(side)
    settled("the first records linked")
    kill_at = rnd.randrange(steps // 3, 2 * steps // 3) if steps > 3 else -1
    fixes: list[tuple[int, int, str]] = []  # (step, CRM account, ERP column) of too-long values
    holders: list[threading.Thread] = []
    for step in range(steps):
        pairs = people.linked()
        if step == kill_at:
            say(f"step {step}: the worker is killed")
            kill_worker()
        for due in [f for f in fixes if f[0] == step]:
            people.edit(Side.CRM, due[1], due[2], people.value("fix"))
            fixes.remove(due)
        kind = rnd.choices(
            ["edit", "both", "new", "delete", "flip", "crm_file", "erp_file", "too_long"],
            weights=[40, 10, 12, 3, 5, 6, 6, 4],
        )[0]
        if not pairs and kind not in ("new",):
            kind = "new"
        if kind == "new":
            people.new(rnd.choice(list(Side)))
            continue
        client, account = rnd.choice(pairs)
        erp_column = rnd.choice(FIELDS)[0]
        if kind == "edit":
            side = rnd.choice(list(Side))
            record = client if side is Side.ERP else account
            people.edit(side, record, erp_column, people.value("e"))
        elif kind == "both":
            # The CRM holds its row while OfiViaje changes the same field, then commits last.
            holder = threading.Thread(
                target=people.edit,
                args=(Side.CRM, account, erp_column, people.value("late"), 1.0),
            )
            holder.start()
            holders.append(holder)
            time.sleep(0.2)
            people.edit(Side.ERP, client, erp_column, people.value("early"))
        elif kind == "delete":
            side = rnd.choice(list(Side))
            people.delete(side, client if side is Side.ERP else account)
        elif kind == "flip":
            people.check(client, client in people.unchecked)
        elif kind == "crm_file":
            people.crm_file(account, rnd.randrange(0, 4))
        elif kind == "erp_file":
            people.erp_file(client)
        elif kind == "too_long":
            people.edit(Side.CRM, account, "telefono", "9" * 35)
            fixes.append((min(step + rnd.randrange(1, 6), steps - 1), account, "telefono"))
    for holder in holders:
        holder.join()
    for _, account, erp_column in fixes:
        people.edit(Side.CRM, account, erp_column, people.value("fix"))
    for client in sorted(people.unchecked):
        people.check(client, True)
    settled("the history applied")
    letters = [d for d in read_all(settings) if not d.retried and "shorten it" in d.reason]
    retry(settings, letters, lambda _: None)
    settled("the dead letters retried")
    return _check(settings, people, seed, steps)


def _check(settings: Settings, people: People, seed: int, steps: int) -> Outcome:
    outcome = Outcome(seed, steps, len(people.writes))
    problems = outcome.problems
    report = verify(settings)
    problems += [f"verify: {d}" for d in report.differences] + [
        f"verify: {o}" for o in report.one_sided
    ]
    pairs = people.linked()
    outcome.counts = {"pairs": len(pairs), "writes": len(people.writes)}
    latest: dict[tuple[Side, int, str], Write] = {}
    for w in people.writes:
        key = (w.side, w.record, w.field)
        if key not in latest or w.commit_us > latest[key].commit_us:
            latest[key] = w
    with (
        psycopg.connect(settings.erp.dsn) as erp,
        psycopg.connect(settings.crm.dsn) as crm,
    ):
        for client, account in pairs:
            erp_row = erp.execute(
                f"SELECT {', '.join(f[0] for f in FIELDS)} FROM clientes WHERE id = %s", (client,)
            ).fetchone()
            crm_row = crm.execute(
                f"SELECT {', '.join(f[1] for f in FIELDS)} FROM accounts WHERE id = %s", (account,)
            ).fetchone()
            if erp_row != crm_row:
                problems.append(f"client {client} ⇄ account {account}: {erp_row} ≠ {crm_row}")
                continue
            for n, (erp_column, _, _) in enumerate(FIELDS):
                candidates = [
                    w for w in (latest.get((Side.ERP, client, erp_column)),
                                latest.get((Side.CRM, account, erp_column))) if w is not None
                ]  # fmt: skip
                if candidates:
                    newest = max(candidates, key=lambda w: w.commit_us)
                    if erp_row is not None and erp_row[n] != newest.value:
                        problems.append(
                            f"client {client} {erp_column}: holds {erp_row[n]!r}, the latest"
                            f" commit wrote {newest.value!r} on the {newest.side.value} side"
                        )
        for side, conn in ((Side.ERP, erp), (Side.CRM, crm)):
            twice = conn.execute(
                f"SELECT {NAME[side]}, count(*) FROM {TABLE[side]} WHERE {NAME[side]} LIKE %s"
                f" GROUP BY 1 HAVING count(*) > 1",
                (f"h {people.tag} %",),
            ).fetchall()
            problems += [f"{side.value}: {name} is there {n} times" for name, n in twice]
        problems += [
            f"{side.value}: {n} change(s) still parked" for side, n in people.parked().items() if n
        ]
        for side in Side:
            here, there = (erp, crm) if side is Side.ERP else (crm, erp)
            for name in people.deleted[side]:
                back = here.execute(f"SELECT count(*) FROM {TABLE[side]} WHERE {NAME[side]} = %s",
                                    (name,)).fetchone()  # fmt: skip
                if back and back[0]:
                    problems.append(f"{name}, deleted on the {side.value} side, came back")
                pair = there.execute(
                    f"SELECT {LINK[side.other]}, ofisync_deleted_at IS NOT NULL FROM"
                    f" {TABLE[side.other]} WHERE {NAME[side.other]} = %s",
                    (name,),
                ).fetchall()
                if any(linked is not None or not flagged for linked, flagged in pair):
                    problems.append(f"{name}: its pair is not unlinked and flagged: {pair}")
    outcome.counts["deleted"] = sum(len(d) for d in people.deleted.values())
    for side in Side:
        outcome.counts[f"new_{side.value}"] = len(people.names[side])
        outcome.counts[f"edits_{side.value}"] = sum(
            1 for w in people.writes if w.side is side
        ) - len(FIELDS) * len(people.names[side])
    return outcome
