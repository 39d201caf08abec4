"""The local Kafka Connect worker (distributed mode) running the Debezium PostgreSQL connector,
and the connectors themselves: configs in connectors/*.json, registered by PUT (idempotent).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import replace
from typing import Any

import psycopg

from streams.secrets import Role, password, role_name
from streams.settings import Database, Settings
from streams.stack.install import REPO
from streams.stack.kafka import jvm
from streams.stack.procs import StackError, port_open, read_pid, spawn, terminate, wait_until

MAIN_CLASS = "org.apache.kafka.connect.cli.ConnectDistributed"
CONNECTORS_DIR = REPO / "connectors"


class ConnectError(StackError):
    pass


def http(method: str, url: str, body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    req.add_header("Accept", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise ConnectError(f"Kafka Connect {method} {url}: HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectError(f"Kafka Connect {method} {url}: {exc}") from exc
    return json.loads(raw) if raw else None


ORIGIN_FILTER_VERSION = 160000  # pgoutput's `origin` option


def server_version(db: Database, dsn: str | None = None) -> int:
    """The database server's version number (e.g. 180007), logging in with `dsn` (default: the
    database's own)."""
    try:
        with psycopg.connect(dsn or db.dsn, connect_timeout=10) as conn:
            return int(conn.info.server_version)
    except psycopg.Error as exc:
        raise ConnectError(
            f"cannot read {db.title}'s server version at {db.safe_dsn}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
        ) from exc


def render_connector(settings: Settings, side: str, server: int) -> dict[str, Any]:
    """connectors/<side>.json with the settings filled in ({{...}} placeholders), for a server of
    version `server`: from PostgreSQL 16 on, pgoutput is asked for `origin=none`, so the sync's
    own writes (marked with a replication origin) are never sent; older servers reject the option
    and send them marked, and the worker drops them.

    `${env:...}` placeholders are left for Connect's EnvVarConfigProvider, so passwords
    never travel through the REST API nor rest in the config topic.
    """
    text = (CONNECTORS_DIR / f"{side}.json").read_text()
    values = {
        "tenant": settings.tenant,
        "partitions": str(settings.partitions),
        "replication_factor": str(settings.replication_factor),
    }
    for db in settings.databases:
        values |= {
            f"{db.side}.host": db.endpoint.host,
            f"{db.side}.port": str(db.endpoint.port),
            f"{db.side}.user": role_name(settings, Role.CAPTURE),
            f"{db.side}.dbname": db.dbname,
        }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    if "{{" in text:
        raise ConnectError(f"connectors/{side}.json has an unknown {{{{placeholder}}}}")
    spec: dict[str, Any] = json.loads(text)
    if server >= ORIGIN_FILTER_VERSION:
        spec["config"]["slot.stream.params"] = "origin=none"
    return spec


def is_running(status: dict[str, Any]) -> bool:
    """A connector is running when it and every one of its tasks are RUNNING."""
    tasks = status["tasks"]
    return (
        status["state"] == "RUNNING" and bool(tasks) and all(t["state"] == "RUNNING" for t in tasks)
    )


