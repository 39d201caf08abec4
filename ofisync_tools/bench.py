"""Benchmark (operations): `ofisync bench` — how soon and how fast changes cross, on the running
local stack, against PostgreSQL's native logical replication between the same two clusters
(ofisync_tools/bench_native.py) as the reference. This module runs the scenarios and makes the
run's JSON document; ofisync_tools/bench_load.py writes the load and watches it land, and
ofisync_tools/bench_report.py prints the tables.

Load. Realistic changes written in short transactions by one connection per direction: client
updates (contact fields and the notes change) and new booking files — from the CRM with their
flight and train segments — in a mix of 70 % client updates and 30 % new files (by event).
A *change* is one row that crosses: a CRM file with two segments is three changes.
Values come from the demo data generator (ofisync_tools/demo.py). The clients updated are bench
clients, linked pairs recognised by their notes starting with "bench "; they are created (through
the sync) on the first run and reused, half of them changed on each side. Files are new rows each
run (their numbers carry the run id); they stay, like the demo data.

Scenarios. Before them, a warm-up: `warmup_s` of paced load through both systems, whose latency is
kept apart (a stack just started is slow for its first seconds of load while the JIT of Kafka's and
Connect's JVMs compiles). (1) Fixed rate: 200 and 500 changes/s per direction, both directions at
once; latency p50/p95/p99 per direction; and 50/s, a busy agency's day, where nothing queues and
the latency is that of the hops themselves. (2) One direction (OfiViaje → CRM) as fast as it will
go, closed loop: the generator writes whenever fewer than `window` changes are on their way, so the
lag stays bounded by construction; the figure is the rate at which changes land on the target
(after a warm-up), and the Kafka consumer lag sampled meanwhile is reported beside it. (3)
Catch-up: a backlog of client updates built while the worker is stopped (native: while the
subscription is disabled), then the time from the restart until the last change has landed. After
each scenario `verify` must be clean (native: every published table equals its copy). While each
scenario runs, the CPU time of every process on the machine is summed by engine
(ofisync_tools/machine_time.py): the worker, PostgreSQL's sessions that apply, its walsenders and
the rest, Kafka Connect, Kafka and the bench itself, as shares of a core and per change.

Latency is measured per change, from its source commit to its target commit, both read from
PostgreSQL and never guessed: the source commit time is `pg_xact_commit_timestamp` of the
generator's transaction id; the target time is `pg_xact_commit_timestamp(xmin)` of the target
row version that carries the change (`track_commit_timestamp = on` in both clusters, one
machine, one clock). A client update carries a tag "bench <run> <seq>" in its notes, so the
version that holds it is the one that carries it; new rows are found by their link column. The
watcher reads the target rows of the changes still on their way every 0.2 s and keeps the commit
time of the version it finds (reading adds load, never time, to a measured change); a client is
changed again only after its previous change has landed, so no version is overwritten unseen
(the catch-up backlog excepted: there only each client's last change is awaited). On the native
subscriber the commit timestamp is the publisher's (replication origins), so there the arrival
is `clock_timestamp()` stamped by a trigger as the row is applied, just before the apply
commits; commit timestamps too are taken just before the commit record is flushed. Changes in
one source transaction share its commit time; the paced load commits every 10 ms or so (2
changes a transaction at 200/s). A wait gives up only when nothing has moved for `stall_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ofisync_tools import bench_onboard
from ofisync_tools.bench_load import (
    BACKLOG_TX,
    CLIENT_COLUMNS,
    NATIVE_LANDINGS,
    OURS_ARRIVED,
    OURS_LANDINGS,
    SYSTEMS,
    TAG,
    Lane,
    Pair,
    Route,
    Values,
    bookkeeping,
    client_table,
    end_offsets,
    stages,
    table_writes,
    worker_lag,
)
from ofisync_tools.bench_measure import (
    FULL,
    QUICK,
    Headway,
    Plan,
    document,
    due,
    figures,
    landed_rate,
    machine,
    pause,
    per_second,
    ratio,
    stats,
    versions,
)
from ofisync_tools.bench_native import APPLIED, Reference
from ofisync_tools.machine_time import MachineTime
from streams.core.model import Side
from streams.secrets import Role, role_name
from streams.settings import Settings
from streams.stack.procs import StackError

# PostgreSQL's sessions report their row counts when idle for 10 s (or every second while busy).
STATS_SETTLE_S = 11.0
POLL_S = 0.2  # how often the target is read for the changes on their way
MAX_TX_CHANGES = 50  # the most changes one transaction of the closed loop writes


# --- progress ------------------------------------------------------------------------------


class Step(Protocol):
    def __call__(
        self, info: str, completed: float | None = None, total: float | None = None
    ) -> None: ...


class BarStep:
    """Updates one task of a rich progress display."""

    def __init__(self, bar: Progress, task: Any) -> None:
        self.bar, self.task = bar, task

    def __call__(
        self, info: str, completed: float | None = None, total: float | None = None
    ) -> None:
        self.bar.update(self.task, info=info, completed=completed, total=total)


class Ui:
    """Progress on stderr, so stdout holds only the table or the JSON document."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Step]:
        started = time.monotonic()
        if not self.console.is_terminal:  # a log: the outcome lines only
            try:
                yield lambda info, completed=None, total=None: None
            except BaseException:
                self.console.print(f"✗ {title}")
                raise
            self.console.print(f"✓ {title} ({time.monotonic() - started:.1f} s)")
            return
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            try:
                yield BarStep(bar, bar.add_task(title, total=None, info=""))
            except BaseException:
                bar.stop()
                self.console.print(f"✗ {title}")
                raise
        self.console.print(f"✓ {title} ({time.monotonic() - started:.1f} s)")

    def note(self, text: str) -> None:
        self.console.print(f"  {text}")


