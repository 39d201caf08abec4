"""Where the machine's time goes while the bench runs: which engine a process is part of, and
the arithmetic of the window (ofisync_tools/machine_time.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ofisync_tools.machine_time import MachineTime, Sample, _read, engine_of, usage

BENCH_PID = 4242


@pytest.mark.parametrize(
    ("cmdline", "engine"),
    [
        ("/work/main/.venv/bin/python -m streams.cli worker", "worker"),
        ("postgres: ofisync_sink oficrm 127.0.0.1(53978) idle", "postgres_writes"),
        ("postgres: logical replication worker for subscription 16412", "postgres_writes"),
        (
            "postgres: walsender ofisync_capture 127.0.0.1(52204) START_REPLICATION",
            "postgres_reads",
        ),
        ("postgres: walsender postgres 127.0.0.1(40112) START_REPLICATION", "postgres_reads"),
        ("postgres: postgres ofiviaje 127.0.0.1(55106) idle", "postgres_rest"),
        ("postgres: other_sink oficrm 127.0.0.1(53978) idle", "postgres_rest"),  # not the tenant's
        ("postgres: checkpointer", "postgres_rest"),
        ("/usr/lib/postgresql/15/bin/postgres -D /work/main/.ofisync/pg/erp", "postgres_rest"),
        (
            "/usr/bin/java -Xmx768m -cp /x/* org.apache.kafka.connect.cli.ConnectDistributed c",
            "connect",
        ),
        (
            "/usr/bin/java -Xmx768m -cp /x/* kafka.Kafka /work/main/.ofisync/kafka.properties",
            "kafka",
        ),
        ("/usr/sbin/sshd -D", "other"),
        ("", "other"),
    ],
)
def test_each_process_belongs_to_its_engine(cmdline: str, engine: str) -> None:
    assert engine_of(cmdline, "ofisync_sink", pid=7, bench_pid=BENCH_PID) == engine


def test_the_bench_is_itself_whatever_its_command_line() -> None:
    assert (
        engine_of("/work/main/.venv/bin/python -m streams.cli bench", "ofisync_sink", 9, 9)
        == "bench"
    )


def _sample(pid: int, engine: str, ticks: int, started: int = 1) -> tuple[tuple[int, int], Sample]:
    return (pid, started), Sample(engine, ticks)


def test_usage_counts_what_each_process_used_within_the_window() -> None:
    first = dict([_sample(1, "worker", 1_000), _sample(2, "kafka", 50), _sample(3, "connect", 7)])
    last = dict(
        [
            _sample(1, "worker", 1_000 + 150),  # 1.5 s of 2 s
            _sample(2, "kafka", 50 + 20),
            # pid 3 ended before the last sample: what it used after its last sighting is lost
            _sample(3, "connect", 7),
            _sample(4, "postgres_writes", 60),  # started in the window: all of it counts
            _sample(2, "kafka", 30, started=99),  # pid 2 reused by a new process
        ]
    )
    got = usage(first, last, seconds=2.0, ticks_per_s=100, changes=1_000)
    assert got["percent_of_a_core"]["worker"] == 75.0
    assert got["percent_of_a_core"]["kafka"] == 25.0  # (20 + 30) ticks
    assert got["percent_of_a_core"]["postgres_writes"] == 30.0
    assert got["percent_of_a_core"]["connect"] == 0.0
    assert got["total_percent"] == 130.0
    assert got["changes_per_s"] == 500.0
    assert got["cpu_us_per_change"]["worker"] == 1_500  # 1.5 s over 1,000 changes
    assert got["cpu_us_per_change"]["postgres_writes"] == 600


def test_without_changes_there_is_no_cost_per_change() -> None:
    got = usage({}, dict([_sample(1, "worker", 10)]), seconds=1.0, ticks_per_s=100, changes=0)
    assert got["changes_per_s"] is None and "cpu_us_per_change" not in got


def test_the_process_table_is_read_by_pid_and_start_time(tmp_path: Path) -> None:
    def process(pid: int, name: str, cmdline: bytes, utime: int, stime: int) -> None:
        entry = tmp_path / str(pid)
        entry.mkdir()
        # Fields 3.. after the name; utime and stime are the 14th and 15th, starttime the 22nd.
        rest = ["S"] + ["0"] * 10 + [str(utime), str(stime)] + ["0"] * 6 + ["777"]
        (entry / "stat").write_text(f"{pid} ({name}) " + " ".join(rest) + "\n")
        (entry / "cmdline").write_bytes(cmdline)

    process(10, "postgres", b"postgres: ofisync_sink oficrm 127.0.0.1(1) idle\0", 5, 3)
    process(11, "a (weird) name", b"/usr/bin/java\0-cp\0x\0kafka.Kafka\0", 40, 2)
    (tmp_path / "self").mkdir()  # not a process
    seen = _read(tmp_path, "ofisync_sink", BENCH_PID, {})
    assert seen[(10, 777)] == Sample("postgres_writes", 8)
    assert seen[(11, 777)] == Sample("kafka", 42)


def test_the_window_measures_the_cpu_this_process_spends_in_it() -> None:
    with MachineTime("ofisync_sink") as window:
        spent_from = time.thread_time()
        while time.thread_time() - spent_from < 0.3:  # CPU time, whatever the machine's load
            pass
    got = window.result(changes=100)
    assert got["cores"] == os.cpu_count()
    # The process's own CPU time is counted in clock ticks; 0.3 s spent is at least 0.25 s.
    assert got["cpu_us_per_change"]["bench"] >= 2_500
    assert got["percent_of_a_core"]["bench"] > 0


def test_without_a_process_table_the_result_says_so(tmp_path: Path) -> None:
    with MachineTime("ofisync_sink", proc=tmp_path / "missing") as window:
        pass
    assert "unavailable" in window.result(changes=10)
