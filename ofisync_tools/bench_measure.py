"""Benchmark measures (operations): what an `ofisync bench` run is made of and what it records,
free of I/O but for the versions and the machine: the plan of a full and a quick run, the pacing
of the fixed-rate load, latency statistics and rates, a lane's figures, the watch for a wait
that stalls, and the JSON document of a run with how each figure was measured
(ofisync_tools/bench.py runs the scenarios).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any

import psycopg

from ofisync_tools.bench_load import SYSTEMS, Lane
from streams.ops.observe import percentile
from streams.settings import Settings

TICK_S = 0.01  # the paced load's shortest pause: a few changes share a transaction
MAX_PAUSE_S = 0.1

# --- what a run does ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    quick: bool
    fixed_s: float  # scenario 1, per rate
    max_s: float  # scenario 2, including the warm-up
    warmup_s: float  # before the first scenario, and at the start of scenario 2
    window: int  # scenario 2: changes on their way at most
    backlog: int  # scenario 3
    pool: int  # bench clients per direction
    stall_s: float  # give up waiting (for changes to land, a backlog to drain) after no progress
    rates: tuple[int, ...] = (50, 200, 500)


FULL = Plan(False, fixed_s=60, max_s=70, warmup_s=10, window=4000, backlog=500_000, pool=4000,
            stall_s=120)  # fmt: skip
QUICK = Plan(True, fixed_s=3, max_s=8, warmup_s=2, window=600, backlog=2_000, pool=1500,
             stall_s=60)  # fmt: skip


# --- pure parts ----------------------------------------------------------------------------


def due(elapsed_s: float, rate: float, written: int) -> int:
    """How many changes a load paced at `rate`/s owes after `elapsed_s`, `written` written."""
    return max(0, math.floor(elapsed_s * rate + 1e-9) - written)


def pause(elapsed_s: float, rate: float, written: int) -> float:
    """How long the paced load sleeps: until its next change is due, but at least one tick
    (so a fast rate writes a few changes per transaction) and at most MAX_PAUSE_S."""
    return min(MAX_PAUSE_S, max(TICK_S, (written + 1) / rate - elapsed_s))


def stats(latencies_ms: Sequence[float]) -> dict[str, float] | None:
    """Count, nearest-rank percentiles, maximum and mean of latencies in ms; None without any."""
    if not latencies_ms:
        return None

    def ms(value: float | None) -> float:
        return round(value or 0.0, 1)

    return {
        "count": len(latencies_ms),
        "p50": ms(percentile(latencies_ms, 0.50)),
        "p95": ms(percentile(latencies_ms, 0.95)),
        "p99": ms(percentile(latencies_ms, 0.99)),
        "max": ms(max(latencies_ms)),
        "mean": ms(sum(latencies_ms) / len(latencies_ms)),
    }


def landed_rate(times_us: Sequence[int], start_us: int, end_us: int) -> float:
    """Changes per second that landed within [start, end)."""
    seconds = (end_us - start_us) / 1e6
    if seconds <= 0:
        return 0.0
    return sum(start_us <= t < end_us for t in times_us) / seconds


def per_second(times_us: Sequence[int], start_us: int, end_us: int) -> list[int]:
    """How many changes landed in each whole second of [start, end)."""
    counts = [0] * max(0, math.ceil((end_us - start_us) / 1e6))
    for t in times_us:
        if start_us <= t < end_us:
            counts[int((t - start_us) // 1_000_000)] += 1
    return counts


def figures(lane: Lane, seconds: float) -> dict[str, Any]:
    """What a lane measured: counts, rate written, latency overall and per kind of change, and
    for the sync how many changes its target transactions held (they share a commit time)."""
    found: dict[str, Any] = {
        "system": lane.route.system,
        "written": lane.written,
        "landed": len(lane.landed),
        "lost": lane.in_flight,
        "written_per_s": round(lane.written / seconds, 1) if seconds else None,
        "latency_ms": stats(lane.latencies()),
        "by_kind": {k: stats(lane.latencies(k)) for k in lane.route.landings},
    }
    commits = {c.target_us for c in lane.landed}
    if lane.route.system == "ofisync" and commits:
        found["changes_per_target_commit"] = round(len(lane.landed) / len(commits), 1)
    return found


def ratio(ours: float | None, native: float | None) -> float | None:
    """ofisync's figure divided by the reference's (None when either is missing or zero)."""
    if ours is None or not native:
        return None
    return round(ours / native, 2)


METHOD = {
    "latency": "per change: pg_xact_commit_timestamp of the source transaction → commit time of"
    " the target row version that carries it (ofisync: pg_xact_commit_timestamp(xmin); native:"
    " clock_timestamp() stamped by a trigger as the subscriber applies the row, because a"
    " subscriber records the publisher's commit time)",
    "load": "one connection per direction; 70 % client updates (notes tagged 'bench <run>"
    " <seq>', contact fields), 30 % new files (CRM files with 1-3 segments); a change is a row"
    " that crosses",
    "warmup": "before the first scenario, both systems carry paced load for warmup_s (JIT of"
    " Kafka's and Connect's JVMs); its latency is in `warmup`, in no scenario's figures",
    "max": "closed loop: write while fewer than `window` changes are on their way; landed"
    " changes/s after the warm-up, by target commit time",
    "catch_up": "client updates written while the worker is stopped (native: subscription"
    " disabled); drain = restart → commit of the last change on the target",
    "reference": "PostgreSQL logical replication between database ofisync_bench of each cluster"
    " (publication + subscription, PostgreSQL's defaults), same load and measurement",
    "cpu": "every process's user + system CPU time from /proc, sampled each second while the"
    " scenario runs (catch-up: restart → drained), summed by engine"
    " (ofisync_tools/machine_time.py);"
    " percent_of_a_core = CPU s ÷ wall s × 100; cpu_us_per_change = CPU time ÷ changes landed"
    " in the window (idle costs included)",
}


class Headway:
    """Whether a figure that should grow has not grown for `stall_s`."""

    def __init__(self, stall_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self.clock = clock
        self.best: float | None = None
        self.since = clock()

    def stalled(self, value: float) -> bool:
        if self.best is None or value > self.best:
            self.best, self.since = value, self.clock()
        return self.clock() - self.since > self.stall_s


def document(
    run: str,
    plan: Plan,
    started: float,
    versions: Mapping[str, str | None],
    machine: Mapping[str, Any],
    baseline: Mapping[str, Any],
    scenarios: Sequence[Mapping[str, Any]],
    onboarding: Mapping[str, Any] | None = None,
    warmup: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document of a run: every figure, how they were measured, on what. `clean`: no
    check failed and no change was lost (in the warm-up neither)."""
    return {
        "bench": "ofisync",
        "run": run,
        "mode": "quick" if plan.quick else "full",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "clean": bool(baseline["clean"])
        and not (warmup is not None and _lost(warmup))
        and all(_clean(sc) for sc in scenarios)
        and (onboarding is None or bool(onboarding["clean"])),
        "plan": asdict(plan),
        "method": METHOD,
        "versions": dict(versions),
        "machine": dict(machine),
        "baseline_check": dict(baseline),
        "warmup": None if warmup is None else dict(warmup),
        "scenarios": list(scenarios),
        "onboarding": None if onboarding is None else dict(onboarding),
    }


