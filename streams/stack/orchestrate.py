"""`ofisync up`, `down` and `status`: the local stack as one thing.

Order up: install → PostgreSQL ×2 (schema, demo data) → Kafka → Connect + connectors → worker.
Down is the reverse. Every step is skipped when already done, so a second `up` is a no-op,
and `up` also restarts whatever died since.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg

from streams.settings import Endpoint, Settings
from streams.stack import install
from streams.stack.connect import Worker as ConnectWorker
from streams.stack.connect import is_running, wait_streaming
from streams.stack.kafka import Broker
from streams.stack.postgres import Cluster
from streams.stack.procs import StackError, port_open
from streams.stack.topics import ensure_topics
from streams.stack.worker_process import WorkerProcess, worker_indices


class Progress(Protocol):
    def step(self, title: str) -> Any: ...

    def note(self, text: str) -> None: ...


class PlainProgress:
    """Progress as plain lines: one per step, with its duration."""

    def __init__(self, echo: Callable[[str], None] = print) -> None:
        self.echo = echo

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.monotonic()
        self.echo(f"… {title}")
        try:
            yield
        except BaseException:
            self.echo(f"✗ {title}")
            raise
        self.echo(f"✓ {title} ({time.monotonic() - started:.1f} s)")

    def note(self, text: str) -> None:
        self.echo(f"  {text}")


class Component(Protocol):
    def pid(self) -> int | None: ...

    def start(self) -> None: ...

    def stop(self) -> bool: ...


def _start(component: Component, started: list[Callable[[], bool]]) -> None:
    """Starts `component` unless it runs, noting its stop for `up`'s clean-up on failure."""
    if component.pid() is None:
        component.start()
        started.append(component.stop)