# --- the run -------------------------------------------------------------------------------

WARMUP_RATE = 200  # changes/s per direction before the first scenario
VERIFY_ATTEMPTS = 15  # link-backs follow the target commit by a moment: verify settles


class Bench:
    def __init__(self, settings: Settings, plan: Plan, ui: Ui) -> None:
        from streams.stack.orchestrate import Stack

        self.settings = settings
        self.plan = plan
        self.ui = ui
        self.run_id = uuid.uuid4().hex[:6]
        self.seqs = itertools.count(1)
        self.stack = Stack(settings)
        self.reference = Reference(settings)
        self.routes: dict[str, dict[Side, Route]] = {}
        self.values: Values | None = None

    # setup ---------------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        started, load_before = time.time(), os.getloadavg()
        status = await asyncio.to_thread(self.stack.status)
        if not status["healthy"]:
            down = [c["name"] for c in status["components"] + status["connectors"]
                    if not c["healthy"]]  # fmt: skip
            raise StackError(
                f"the stack is not healthy ({', '.join(down)} down); run `ofisync up` first"
            )
        with self.ui.step("realistic values (demo generator) and the mapping in place"):
            self.values = await asyncio.to_thread(Values.load, self.settings)
        baseline = await self._check("ofisync", "before the run: ofisync verify")
        ours = await self._bench_clients()
        try:
            with self.ui.step("native reference: databases, publications, subscriptions"):
                rows = {side: self._client_rows(self.plan.pool, f"{TAG} new {self.run_id}")
                        for side in Side}  # fmt: skip
                ids = await asyncio.to_thread(self.reference.create, rows)
            self.routes = self._routes(ours, ids)
            warmup = await self.warm_up()
            scenarios = [await self.fixed(rate) for rate in self.plan.rates]
            scenarios += [await self.max_rate(), await self.catch_up()]
        finally:
            with self.ui.step("native reference: drop"):
                await asyncio.to_thread(self.reference.drop)
        with self.ui.step("onboarding: `ofisync onboard` over scratch databases") as show:
            onboarding = await asyncio.to_thread(
                bench_onboard.run, self.settings, self.plan.quick, lambda t: show(t)
            )
        return document(
            run=self.run_id,
            plan=self.plan,
            started=started,
            versions=await asyncio.to_thread(versions, self.settings),
            machine=machine()
            | {"load_average_before": load_before, "load_average_after": os.getloadavg()}
            | {"workers": self.settings.workers},
            baseline=baseline,
            warmup=warmup,
            scenarios=scenarios,
            onboarding=onboarding,
        )

    def _client_rows(self, n: int, notes: str) -> list[tuple[Any, ...]]:
        """`n` clients with realistic values, each with a tax id of its own: the sync links a new
        client to one the other side has with the same tax id, and a pool of values reused would
        make them all ambiguous."""
        assert self.values is not None
        pool = self.values.clients
        return [
            (pool[i % len(pool)][0], f"BX{self.run_id}{i:07d}"[:20], *pool[i % len(pool)][2:12],
             notes)
            for i in range(n)
        ]  # fmt: skip

    def _linked_pairs(self) -> list[Pair]:
        """The bench clients linked both ways: (OfiViaje id, CRM id)."""
        with (
            psycopg.connect(self.settings.erp.dsn, connect_timeout=5) as erp,
            psycopg.connect(self.settings.crm.dsn, connect_timeout=5) as crm,
        ):
            here = {
                (int(r[0]), int(r[1]))
                for r in erp.execute(
                    "SELECT id, crm_id FROM clientes WHERE observaciones LIKE 'bench %'"
                    " AND sincronizar_crm AND crm_id IS NOT NULL"
                )
            }
            there = {
                (int(r[1]), int(r[0]))
                for r in crm.execute(
                    "SELECT id, erp_id FROM accounts WHERE notes LIKE 'bench %'"
                    " AND erp_id IS NOT NULL"
                )
            }
        return sorted(here & there)

    def _create_clients(self, missing: int) -> None:
        rows = self._client_rows(missing, f"{TAG} new {self.run_id}")
        half = (missing + 1) // 2
        for side, part in ((Side.ERP, rows[:half]), (Side.CRM, rows[half:])):
            db = self.settings.erp if side is Side.ERP else self.settings.crm
            columns = CLIENT_COLUMNS[side] + (("sincronizar_crm",) if side is Side.ERP else ())
            extra = (True,) if side is Side.ERP else ()
            with psycopg.connect(db.dsn, application_name="ofisync-bench") as conn:
                names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
                table = sql.Identifier(client_table(side))
                with conn.cursor().copy(
                    sql.SQL("COPY {} ({}) FROM STDIN").format(table, names)
                ) as copy:
                    for row in part:
                        copy.write_row((*row, *extra))

    async def _bench_clients(self) -> dict[Side, tuple[Pair, ...]]:
        """Bench clients, `pool` per direction: found from earlier runs, or created now (half on
        each side) and linked by the sync itself."""
        need = 2 * self.plan.pool
        pairs = await asyncio.to_thread(self._linked_pairs)
        missing = need - len(pairs)
        if missing > 0:
            title = f"{missing:,} new bench clients (both sides), linked by the sync"
            with self.ui.step(title) as show:
                await asyncio.to_thread(self._create_clients, missing)
                timeout = 120 + missing / 20
                deadline = time.monotonic() + timeout
                while len(pairs) < need:
                    show(f"{len(pairs):,} of {need:,} linked", len(pairs), need)
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"only {len(pairs):,} of {need:,} bench clients were linked within"
                            f" {timeout:.0f} s; is the worker running (`ofisync status`)?"
                            f" Its log: {self.settings.logs / 'worker.log'}"
                        )
                    await asyncio.sleep(0.5)
                    pairs = await asyncio.to_thread(self._linked_pairs)
        ordered = pairs[:need]
        return {
            Side.ERP: tuple(ordered[0::2]),
            Side.CRM: tuple((crm, erp) for erp, crm in ordered[1::2]),
        }

    def _routes(
        self, ours: Mapping[Side, tuple[Pair, ...]], native: Mapping[Side, Sequence[int]]
    ) -> dict[str, dict[Side, Route]]:
        s = self.settings
        dsn = {Side.ERP: s.erp.dsn, Side.CRM: s.crm.dsn}
        ref = self.reference
        return {
            "ofisync": {
                side: Route("ofisync", side, dsn[side], dsn[side.other], OURS_LANDINGS[side],
                            OURS_ARRIVED, ours[side])
                for side in Side
            },
            "native": {
                side: Route("native", side, ref.dsn(side), ref.dsn(side.other),
                            NATIVE_LANDINGS[side], APPLIED, tuple((i, i) for i in native[side]))
                for side in Side
            },
        }  # fmt: skip

    def _machine_time(self) -> MachineTime:
        return MachineTime(role_name(self.settings, Role.SINK))

    def _lane(self, route: Route) -> Lane:
        assert self.values is not None
        return Lane(route, self.values, self.run_id, self.seqs)

    # checks --------------------------------------------------------------------------------

    async def _check(self, system: str, title: str | None = None) -> dict[str, Any]:
        """ofisync: `verify` is clean; native: every published table equals its copy. Retried
        for a few seconds: link-backs are written a moment after the target commits."""
        from streams.ops.verify import verify

        what = "ofisync verify" if system == "ofisync" else "native copies equal their sources"
        started = time.monotonic()
        clean, detail, attempt = False, "", 0
        with self.ui.step(title or f"check: {what}") as show:
            for attempt in range(1, VERIFY_ATTEMPTS + 1):
                if system == "ofisync":
                    report = await asyncio.to_thread(verify, self.settings)
                    clean = report.clean
                    pairs = ", ".join(f"{n:,} {e}" for e, n in report.pairs.items())
                    first = [*report.differences, *report.one_sided][:3]
                    detail = (
                        f"compared {pairs} linked pairs"
                        if clean
                        else f"{len(report.differences)} difference(s),"
                        f" {len(report.one_sided)} one-sided link(s); first: {first}"
                    )
                else:
                    diffs = await asyncio.to_thread(self.reference.differences)
                    clean, detail = not diffs, "; ".join(diffs) or "every copy equals its source"
                if clean:
                    break
                show(f"attempt {attempt}: not clean yet")
                await asyncio.sleep(1)
        if not clean:
            self.ui.note(f"✗ {what}: {detail}")
        return {"clean": clean, "detail": detail, "attempts": attempt,
                "seconds": round(time.monotonic() - started, 1)}  # fmt: skip

    # shared loops --------------------------------------------------------------------------

    async def _watch(self, lane: Lane, stop: asyncio.Event) -> None:
        """Reads the target until the load stopped and every change landed, or nothing landed
        for `stall_s` after the load stopped (what is still on its way then counts as lost)."""
        landed_at = stopped_at = None
        while True:
            if await lane.poll():
                landed_at = time.monotonic()
            if stop.is_set():
                if not lane.in_flight:
                    return
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - max(stopped_at, landed_at or 0.0) > self.plan.stall_s:
                    self.ui.note(f"✗ {lane.in_flight:,} changes did not land ({lane.route.system})")
                    return
            await asyncio.sleep(POLL_S)

    @staticmethod
    def _progress(lanes: Sequence[Lane], started: float, seconds: float, show: Step) -> None:
        elapsed = time.monotonic() - started
        written = sum(lane.written for lane in lanes)
        waiting = sum(lane.in_flight for lane in lanes)
        phase = f"{min(elapsed, seconds):.0f}/{seconds:.0f} s" if elapsed < seconds else "draining"
        show(f"{phase}: {written:,} written, {waiting:,} on their way", min(elapsed, seconds),
             seconds)  # fmt: skip

    def _lag_probe(self, route: Route) -> Callable[[], int]:
        """How far behind a system is: the worker's consumer lag (messages), or the WAL the
        subscriber has not confirmed (bytes)."""
        if route.system == "ofisync":
            return lambda: worker_lag(self.settings)
        return lambda: self.reference.lag_bytes(route.source)

    async def _sample(self, probe: Callable[[], int], into: list[int], stop: asyncio.Event) -> None:
        from kafka.errors import KafkaError

        while not stop.is_set():
            with contextlib.suppress(KafkaError, psycopg.Error, OSError):
                into.append(await asyncio.to_thread(probe))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 2.0)

    # scenario 1 ----------------------------------------------------------------------------

    async def warm_up(self) -> dict[str, Any]:
        """Paced load through both systems before anything is measured: a stack just started
        is slow for its first seconds of load, while Kafka's and Connect's JVMs compile the paths
        it takes (docs/performance.md). Its latency is kept in the document, in no figure."""
        rate, seconds = WARMUP_RATE, self.plan.warmup_s
        found: dict[str, Any] = {"rate_per_direction": rate, "seconds": seconds}
        for system in SYSTEMS:
            title = f"warm-up, {rate}/s each way for {seconds:.0f} s (not measured): {system}"
            with self.ui.step(title) as show:
                lanes = await self._paced(list(self.routes[system].values()), rate, show, seconds)
            found[system] = {lane.route.direction: figures(lane, seconds) for lane in lanes}
        return found

    async def fixed(self, rate: int) -> dict[str, Any]:
        directions = [r.direction for r in self.routes["ofisync"].values()]
        sc: dict[str, Any] = {
            "key": f"fixed-{rate}", "kind": "fixed", "title": f"fixed {rate}/s each way",
            "params": {"rate_per_direction": rate, "seconds": self.plan.fixed_s,
                       "both_directions_at_once": True, "load": "mixed"},
            "directions": directions, "ofisync": {}, "native": {}, "checks": {}, "ratio": {},
            "cpu": {},
        }  # fmt: skip
        for system in SYSTEMS:
            routes = list(self.routes[system].values())
            since = (
                await asyncio.to_thread(end_offsets, self.settings, self._stage_topics())
                if system == "ofisync"
                else {}
            )
            title = f"fixed {rate}/s each way, both at once: {system}"
            with self._machine_time() as window, self.ui.step(title) as show:
                lanes = await self._paced(routes, rate, show)
            sc["cpu"][system] = window.result(sum(len(lane.landed) for lane in lanes))
            for lane in lanes:
                found = figures(lane, self.plan.fixed_s)
                if system == "ofisync":
                    spans = await asyncio.to_thread(stages, self.settings, lane, since)
                    found["stages_ms"] = {k: stats(v) for k, v in spans.items()}
                sc[system][lane.route.direction] = found
            sc["checks"][system] = await self._check(system)
        for d in directions:
            ours, native = sc["ofisync"][d]["latency_ms"] or {}, sc["native"][d]["latency_ms"] or {}
            sc["ratio"][d] = {q: ratio(ours.get(q), native.get(q)) for q in ("p50", "p95", "p99")}
        return sc

    def _stage_topics(self) -> list[str]:
        from streams.core.topics import Topics

        topics = Topics(self.settings.tenant)
        return [topics.capture(side, client_table(side)) for side in Side]

    async def _paced(
        self, routes: Sequence[Route], rate: int, show: Step, seconds: float | None = None
    ) -> list[Lane]:
        seconds = self.plan.fixed_s if seconds is None else seconds
        async with contextlib.AsyncExitStack() as opened:
            lanes = [await opened.enter_async_context(self._lane(r).open()) for r in routes]
            stop = asyncio.Event()
            watchers = [asyncio.create_task(self._watch(lane, stop)) for lane in lanes]
            started = time.monotonic()

            async def pace(lane: Lane) -> None:
                loop = asyncio.get_running_loop()
                start = loop.time()
                while (elapsed := loop.time() - start) < seconds:
                    owed = due(elapsed, rate, lane.written)
                    if owed:
                        await lane.write(min(owed, MAX_TX_CHANGES))
                    self._progress(lanes, started, seconds, show)
                    await asyncio.sleep(pause(loop.time() - start, rate, lane.written))

            try:
                await asyncio.gather(*(pace(lane) for lane in lanes))
            except BaseException:
                for w in watchers:
                    w.cancel()
                raise
            finally:
                stop.set()
            while not all(w.done() for w in watchers):
                self._progress(lanes, started, seconds, show)
                await asyncio.sleep(0.25)
            await asyncio.gather(*watchers)
            for lane in lanes:
                await lane.resolve()
        return lanes

    # scenario 2 ----------------------------------------------------------------------------

    async def max_rate(self, side: Side = Side.ERP) -> dict[str, Any]:
        plan = self.plan
        direction = self.routes["ofisync"][side].direction
        sc: dict[str, Any] = {
            "key": "max", "kind": "max", "title": "max rate, one way",
            "params": {"seconds": plan.max_s - plan.warmup_s, "warmup_s": plan.warmup_s,
                       "window": plan.window, "load": "mixed"},
            "directions": [direction], "ofisync": {}, "native": {}, "checks": {}, "ratio": {},
            "cpu": {},
        }  # fmt: skip
        for system in SYSTEMS:
            route = self.routes[system][side]
            probe = self._lag_probe(route)
            arrow = direction.replace("_to_", "→")
            title = f"max rate, {arrow}, closed loop: {system}"
            with self._machine_time() as window, self.ui.step(title) as show:
                sc[system][direction] = await self._closed(route, probe, show)
            sc["cpu"][system] = window.result(sc[system][direction]["landed"])
            sc["checks"][system] = await self._check(system)
        sc["ratio"][direction] = {
            "landed_per_s": ratio(
                sc["ofisync"][direction]["landed_per_s"], sc["native"][direction]["landed_per_s"]
            )
        }
        return sc

    async def _closed(self, route: Route, probe: Callable[[], int], show: Step) -> dict[str, Any]:
        plan = self.plan
        lags: list[int] = []
        async with self._lane(route).open() as lane:
            stop = asyncio.Event()
            watcher = asyncio.create_task(self._watch(lane, stop))
            sampler = asyncio.create_task(self._sample(probe, lags, stop))
            loop = asyncio.get_running_loop()
            started_at, start = time.time(), loop.time()
            blocked, most = 0.0, 0
            try:
                while (elapsed := loop.time() - start) < plan.max_s:
                    room = plan.window - lane.in_flight
                    written = await lane.write(min(room, MAX_TX_CHANGES)) if room > 0 else 0
                    most = max(most, lane.in_flight)
                    self._progress([lane], time.monotonic() - elapsed, plan.max_s, show)
                    if written:
                        await asyncio.sleep(0)
                        continue
                    lane.arrival.clear()
                    waited = loop.time()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lane.arrival.wait(), POLL_S)
                    blocked += loop.time() - waited
                ended_at = time.time()
            except BaseException:
                watcher.cancel()
                raise
            finally:
                stop.set()
            await watcher
            await sampler
            await lane.resolve()
        start_us, end_us = int((started_at + plan.warmup_s) * 1e6), int(ended_at * 1e6)
        times = [c.target_us for c in lane.landed if c.target_us is not None]
        return figures(lane, plan.max_s) | {
            "landed_per_s": round(landed_rate(times, start_us, end_us), 1),
            "per_second": per_second(times, start_us, end_us),
            "max_in_flight": most,
            "blocked_share": round(blocked / plan.max_s, 3),
            # Rarely held back by the window: the load generator, not the system, was the limit.
            "generator_bound": blocked / plan.max_s < 0.05,
            "max_lag": max(lags, default=None),
            "lag_unit": "messages (worker consumer lag)" if route.system == "ofisync"
            else "bytes (WAL not confirmed by the subscriber)",
        }  # fmt: skip

    # scenario 3 ----------------------------------------------------------------------------

    async def catch_up(self, side: Side = Side.ERP) -> dict[str, Any]:
        n = self.plan.backlog
        direction = self.routes["ofisync"][side].direction
        sc: dict[str, Any] = {
            "key": "catch-up", "kind": "catch-up", "title": f"catch-up {n:,}",
            "params": {"backlog": n, "load": "client updates", "per_transaction": BACKLOG_TX},
            "directions": [direction], "ofisync": {}, "native": {}, "checks": {}, "ratio": {},
            "cpu": {},
        }  # fmt: skip
        if any(worker.pid() is None for worker in self.stack.workers):
            sc["skipped"] = (
                "the workers were not started by `ofisync up` on this stack, so the benchmark"
                " cannot stop and restart them"
            )
            return sc
        for system in SYSTEMS:
            route = self.routes[system][side]
            sc[system][direction], sc["cpu"][system] = await self._catch_up(route)
            sc["checks"][system] = await self._check(system)
        sc["ratio"][direction] = {
            "drain_s": ratio(
                sc["ofisync"][direction]["drain_s"], sc["native"][direction]["drain_s"]
            )
        }
        return sc

    async def _catch_up(self, route: Route) -> tuple[dict[str, Any], dict[str, Any]]:
        """The catch-up's figures, and the machine's time while it drained."""
        from streams.core.topics import Topics

        n, ours = self.plan.backlog, route.system == "ofisync"
        topic = Topics(self.settings.tenant).capture(route.source, client_table(route.source))
        out: dict[str, Any] = {"system": route.system, "written": n}
        with self._machine_time() as drained:
            async with self._lane(route).open() as lane:
                pause_what = "stop the workers" if ours else "disable the subscription"
                with self.ui.step(f"catch-up, {route.system}: {pause_what}"):
                    if ours:
                        await asyncio.to_thread(self.stack.stop_workers)
                    else:
                        await asyncio.to_thread(self.reference.set_enabled, route.source, False)
                try:
                    before = await asyncio.to_thread(end_offsets, self.settings, [topic])
                    with self.ui.step(f"catch-up, {route.system}: {n:,} changes") as show:
                        started = time.monotonic()
                        last = await lane.write_backlog(n, lambda k: show(f"{k:,} of {n:,}", k, n))
                        out["build_s"] = round(time.monotonic() - started, 1)
                    if ours:
                        out["capture_s"] = await self._captured(topic, before, n, started)
                finally:
                    resume_what = "restart the workers" if ours else "enable the subscription"
                    with self.ui.step(f"catch-up, {route.system}: statistics settle"):
                        await asyncio.sleep(STATS_SETTLE_S)  # the backlog's own writes counted
                        writes = await asyncio.to_thread(table_writes, self.settings)
                    drained.reset()  # the window: from the restart until drained
                    with self.ui.step(f"catch-up, {route.system}: {resume_what}"):
                        resumed = time.time()
                        if ours:
                            await asyncio.to_thread(self.stack.start_workers)
                        else:
                            await asyncio.to_thread(self.reference.set_enabled, route.source, True)
                        ready = time.time()
                found, latest = await self._drain(lane, last, route)
        with self.ui.step(f"catch-up, {route.system}: the rows it wrote (statistics settle)"):
            await asyncio.sleep(STATS_SETTLE_S)
            after = await asyncio.to_thread(table_writes, self.settings)
        out["rows_written"] = bookkeeping(writes, after, route.source.other, n)
        out |= {
            "clients": len(last),
            "clients_current": found,  # holding their last change on the target
            "lost": len(last) - found,
            "restart_s": round(ready - resumed, 1),
            "drain_s": None if latest is None else round(latest / 1e6 - resumed, 1),
            "drain_after_ready_s": None if latest is None else round(latest / 1e6 - ready, 1),
        }
        out["drain_per_s"] = round(n / out["drain_s"], 1) if out["drain_s"] else None
        return out, drained.result(n)

    async def _captured(self, topic: str, before: Mapping[Any, int], n: int, since: float) -> float:
        """Waits until Debezium has put the whole backlog into Kafka; seconds since `since`."""
        progress = Headway(self.plan.stall_s)
        with self.ui.step("catch-up, ofisync: Debezium captures the backlog into Kafka") as show:
            while True:
                ends = await asyncio.to_thread(end_offsets, self.settings, [topic])
                got = sum(ends.values()) - sum(before.values())
                show(f"{got:,} of {n:,} in {topic}", got, n)
                if got >= n:
                    return round(time.monotonic() - since, 1)
                if progress.stalled(got):
                    raise StackError(
                        f"Debezium put only {got:,} of {n:,} changes into {topic} and no more for"
                        f" {self.plan.stall_s:.0f} s; check `ofisync status` and the Connect log"
                        f" in {self.settings.logs}"
                    )
                await asyncio.sleep(0.5)

    async def _drain(
        self, lane: Lane, last: Mapping[int, str], route: Route
    ) -> tuple[int, int | None]:
        """Waits until every client holds its last change on the target: how many do, and the
        arrival time of the latest (None if it stalled: neither more clients current nor less
        lag for `stall_s`)."""
        from kafka.errors import KafkaError

        lag: int | None = None
        current, behind = Headway(self.plan.stall_s), Headway(self.plan.stall_s)
        unit = "messages" if route.system == "ofisync" else "bytes"
        with self.ui.step(f"catch-up, {route.system}: drain") as show:
            for i in itertools.count():
                found, latest = await lane.landed_last(last)
                if found == len(last):
                    return found, latest
                if i % 4 == 0:
                    with contextlib.suppress(KafkaError, psycopg.Error, OSError):
                        lag = await asyncio.to_thread(self._lag_probe(route))
                if current.stalled(found) and behind.stalled(-(lag or 0)):
                    self.ui.note(f"✗ {len(last) - found:,} clients lack their last change")
                    return found, None
                lag_text = "-" if lag is None else f"{lag:,}"
                show(f"{found:,} of {len(last):,} clients current, lag {lag_text} {unit}", found,
                     len(last))  # fmt: skip
                await asyncio.sleep(0.5)
        return 0, None  # unreachable: the loop returns


@contextlib.contextmanager
def _exclusive(settings: Settings) -> Iterator[None]:
    settings.run.mkdir(parents=True, exist_ok=True)
    with open(settings.run / "bench.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise StackError(
                "another `ofisync bench` is running on this stack; wait for it to finish"
            ) from exc
        yield


def run_bench(settings: Settings, quick: bool, ui: Ui | None = None) -> dict[str, Any]:
    """Runs every scenario on the running stack; the JSON document of the run."""
    from kafka.errors import KafkaError

    with _exclusive(settings):
        try:
            return asyncio.run(Bench(settings, QUICK if quick else FULL, ui or Ui()).run())
        except psycopg.OperationalError as exc:
            raise StackError(
                f"a database stopped answering ({str(exc).strip().splitlines()[0]});"
                " is the stack up (`ofisync status`)?"
            ) from exc
        except KafkaError as exc:
            raise StackError(
                f"Kafka at {settings.kafka} did not answer ({exc}); is the stack up"
                " (`ofisync status`)?"
            ) from exc