def _clean(scenario: Mapping[str, Any]) -> bool:
    return all(c["clean"] for c in scenario["checks"].values()) and not _lost(scenario)


def _lost(part: Mapping[str, Any]) -> bool:
    """Whether a scenario or the warm-up lost a change (its figures per system and direction)."""
    return any(figures.get("lost") for system in SYSTEMS for figures in part[system].values())


# --- versions and machine -------------------------------------------------------------------


def versions(settings: Settings) -> dict[str, str | None]:
    from streams.stack.connect import ConnectError, http

    out: dict[str, str | None] = {"kafka": None, "debezium": None}
    with contextlib.suppress(ConnectError, KeyError, TypeError):
        out["kafka"] = http("GET", f"{settings.connect_url}/")["version"]
        plugins = http("GET", f"{settings.connect_url}/connector-plugins")
        out["debezium"] = next(
            (p["version"] for p in plugins if p["class"].endswith(".PostgresConnector")), None
        )
    for db in settings.databases:
        with contextlib.suppress(psycopg.Error), psycopg.connect(db.dsn, connect_timeout=5) as c:
            row = c.execute("SHOW server_version").fetchone()
            out[f"postgresql_{db.side}"] = None if row is None else str(row[0])
    out["python"] = platform.python_version()
    for package in ("faust-streaming", "aiokafka", "psycopg"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def machine() -> dict[str, Any]:
    def first(path: str, prefix: str) -> str | None:
        with contextlib.suppress(OSError), open(path) as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        return None

    memory = first("/proc/meminfo", "MemTotal")
    return {
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory.split()[0]) / 2**20, 1) if memory else None,
        "cpu": first("/proc/cpuinfo", "model name"),
        "system": platform.platform(),
    }
