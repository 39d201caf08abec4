"""The local stack: capture from both databases, idempotent `up`, `status`, clean `down`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from streams.settings import Settings
from streams.stack.orchestrate import Stack
from streams.stack.procs import pid_alive, port_open
from tests.integration.helpers import TopicTail, eventually, ofisync, query, tag


def _changes(
    tail: TopicTail, key_field: str, key_value: object, count: int
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    def probe() -> list[dict[str, Any]] | None:
        for record in tail.poll():
            value = json.loads(record.value)
            row = value["after"] or value["before"]
            if row.get(key_field) == key_value:
                seen.append(value)
        return seen if len(seen) >= count else None

    return eventually(probe, 10, f"{count} change events for {key_value}")


def test_erp_changes_are_captured_with_before_images(stack: Stack, erp: str) -> None:
    name = f"Sucursal {tag()}"
    tail = TopicTail(stack.settings, f"{stack.settings.tenant}.erp.public.sucursales")
    try:
        (branch_id,) = query(
            erp, "INSERT INTO sucursales (nombre) VALUES (%s) RETURNING id", (name,)
        )[0]
        query(erp, "UPDATE sucursales SET crm_agencia_id = 'AG-T' WHERE id = %s", (branch_id,))
        query(erp, "DELETE FROM sucursales WHERE id = %s", (branch_id,))
        create, update, delete = _changes(tail, "id", branch_id, 3)
    finally:
        tail.close()
    assert create["op"] == "c" and create["after"]["nombre"] == name
    assert update["op"] == "u"
    assert update["before"]["crm_agencia_id"] is None
    assert update["after"]["crm_agencia_id"] == "AG-T"
    assert delete["op"] == "d" and delete["before"]["nombre"] == name


def test_crm_changes_are_captured_with_before_images(stack: Stack, crm: str) -> None:
    agency = f"AG-{tag()}"
    tail = TopicTail(stack.settings, f"{stack.settings.tenant}.crm.public.agencies")
    try:
        query(crm, "INSERT INTO agencies (id, name) VALUES (%s, 'Nueva')", (agency,))
        query(crm, "UPDATE agencies SET name = 'Renombrada' WHERE id = %s", (agency,))
        query(crm, "DELETE FROM agencies WHERE id = %s", (agency,))
        create, update, delete = _changes(tail, "id", agency, 3)
    finally:
        tail.close()
    assert [create["op"], update["op"], delete["op"]] == ["c", "u", "d"]
    assert update["before"]["name"] == "Nueva" and update["after"]["name"] == "Renombrada"
    assert delete["before"]["id"] == agency


def test_document_content_and_crm_password_are_not_captured(stack: Stack, erp: str) -> None:
    tail = TopicTail(stack.settings, f"{stack.settings.tenant}.erp.public.documentos")
    try:
        client = query(erp, "INSERT INTO clientes (nombre) VALUES ('doc owner') RETURNING id")[0][0]
        number = f"T-{tag()}"
        file_id = query(
            erp,
            "INSERT INTO expedientes (numero, cliente_id) VALUES (%s, %s) RETURNING id",
            (number, client),
        )[0][0]
        doc_id = query(
            erp,
            "INSERT INTO documentos (expediente_id, nombre_fichero, contenido)"
            " VALUES (%s, 'x.pdf', %s) RETURNING id",
            (file_id, b"%PDF-secret"),
        )[0][0]
        (event,) = _changes(tail, "id", doc_id, 1)
    finally:
        tail.close()
    assert "contenido" not in event["after"]
    assert event["after"]["nombre_fichero"] == "x.pdf"


def test_second_up_is_a_no_op(stack: Stack) -> None:
    before = {c["name"]: c["pid"] for c in stack.status()["components"]}
    done = ofisync("up")
    after = {c["name"]: c["pid"] for c in stack.status()["components"]}
    assert before == after
    assert "ofisync is up" in done.stdout


def test_status_reports_each_component_and_a_stopped_one(stack: Stack) -> None:
    report = json.loads(ofisync("status", "--json").stdout)
    names = {c["name"] for c in report["components"]}
    assert {"postgres-erp", "postgres-crm", "kafka", "connect", "worker"} <= names
    assert report["healthy"] and all(c["pid"] for c in report["components"])
    assert {c["name"] for c in report["connectors"]} == {"ofisync-erp", "ofisync-crm"}

    stack.worker.stop()
    down = ofisync("status", "--json", check=False)
    assert down.returncode == 1
    worker = next(c for c in json.loads(down.stdout)["components"] if c["name"] == "worker")
    assert worker["healthy"] is False
    ofisync("up")  # restarts what died
    assert stack.status()["healthy"]


def test_down_leaves_no_port_and_no_process_and_keeps_data(stack: Stack, erp: str) -> None:
    marker = f"keep {tag()}"
    query(erp, "INSERT INTO sucursales (nombre) VALUES (%s)", (marker,))
    pids = [c["pid"] for c in stack.status()["components"]]
    ofisync("down")
    s = stack.settings
    for ep in (s.erp.endpoint, s.crm.endpoint, s.kafka, s.kafka_controller, s.connect, s.web):
        assert not port_open(ep.host, ep.port), f"{ep} still listening after down"
    assert not any(pid_alive(p) for p in pids if p)
    ofisync("up")
    assert query(erp, "SELECT count(*) FROM sucursales WHERE nombre = %s", (marker,))[0][0] == 1


def test_a_taken_port_stops_up_naming_port_and_variable(tmp_path: object) -> None:
    env = dict(os.environ)
    env.update(
        {
            "OFISYNC_HOME": str(tmp_path),
            "OFISYNC_ERP_DSN": "postgresql://postgres@127.0.0.1:27432/ofiviaje",
            "OFISYNC_CRM_DSN": "postgresql://postgres@127.0.0.1:27433/oficrm",
            "OFISYNC_KAFKA": "127.0.0.1:29092",
            "OFISYNC_KAFKA_CONTROLLER": "127.0.0.1:29093",
            "OFISYNC_CONNECT": "http://127.0.0.1:28083",
            "OFISYNC_WEB": "http://127.0.0.1:26066",
        }
    )
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 29092))
        blocker.listen()
        done = subprocess.run(
            [sys.executable, "-m", "streams.cli", "up"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2
    assert "127.0.0.1:29092" in done.stderr and "OFISYNC_KAFKA" in done.stderr
    settings = Settings.from_env(env)
    assert not port_open("127.0.0.1", 27432), "nothing may be left half-started"
    assert not (settings.home / "pg").exists()
