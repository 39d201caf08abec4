"""Topic names of one tenant, and their creation (idempotent) with kafka-python's admin client."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.model import ENTITIES, Side
from streams.settings import Settings

PARTITIONS = 4

# Every table each connector publishes (streams/db/sync_<side>.sql): their topics are created
# up front with the same partition count, rather than on a table's first change.
CAPTURED_TABLES = {
    Side.ERP: (
        "clientes",
        "expedientes",
        "billetes",
        "sucursales",
        "vendedores",
        "config_crm",
        "documentos",
    ),
    Side.CRM: ("accounts", "files", "segments", "agencies", "users", "documents"),
}


@dataclass(frozen=True)
class Topics:
    tenant: str

    def capture(self, side: Side, table: str, schema: str = "public") -> str:
        return f"{self.tenant}.{side.value}.{schema}.{table}"

    def commands(self, target: Side) -> str:
        return f"{self.tenant}.to-{target.value}"

    @property
    def dead_letters(self) -> str:
        return f"{self.tenant}.dlq"

    def captured_entities(self) -> list[str]:
        return [self.capture(side, e.table(side)) for e in ENTITIES.values() for side in Side]

    def all(self) -> list[str]:
        return [
            *(self.capture(side, t) for side, tables in CAPTURED_TABLES.items() for t in tables),
            self.commands(Side.ERP),
            self.commands(Side.CRM),
            self.dead_letters,
        ]


def ensure_topics(settings: Settings, partitions: int = PARTITIONS) -> None:
    names = Topics(settings.tenant).all()
    admin = KafkaAdminClient(bootstrap_servers=str(settings.kafka), client_id="ofisync-topics")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=partitions, replication_factor=1)
            for name in names
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
    finally:
        admin.close()
