"""Benchmark (operations): where the machine's time goes while a scenario of `ofisync bench` runs.

The bench runs everything on one machine: PostgreSQL, Kafka, Kafka Connect, the worker and the
bench's own load generator share its cores. `MachineTime` samples every process's CPU time from
/proc (user and system time of all its threads) each second while a scenario runs, and sums it
by engine. The result says which part of the pipeline used the machine, and what each change
cost each engine in CPU time, which gives the CPU a rate needs from every engine.

Pure: `engine_of` (which engine a process is part of) and `usage` (the sums, as shares of a core
and per change). Reading /proc is the edge.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from streams.stack import connect, kafka

# Every process belongs to one of these, in this order in the report.
ENGINES = (
    "worker",  # ofisync's worker processes
    "postgres_writes",  # the sessions that apply changes: the sync's sinks, native apply workers
    "postgres_reads",  # the walsenders that stream changes out: Debezium's, native ones
    "postgres_rest",  # the bench's load and watchers, PostgreSQL's background processes
    "connect",  # Kafka Connect with Debezium
    "kafka",
    "bench",  # this process: the load generator and the watchers of the target rows
    "other",
)
SAMPLE_S = 1.0  # a process that ends between two samples loses at most this much of its time


def engine_of(cmdline: str, sink_role: str, pid: int, bench_pid: int) -> str:
    """The engine a process is part of, from its command line (PostgreSQL's processes show
    their role there: `postgres: <user> <database> …`, `postgres: walsender …`). `sink_role`:
    the database role the worker's sinks log in as."""
    if pid == bench_pid:
        return "bench"
    if cmdline.startswith("postgres:"):
        title = cmdline.split()
        if len(title) > 1 and title[1] == "walsender":
            return "postgres_reads"
        if "logical replication worker" in cmdline or title[1:2] == [sink_role]:
            return "postgres_writes"
        return "postgres_rest"
    argv = cmdline.split()
    if argv and Path(argv[0]).name == "postgres":  # the postmaster
        return "postgres_rest"
    if "streams.cli worker" in cmdline:
        return "worker"
    if connect.MAIN_CLASS in argv:
        return "connect"
    if kafka.MAIN_CLASS in argv:
        return "kafka"
    return "other"


@dataclass(frozen=True)
class Sample:
    """One process seen once: its engine and the CPU ticks it has used so far. Samples are kept
    by the process's pid and start time (pids are reused)."""

    engine: str
    ticks: int


def usage(
    first: Mapping[tuple[int, int], Sample],
    last: Mapping[tuple[int, int], Sample],
    seconds: float,
    ticks_per_s: int,
    changes: int | None,
) -> dict[str, Any]:
    """What each engine used between two sets of samples: `first`, each process as first seen
    (the processes already running at the start), and `last`, each as last seen. A process
    first seen after the start started within the window, so all of its time counts."""
    spent = dict.fromkeys(ENGINES, 0.0)
    for key, seen in last.items():
        before = first[key].ticks if key in first else 0
        spent[seen.engine] += (seen.ticks - before) / ticks_per_s
    percent = {e: round(100 * s / seconds, 1) if seconds > 0 else 0.0 for e, s in spent.items()}
    out: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "percent_of_a_core": percent,
        "total_percent": round(sum(percent.values()), 1),
        "changes": changes,
        "changes_per_s": round(changes / seconds, 1) if changes and seconds > 0 else None,
    }
    if changes:
        out["cpu_us_per_change"] = {e: round(1e6 * s / changes) for e, s in spent.items()}
    return out


def _read(
    proc: Path, sink_role: str, bench_pid: int, engines: dict[tuple[int, int], str]
) -> dict[tuple[int, int], Sample]:
    """Every process now (those gone while read are skipped)."""
    found: dict[tuple[int, int], Sample] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            # Fields after the command name, which may hold spaces: state is 3rd (index 0
            # here), utime 14th, stime 15th, starttime 22nd.
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            key = (pid, int(stat[19]))
            if key not in engines:
                cmdline = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                engines[key] = engine_of(cmdline.strip(), sink_role, pid, bench_pid)
        except (OSError, IndexError, ValueError):
            continue
        found[key] = Sample(engines[key], int(stat[11]) + int(stat[12]))
    return found


class MachineTime:
    """`with MachineTime(sink_role) as window: …` samples the machine while the block runs; then
    `window.result(changes)` says what each engine used. Where there is no /proc (not Linux),
    the result says so instead."""

    def __init__(self, sink_role: str, proc: Path = Path("/proc")) -> None:
        self.sink_role = sink_role
        self.proc = proc
        self._engines: dict[tuple[int, int], str] = {}
        self._first: dict[tuple[int, int], Sample] = {}
        self._last: dict[tuple[int, int], Sample] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-machine-time", daemon=True)
        self._started = self._ended = 0.0

    def _sample(self) -> dict[tuple[int, int], Sample]:
        return _read(self.proc, self.sink_role, os.getpid(), self._engines)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._last.update(self._sample())

    def __enter__(self) -> MachineTime:
        self.reset()
        if self._first:
            self._thread.start()
        return self

    def reset(self) -> None:
        """The window starts now (what was sampled so far is forgotten)."""
        if self.proc.is_dir():
            self._first = self._sample()
            self._last = dict(self._first)
        self._started = time.monotonic()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._ended = time.monotonic()
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._last.update(self._sample())

    def result(self, changes: int | None) -> dict[str, Any]:
        if not self._first:
            return {"unavailable": f"no process table at {self.proc} on this system"}
        return usage(
            self._first,
            self._last,
            self._ended - self._started,
            os.sysconf("SC_CLK_TCK"),
            changes,
        ) | {"cores": os.cpu_count()}


def engines_seen(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """The engines that used any time in these results, in report order."""
    used = {e for r in results for e, p in r.get("percent_of_a_core", {}).items() if p}
    return [e for e in ENGINES if e in used]
