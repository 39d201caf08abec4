"""Creating the tenant's topics (idempotent), with kafka-python's admin client: by `ofisync up`,
by the production register job, and by the worker when it starts."""

from __future__ import annotations

import contextlib

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streams.core.topics import Topics
from streams.settings import Settings

# The configuration topics are read from the start by every worker (streams/worker/mapping_feed),
# so they keep each row's newest change forever instead of expiring after the retention time.
COMPACTED = {"cleanup.policy": "compact"}


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
