"""Topic names of one tenant, and their creation (idempotent) with kafka-python's admin client."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.core.contract import ENTITIES, PNR_TABLE
from streams.core.mapping import CRM_CONFIG_TABLES, ERP_CONFIG_TABLES
from streams.core.model import Side
from streams.settings import Settings

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
        """What the capture agent reads: every synced table, and the tickets (PNR captures)."""
        names = [self.capture(side, e.table(side)) for e in ENTITIES.values() for side in e.sources]
        return sorted({*names, self.capture(Side.ERP, PNR_TABLE)})

    def configuration(self) -> list[str]:
        """What the mapping feed folds: the mapping and header-default tables of both sides."""
        return [
            *(self.capture(Side.ERP, t) for t in ERP_CONFIG_TABLES),
            *(self.capture(Side.CRM, t) for t in CRM_CONFIG_TABLES),
        ]

    def all(self) -> list[str]:
        return [
            *(self.capture(side, t) for side, tables in CAPTURED_TABLES.items() for t in tables),
            self.commands(Side.ERP),
            self.commands(Side.CRM),
            self.dead_letters,
        ]


# The configuration topics are read from the start by every worker (streams/feed.py), so they
# keep each row's newest change forever instead of expiring after the retention time.
COMPACTED = {"cleanup.policy": "compact"}


def command_partition(captured_partition: int, command_partitions: int) -> int:
    """The command partition of a change captured on `captured_partition`: the same number.
    A record's changes all come on one partition of its table's topic (Debezium keys them by
    primary key), so its commands stay in order on one command partition. And Faust gives each
    worker the same partition numbers of every topic with the same count, so with several
    workers the one that captured a change applies its command, reading the frame back from
    memory (`codec.RecentFrames`) instead of decoding another worker's."""
    return captured_partition % command_partitions


def ensure_topics(settings: Settings) -> dict[str, int]:
    """Creates the tenant's topics that are missing; returns each topic's partition count."""
    partitions = settings.partitions
    topics = Topics(settings.tenant)
    compacted = set(topics.configuration())
    admin = KafkaAdminClient(bootstrap_servers=str(settings.kafka), client_id="ofisync-topics")
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=settings.replication_factor,
                topic_configs=COMPACTED if name in compacted else {},
            )
            for name in topics.all()
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        older = [
            ConfigResource(ConfigResourceType.TOPIC, name, configs=COMPACTED)
            for name in sorted(compacted & existing)
        ]
        if older:
            admin.alter_configs(older)
        return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(topics.all())}
    finally:
        admin.close()
