"""Production set-up of Kafka and Kafka Connect, run by the `register` service of compose.yaml on
every `docker compose up` (and by hand: `docker compose run --rm register`). Idempotent.

1. Creates the tenant's topics exactly as the local stack does (streams.stack.topics.ensure_topics:
   the same names, compaction, OFISYNC_PARTITIONS partitions and OFISYNC_REPLICATION_FACTOR
   copies — 3 in compose.yaml), and refuses to go on if one exists with fewer copies.
2. Renders connectors/erp.json and connectors/crm.json with the very function `ofisync up` uses
   (streams.stack.connect.render_connector, for each server's version: on PostgreSQL 16+ the
   sync's own writes are filtered out by the server) and PUTs each config to Kafka Connect.

Values come from the variables the worker reads (streams/settings.py); Debezium logs in as the
capture role `<tenant>_capture` (streams/secrets.py). Passwords stay `${env:...}` placeholders,
resolved inside Connect by its EnvVarConfigProvider: they never pass through here, the REST API
or the config topic.

    python deploy/production/register_connectors.py [--dry-run] [--skip-topics]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from streams.core.topics import Topics
from streams.secrets import Role, login_dsn
from streams.settings import Settings, SettingsError
from streams.stack.connect import (
    CONNECTORS_DIR,
    ConnectError,
    http,
    render_connector,
    server_version,
)
from streams.stack.topics import ensure_topics

REPO = Path(__file__).resolve().parents[2]
CONNECTORS = CONNECTORS_DIR
SIDES = ("erp", "crm")


class SetupError(RuntimeError):
    """Something the operator must fix; the message says what."""


def _replicas(topic: Mapping[str, Any]) -> int:
    """The fewest replicas of any partition, in kafka-python's describe_topics terms."""
    return min((len(p["replica_nodes"]) for p in topic["partitions"]), default=0)


def check_replicas(settings: Settings) -> None:
    """A topic created before this set-up (by hand, or by a worker started with another
    replication factor) may hold fewer copies than wanted: say so rather than keep it."""
    names = Topics(settings.tenant).all()
    admin = KafkaAdminClient(bootstrap_servers=str(settings.kafka), client_id="ofisync-register")
    try:
        admin.wait_for_topics(names, timeout_ms=60_000)  # KRaft metadata lags a little
        thin = sorted(
            t["name"]
            for t in admin.describe_topics(names)
            if _replicas(t) < settings.replication_factor
        )
    finally:
        admin.close()
    if thin:
        raise SetupError(
            f"topics with fewer than {settings.replication_factor} replicas: {', '.join(thin)}."
            " RUNBOOK.md (section 6, `register` fails) says how to give them more."
        )


def wait_for_connect(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            http("GET", f"{url}/connectors", timeout=5)
            return
        except ConnectError as exc:
            if time.monotonic() > deadline:
                raise SetupError(f"Kafka Connect at {url} does not answer: {exc}") from exc
            time.sleep(3)


def register(settings: Settings, specs: Sequence[dict[str, Any]]) -> None:
    url = settings.connect_url
    wait_for_connect(url)
    for spec in specs:
        http("PUT", f"{url}/connectors/{spec['name']}/config", spec["config"], timeout=30)
        print(f"registered connector {spec['name']} at {url}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Create the topics and register the connectors.")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the rendered connector configs; touch nothing"
    )
    parser.add_argument("--skip-topics", action="store_true", help="only register the connectors")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        # The server's version decides the connector's options; read as the sink role, whose
        # password is among the job's secrets.
        specs = [
            render_connector(
                settings, db.side, server_version(db, login_dsn(settings, db, Role.SINK))
            )
            for db in settings.databases
        ]
    except (SettingsError, ConnectError) as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(json.dumps(specs, indent=2))
        return 0
    try:
        if not args.skip_topics:
            ensure_topics(settings)
            check_replicas(settings)
        register(settings, specs)
    except KafkaError as exc:
        print(f"register: Kafka at {settings.kafka} did not answer: {exc}", file=sys.stderr)
        return 2
    except (SetupError, ConnectError) as exc:
        print(f"register: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
