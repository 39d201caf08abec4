"""Scale-out on the local stack: two Kafka Connect workers in one distributed group keep the
connectors running when one is lost; two ofisync workers (OFISYNC_WORKERS=2) share the
partitions (see also test_faults' two-workers scenario, which kills one under load)."""

from __future__ import annotations

import json
import os
import signal
from typing import Any

from streams.stack.connect import Worker as ConnectWorker
from streams.stack.connect import http
from streams.stack.orchestrate import Stack
from streams.stack.worker_process import WorkerProcess
from tests.integration.helpers import eventually, ofisync, one, tag, worker_lag

SYNC_WINDOW = 30.0


def _status(url: str, name: str) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = http("GET", f"{url}/connectors/{name}/status", timeout=5)
    except Exception:
        return None
    return status


def test_a_connector_survives_the_loss_of_one_connect_worker(
    stack: Stack, erp: str, crm: str
) -> None:
    s = stack.settings
    second = ConnectWorker(s, index=2)
    second.start()
    try:
        name = s.connector_name("erp")
        # The task runs on one of the two; kill the one that runs it.
        status = eventually(lambda: _status(second.url, name), SYNC_WINDOW, "the group answers")
        running_on = status["tasks"][0]["worker_id"]
        victim, survivor = (
            (stack.connect, second)
            if running_on.endswith(f":{s.connect.port}")
            else (second, stack.connect)
        )
        pid = victim.pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        eventually(
            lambda: (
                (st := _status(survivor.url, name)) is not None
                and st["tasks"]
                and st["tasks"][0]["state"] == "RUNNING"
                and st["tasks"][0]["worker_id"] != running_on
            ),
            90,
            "the task moved to the surviving Connect worker",
            every=1.0,
        )
        client = one(
            erp,
            "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true) RETURNING id",
            (f"Sobrevive {tag()}",),
        )
        eventually(
            lambda: one(crm, "SELECT count(*) FROM accounts WHERE erp_id = %s", (client,)) == 1,
            SYNC_WINDOW,
            "changes still flow through the surviving worker",
        )
    finally:
        second.stop()
        ofisync("up")  # the stack's own Connect worker again, if it was the one killed


def test_two_ofisync_workers_share_the_partitions(stack: Stack, erp: str, crm: str) -> None:
    two = {"OFISYNC_WORKERS": "2"}
    ofisync("up", env=two)  # the stack's worker runs already: only the second starts
    second = WorkerProcess(stack.settings, index=2)
    try:
        status = json.loads(ofisync("status", "--json", env=two).stdout)
        workers = {c["name"]: c for c in status["components"] if c["name"].startswith("worker")}
        assert set(workers) == {"worker", "worker-2"}, workers
        assert workers["worker-2"]["healthy"] and workers["worker-2"]["pid"] == second.pid()
        assert workers["worker-2"]["endpoint"].endswith(f":{stack.settings.web.port + 1}")
        group = stack.settings.worker_group

        def members() -> int:
            from kafka import KafkaAdminClient

            admin = KafkaAdminClient(bootstrap_servers=str(stack.settings.kafka))
            try:
                described = admin.describe_groups([group])[group]
            finally:
                admin.close()
            return len(described["members"])

        eventually(lambda: members() == 2, 60, "both workers in the group", every=1.0)
        names = [f"Compartido {tag()} {i}" for i in range(40)]
        for n in names:
            one(erp, "INSERT INTO clientes (nombre, sincronizar_crm) VALUES (%s, true)", (n,))
        eventually(
            lambda: one(crm, "SELECT count(*) FROM accounts WHERE name = ANY(%s)", (names,)) == 40,
            SYNC_WINDOW,
            "every change crossed exactly once",
        )
        assert one(crm, "SELECT count(DISTINCT name) FROM accounts WHERE name = ANY(%s)",
                   (names,)) == 40  # fmt: skip
    finally:
        second.stop()
    eventually(lambda: worker_lag(stack.settings) == 0, 60, "the first worker alone again")