class Worker:
    """Kafka Connect worker `index` of the local stack, in distributed mode: the first is the
    stack's own; more join its group (REST port moved up by the index) and share its tasks."""

    name = "connect"

    def __init__(self, settings: Settings, index: int = 1) -> None:
        suffix = "" if index == 1 else f"-{index}"
        self.settings = (
            settings
            if index == 1
            else replace(
                settings, connect=replace(settings.connect, port=settings.connect.port + index - 1)
            )
        )
        self.dir = settings.home / f"connect{suffix}"
        self.config = self.dir / "worker.properties"
        self.pid_file = settings.run / f"connect{suffix}.pid"
        self.log = settings.logs / f"connect{suffix}.log"
        self.url = self.settings.connect_url

    def properties(self) -> str:
        s = self.settings
        g = s.connect_group
        return "\n".join(
            [
                "# written by `ofisync up`; edits are overwritten",
                f"bootstrap.servers={s.kafka}",
                f"group.id={g}",
                f"config.storage.topic={g}-configs",
                f"offset.storage.topic={g}-offsets",
                f"status.storage.topic={g}-status",
                "config.storage.replication.factor=1",
                "offset.storage.replication.factor=1",
                "status.storage.replication.factor=1",
                "offset.storage.partitions=5",
                "key.converter=org.apache.kafka.connect.json.JsonConverter",
                "value.converter=org.apache.kafka.connect.json.JsonConverter",
                "key.converter.schemas.enable=false",
                "value.converter.schemas.enable=false",
                # Debezium confirms the slot's LSN only up to flushed offsets: flush often.
                "offset.flush.interval.ms=1000",
                f"listeners=http://{s.connect}",
                f"rest.advertised.host.name={s.connect.host}",
                f"rest.advertised.port={s.connect.port}",
                f"plugin.path={s.lib / 'connect-plugins'}",
                "config.providers=env",
                "config.providers.env.class="
                "org.apache.kafka.common.config.provider.EnvVarConfigProvider",
                "connector.client.config.override.policy=All",
                "topic.creation.enable=true",
                # Every plugin we load declares itself: skip the slow class-path scan at start.
                "plugin.discovery=service_load",
                "scheduled.rebalance.max.delay.ms=10000",
                "",
            ]
        )

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def rest_up(self) -> bool:
        if not port_open(self.settings.connect.host, self.settings.connect.port):
            return False
        try:
            http("GET", f"{self.url}/connectors", timeout=3)
            return True
        except ConnectError:
            return False

    def healthy(self) -> bool:
        return self.pid() is not None and self.rest_up()

    def start(self) -> None:
        if self.pid():
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.properties())
        env = dict(os.environ)
        for db in self.settings.databases:
            # Read by Connect's EnvVarConfigProvider: never in the REST API nor a topic.
            env[f"OFISYNC_{db.side.upper()}_PASSWORD"] = password(
                self.settings, db.side, Role.CAPTURE
            )
        spawn(jvm(self.settings, MAIN_CLASS, str(self.config)), self.log, self.pid_file, env=env)
        wait_until(
            self.rest_up,
            180,
            f"Kafka Connect REST on {self.settings.connect} (log: {self.log})",
            alive=lambda: self.pid() is not None,
        )

    def stop(self) -> bool:
        return terminate(self.pid_file, grace=60)

    # Connectors.
    def register(self, side: str) -> None:
        """Creates the connector, or brings its config up to date (restarting it then)."""
        db = self.settings.erp if side == "erp" else self.settings.crm
        spec = render_connector(self.settings, side, server_version(db))
        url = f"{self.url}/connectors/{spec['name']}"
        try:
            current = http("GET", f"{url}/config", timeout=30)
        except ConnectError:
            current = None
        if current is not None and {**current, "name": spec["name"]} == {
            **spec["config"],
            "name": spec["name"],
        }:
            return
        http("PUT", f"{url}/config", spec["config"], timeout=30)
        if current is not None:
            http("POST", f"{url}/restart?includeTasks=true", None, timeout=30)

    def connector_status(self, side: str) -> dict[str, Any]:
        name = self.settings.connector_name(side)
        try:
            status: dict[str, Any] = http("GET", f"{self.url}/connectors/{name}/status", timeout=5)
        except ConnectError as exc:
            return {"name": name, "state": "MISSING", "tasks": [], "error": str(exc)}
        tasks = status.get("tasks", [])
        return {
            "name": name,
            "state": status.get("connector", {}).get("state", "UNKNOWN"),
            "tasks": [
                {"id": t.get("id"), "state": t.get("state"), "trace": (t.get("trace") or "")[:400]}
                for t in tasks
            ],
        }

    def connector_running(self, side: str) -> bool:
        return is_running(self.connector_status(side))

    def restart_failed(self, side: str) -> None:
        name = self.settings.connector_name(side)
        http(
            "POST",
            f"{self.url}/connectors/{name}/restart?includeTasks=true&onlyFailed=true",
            timeout=30,
        )


def slot_streaming(settings: Settings, db: Database) -> bool:
    """True once the connector's replication slot is in use by the capture role: Debezium only
    starts streaming (and so attaches to the slot) after its initial snapshot has finished."""
    try:
        with psycopg.connect(db.dsn, connect_timeout=3) as conn:
            row = conn.execute(
                "SELECT a.usename FROM pg_replication_slots s"
                " JOIN pg_stat_activity a ON a.pid = s.active_pid WHERE s.slot_name = %s",
                (settings.slot_name(db.side),),
            ).fetchone()
    except psycopg.Error:
        return False
    return bool(row and row[0] == role_name(settings, Role.CAPTURE))


def wait_streaming(settings: Settings, worker: Worker, db: Database, timeout: float = 300) -> None:
    def ready() -> bool:
        st = worker.connector_status(db.side)
        failed = [t for t in st["tasks"] if t["state"] == "FAILED"]
        if failed or st["state"] == "FAILED":
            trace = failed[0]["trace"] if failed else ""
            raise ConnectError(f"connector {st['name']} FAILED; see {worker.log}\n{trace}".rstrip())
        return worker.connector_running(db.side) and slot_streaming(settings, db)

    wait_until(ready, timeout, f"connector {settings.connector_name(db.side)} snapshot + streaming")
