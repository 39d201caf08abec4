"""The apply core against a real PostgreSQL pair, with no Kafka and no Connect: the two clusters
of the local stack (both schemas, the sync's triggers, roles and replication origins), started
once for the session on ports of their own, and sinks called directly with commands."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from streams.apply.connections import SinkConnections, origin_names
from streams.apply.sink import Sink
from streams.core.conflicts import Policy
from streams.core.mapping import Mapping
from streams.core.model import Side
from streams.secrets import Role, login_dsn
from streams.settings import Settings
from streams.stack.postgres import Cluster
from tests.conftest import REPO

COMPONENT_ENV = {
    "OFISYNC_HOME": str(REPO / ".ofisync" / "component"),
    "OFISYNC_ERP_DSN": "postgresql://postgres@127.0.0.1:25442/ofiviaje",
    "OFISYNC_CRM_DSN": "postgresql://postgres@127.0.0.1:25443/oficrm",
}


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env(dict(os.environ) | COMPONENT_ENV)


@pytest.fixture(scope="package")  # stopped once the component tests are done
def databases(settings: Settings) -> Iterator[Settings]:
    clusters = [Cluster(settings, db) for db in settings.databases]
    for cluster in clusters:
        cluster.init()
        cluster.start()
        cluster.ensure_database()
    yield settings
    for cluster in clusters:
        cluster.stop()


def sink_for(settings: Settings, target: Side, policy: Policy = Policy.LATER_WINS) -> Sink:
    dsns = {db.side: login_dsn(settings, db, Role.SINK) for db in settings.databases}
    origins = {side: origin_names(settings.tenant, side) for side in Side}
    connections = SinkConnections(target, dsns[target.value], dsns[target.other.value], origins)
    return Sink(target, connections, policy, Mapping)