@dataclass
class Stack:
    settings: Settings
    erp: Cluster = field(init=False)
    crm: Cluster = field(init=False)
    kafka: Broker = field(init=False)
    connect: ConnectWorker = field(init=False)
    workers: list[WorkerProcess] = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self.erp = Cluster(s, s.erp)
        self.crm = Cluster(s, s.crm)
        self.kafka = Broker(s)
        self.connect = ConnectWorker(s)
        self.workers = [WorkerProcess(s, index) for index in range(1, s.workers + 1)]

    @property
    def worker(self) -> WorkerProcess:
        """The first worker: the one whose web port is OFISYNC_WEB."""
        return self.workers[0]

    def start_workers(self) -> None:
        for worker in self.workers:
            worker.start()

    def stop_workers(self) -> bool:
        """Stops every worker of the stack, also those an earlier `up` started with a larger
        OFISYNC_WORKERS; whether any was running."""
        indices = {w.index for w in self.workers} | worker_indices(self.settings)
        stopped = [WorkerProcess(self.settings, index).stop() for index in sorted(indices)]
        return any(stopped)

    def ports(self) -> list[tuple[str, Endpoint, Callable[[], int | None]]]:
        s = self.settings
        return [
            ("OfiViaje PostgreSQL", s.erp.endpoint, self.erp.pid),
            ("OfiCrmTravel PostgreSQL", s.crm.endpoint, self.crm.pid),
            ("Kafka", s.kafka, self.kafka.pid),
            ("Kafka controller", s.kafka_controller, self.kafka.pid),
            ("Kafka Connect", s.connect, self.connect.pid),
            *((f"{w.name} web", w.settings.web, w.pid) for w in self.workers),
        ]

    def check_ports(self) -> None:
        """Fails before anything starts if a port we need is held by another program."""
        for what, ep, pid in self.ports():
            if pid() is None and port_open(ep.host, ep.port):
                raise StackError(
                    f"port {ep} ({what}) is already in use by another program. "
                    f"Stop that program, or move {what} elsewhere with "
                    f"{ep.variable}=<host:port>."
                )

    def up(self, demo: bool, progress: Progress, with_worker: bool = True) -> None:
        s = self.settings
        for d in (s.home, s.logs, s.run):
            d.mkdir(parents=True, exist_ok=True)
        self.check_ports()
        started: list[Callable[[], bool]] = []
        try:
            with progress.step(
                f"fetch Kafka {install.pinned('kafka')} + Debezium {install.pinned('debezium')}"
                " jars if missing"
            ):
                install.ensure_jars(s)
            with progress.step(
                f"PostgreSQL {install.pinned('postgres')} if missing"
                if s.postgres_bin is None
                else f"PostgreSQL in {s.postgres_bin}"
            ):
                install.ensure_postgres(s)
            for cluster in (self.erp, self.crm):
                with progress.step(f"{cluster.db.title} PostgreSQL on {cluster.db.endpoint}"):
                    cluster.init()
                    _start(cluster, started)
                    remade = cluster.ensure_database()
                    if remade:
                        progress.note(
                            f"write triggers made for the new columns of {', '.join(remade)}"
                        )
            if demo:
                with progress.step("demo data"):
                    progress.note(self.load_demo())
            with progress.step(f"Kafka (KRaft) on {s.kafka}"):
                _start(self.kafka, started)
            with progress.step(f"Kafka Connect on {s.connect}"):
                _start(self.connect, started)
            with progress.step("topics"):
                ensure_topics(s)
            for cluster in (self.erp, self.crm):
                side = cluster.db.side
                with progress.step(f"connector {s.connector_name(side)}: snapshot, then streaming"):
                    self.connect.register(side)  # a no-op when it runs as configured
                    if self._has_failed(side):
                        self.connect.restart_failed(side)
                    wait_streaming(s, self.connect, cluster.db)
            if with_worker:
                for worker in self.workers:
                    with progress.step(f"ofisync {worker.name}, web on {worker.settings.web}"):
                        _start(worker, started)
        except BaseException:
            for stop in reversed(started):
                try:
                    stop()
                except StackError as exc:
                    progress.note(f"while cleaning up: {exc}")
            raise

    def _has_failed(self, side: str) -> bool:
        st = self.connect.connector_status(side)
        return st["state"] == "FAILED" or any(t["state"] == "FAILED" for t in st["tasks"])

    def load_demo(self) -> str:
        from ofisync_tools.demo import load_demo

        with (
            psycopg.connect(self.settings.erp.dsn) as erp,
            psycopg.connect(self.settings.crm.dsn) as crm,
        ):
            summary = load_demo(erp, crm)
        return str(summary)

    def down(self, progress: Progress) -> None:
        for title, stop in (
            ("workers" if self.settings.workers > 1 else "worker", self.stop_workers),
            ("Kafka Connect", self.connect.stop),
            ("Kafka", self.kafka.stop),
            ("OfiCrmTravel PostgreSQL", self.crm.stop),
            ("OfiViaje PostgreSQL", self.erp.stop),
        ):
            with progress.step(f"stop {title}"):
                if not stop():
                    progress.note("was not running")

    def status(self) -> dict[str, Any]:
        s = self.settings
        components: list[dict[str, Any]] = []

        def add(name: str, pid: int | None, endpoint: str, healthy: bool, **extra: Any) -> None:
            components.append(
                {"name": name, "pid": pid, "endpoint": endpoint, "healthy": healthy} | extra
            )

        for cluster in (self.erp, self.crm):
            pid = cluster.pid()
            add(
                cluster.name,
                pid,
                str(cluster.db.endpoint),
                pid is not None and cluster.accepts_connections(),
                database=cluster.db.safe_dsn,
            )
        add("kafka", self.kafka.pid(), str(s.kafka), self.kafka.healthy())
        connect_up = self.connect.healthy()
        add("connect", self.connect.pid(), s.connect_url, connect_up)
        connectors = []
        for db in s.databases:
            st: dict[str, Any] = {
                "name": s.connector_name(db.side),
                "state": "UNKNOWN",
                "tasks": [],
            }
            if connect_up:
                st = self.connect.connector_status(db.side)
            connectors.append(st | {"healthy": is_running(st)})
        for worker in self.workers:
            worker_state = (worker.health() or {}).get("state", "down")
            worker_pid = worker.pid()
            add(
                worker.name,
                worker_pid,
                worker.settings.web_url,
                worker_pid is not None and worker_state == "running",
                state=worker_state,
            )
        healthy = all(c["healthy"] for c in components) and all(c["healthy"] for c in connectors)
        return {"healthy": healthy, "components": components, "connectors": connectors}
