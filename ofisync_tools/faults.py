"""Faults (operations): scripted failures under a steady mixed load in both directions, each
ending in a count of what was lost or duplicated and a `verify`.

The load: in OfiViaje new checked clients and updates of them, in the CRM new accounts and
updates of them, each named `fault <run> <side> <seq>` so the other side can be counted by
name: a change that never arrived is lost, a record that arrived twice is a duplicate. A change
counts as sent once its source transaction committed (while a database is down the generator
waits, as an application would). Each scenario: load, the fault, a hold, the recovery (`up`
restarts what was stopped), more load, then the time until every sent change has arrived and
the worker's lag is 0, then `verify`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from streams.ops.verify import verify
from streams.settings import Settings
from streams.stack.orchestrate import PlainProgress, Stack
from streams.stack.worker_process import WorkerProcess


class Load(threading.Thread):
    """Creates and updates records on one side at a steady rate until stopped."""

    def __init__(self, dsn: str, side: str, tag: str, rate: float) -> None:
        super().__init__(daemon=True, name=f"load-{side}")
        self.dsn, self.side, self.tag, self.rate = dsn, side, tag, rate
        self.sent_creates = 0
        self.sent_updates = 0
        self.waits = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        created: list[int] = []
        seq = 0
        while not self.stop_event.is_set():
            started = time.monotonic()
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                if seq % 2 == 0 or not created:
                    created.append(self._create(conn, seq))
                    self.sent_creates += 1
                else:
                    self._update(conn, created[(seq // 2) % len(created)], seq)
                    self.sent_updates += 1
                seq += 1
            except psycopg.OperationalError:
                self.waits += 1  # the database is away: wait for it, as an application would
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.5)
                continue
            time.sleep(max(0.0, 1 / self.rate - (time.monotonic() - started)))
        if conn is not None:
            conn.close()

    def name_of(self, seq: int) -> str:
        return f"fault {self.tag} {self.side} {seq:06d}"

    def _create(self, conn: psycopg.Connection[Any], seq: int) -> int:
        query = (
            "INSERT INTO clientes (nombre, sincronizar_crm, observaciones) VALUES (%s, true, %s)"
            if self.side == "erp"
            else "INSERT INTO accounts (name, notes) VALUES (%s, %s)"
        )
        row = conn.execute(query + " RETURNING id", (self.name_of(seq), "v0")).fetchone()
        assert row is not None
        return int(row[0])

    def _update(self, conn: psycopg.Connection[Any], record: int, seq: int) -> None:
        table, column = (
            ("clientes", "observaciones") if self.side == "erp" else ("accounts", "notes")
        )
        conn.execute(f"UPDATE {table} SET {column} = %s WHERE id = %s", (f"v{seq}", record))


@dataclass
class Outcome:
    scenario: str
    sent: dict[str, int]  # new records, per source side
    updates: dict[str, int]  # updates of them (their end state is what verify checks)
    arrived: dict[str, int]
    duplicated: int
    lost: int
    converge_s: float | None
    verify_clean: bool
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.duplicated == 0 and self.lost == 0 and self.verify_clean


def arrivals(settings: Settings, run: str) -> tuple[dict[str, int], int]:
    """Records of this run on the other side: distinct ones per source side, and duplicates."""
    found: dict[str, int] = {}
    duplicated = 0
    for source, dsn, table, column in (
        ("erp", settings.crm.dsn, "accounts", "name"),
        ("crm", settings.erp.dsn, "clientes", "nombre"),
    ):
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute(
                f"SELECT count(DISTINCT {column}), count(*) FROM {table} WHERE {column} LIKE %s",
                (f"fault {run} {source} %",),
            ).fetchone()
        assert row is not None
        found[source] = int(row[0])
        duplicated += int(row[1]) - int(row[0])
    return found, duplicated


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    inject: Callable[[Stack, dict[str, Any]], None]
    recover: Callable[[Stack, dict[str, Any]], None]
    hold_s: float


def _up(stack: Stack) -> None:
    stack.up(demo=False, progress=PlainProgress(echo=lambda _: None))


def _kill_worker(stack: Stack, ctx: dict[str, Any]) -> None:
    pid = stack.worker.pid()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)


def _restart(stack: Stack, ctx: dict[str, Any]) -> None:
    _up(stack)


def _stop(component: str) -> Callable[[Stack, dict[str, Any]], None]:
    def stop(stack: Stack, ctx: dict[str, Any]) -> None:
        getattr(stack, component).stop()

    return stop


def _lock_crm_rows(stack: Stack, ctx: dict[str, Any]) -> None:
    conn = psycopg.connect(stack.settings.crm.dsn)
    conn.execute(
        "SELECT id FROM accounts WHERE name LIKE %s FOR UPDATE", (f"fault {ctx['run']} erp %",)
    )
    ctx["locker"] = conn  # holds the locks until recovery commits


def _release_crm_rows(stack: Stack, ctx: dict[str, Any]) -> None:
    conn: psycopg.Connection[Any] = ctx.pop("locker")
    conn.commit()
    conn.close()


def _second_worker_then_kill_first(stack: Stack, ctx: dict[str, Any]) -> None:
    # One more than the stack runs (OFISYNC_WORKERS), so that stopping it leaves the stack's own.
    second = WorkerProcess(stack.settings, index=len(stack.workers) + 1)
    second.start()
    ctx["second"] = second
    time.sleep(5)  # the group rebalances over both; then the first dies mid-stream
    _kill_worker(stack, ctx)


def _first_back_second_away(stack: Stack, ctx: dict[str, Any]) -> None:
    _up(stack)
    ctx.pop("second").stop()


def scenarios(db_hold_s: float, hold_s: float) -> list[Scenario]:
    return [
        Scenario("worker-sigkill", "SIGKILL the worker mid-batch; restart it",
                 _kill_worker, _restart, 3),
        Scenario("broker-restart", "stop the Kafka broker; start it again",
                 _stop("kafka"), _restart, hold_s),
        Scenario("connect-restart", "stop the Kafka Connect worker; start it again",
                 _stop("connect"), _restart, hold_s),
        Scenario("erp-db-down", f"stop OfiViaje's database for {db_hold_s:.0f} s",
                 _stop("erp"), _restart, db_hold_s),
        Scenario("crm-db-down", f"stop the CRM's database for {db_hold_s:.0f} s",
                 _stop("crm"), _restart, db_hold_s),
        Scenario("crm-long-transaction", "a CRM transaction holds locks on rows being synced",
                 _lock_crm_rows, _release_crm_rows, hold_s),
        Scenario("two-workers-kill-one", "two workers share the partitions; SIGKILL one",
                 _second_worker_then_kill_first, _first_back_second_away, hold_s),
    ]  # fmt: skip


def run_scenario(
    stack: Stack,
    scenario: Scenario,
    rate: float,
    load_s: float,
    say: Callable[[str], None],
    converge_timeout_s: float = 300,
) -> Outcome:
    settings = stack.settings
    run = uuid.uuid4().hex[:8]
    loads = [
        Load(settings.erp.dsn, "erp", run, rate),
        Load(settings.crm.dsn, "crm", run, rate),
    ]
    ctx: dict[str, Any] = {"run": run}
    for load in loads:
        load.start()
    time.sleep(load_s)
    say(f"{scenario.name}: {scenario.what}")
    scenario.inject(stack, ctx)
    time.sleep(scenario.hold_s)
    say(f"{scenario.name}: recovering")
    scenario.recover(stack, ctx)
    time.sleep(load_s)
    for load in loads:
        load.stop_event.set()
    for load in loads:
        load.join()
    sent = {load.side: load.sent_creates for load in loads}
    started = time.monotonic()
    converge: float | None = None
    while time.monotonic() - started < converge_timeout_s:
        arrived, duplicated = arrivals(settings, run)
        if arrived == sent and _caught_up(settings):
            converge = time.monotonic() - started
            break
        time.sleep(1)
    arrived, duplicated = arrivals(settings, run)
    report = verify(settings)
    say(f"{scenario.name}: sent {sent}, arrived {arrived}, converged in {converge} s")
    return Outcome(
        scenario.name,
        sent,
        {load.side: load.sent_updates for load in loads},
        arrived,
        duplicated,
        sum(max(0, sent[s] - arrived.get(s, 0)) for s in sent),
        None if converge is None else round(converge, 1),
        report.clean,
        "" if report.clean else f"{len(report.differences)} difference(s)",
    )


HISTORY = "random-history"


def run_history_scenario(
    stack: Stack, steps: int, seed: int, say: Callable[[str], None]
) -> Outcome:
    """The randomized two-sided history (ofisync_tools/history.py) as a fault scenario: a record
    there twice counts as duplicated, every other broken promise as lost."""
    from ofisync_tools.history import run_history

    def kill_worker() -> None:
        _kill_worker(stack, {})
        while stack.worker.pid() is not None:  # SIGKILL takes a moment
            time.sleep(0.1)
        _up(stack)

    def wait(what: str) -> None:
        started = time.monotonic()
        while not _caught_up(stack.settings) and time.monotonic() - started < 300:
            time.sleep(1)
        say(f"{HISTORY}: {what}")

    started = time.monotonic()
    found = run_history(stack.settings, seed, steps, kill_worker, wait, say)
    twice = [p for p in found.problems if " times" in p]
    verify_problems = [p for p in found.problems if p.startswith("verify")]
    new = {side: found.counts[f"new_{side}"] for side in ("erp", "crm")}
    return Outcome(
        HISTORY,
        new,
        {side: found.counts[f"edits_{side}"] for side in ("erp", "crm")},
        new,
        len(twice),
        len(found.problems) - len(twice) - len(verify_problems),
        round(time.monotonic() - started, 1),
        not verify_problems,
        "; ".join(found.problems[:3]),
    )


def _caught_up(settings: Settings) -> bool:
    from streams.ops.lag import consumer_lag

    with contextlib.suppress(Exception):
        rows = [p for p in consumer_lag(settings) if p.group == settings.worker_group]
        return all((p.lag or 0) == 0 for p in rows)
    return False


def table(outcomes: list[Outcome]) -> str:
    """A Markdown table of the outcomes (for the README)."""
    lines = [
        "| scenario | ERP→CRM new + updated | CRM→ERP new + updated | duplicated | lost"
        " | converged in | verify |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for o in outcomes:
        converge = "—" if o.converge_s is None else f"{o.converge_s:.1f} s"
        lines.append(
            f"| {o.scenario} | {o.sent['erp']} + {o.updates['erp']}"
            f" | {o.sent['crm']} + {o.updates['crm']} | {o.duplicated} | {o.lost} |"
            f" {converge} | {'clean' if o.verify_clean else o.note} |"
        )
    return "\n".join(lines)


def as_json(outcomes: list[Outcome]) -> dict[str, Any]:
    return {"ok": all(o.ok for o in outcomes), "scenarios": [asdict(o) for o in outcomes]}
