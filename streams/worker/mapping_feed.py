"""Mapping feed (capture → decode → mapping): folds the captured configuration tables into the
live `Mapping` the sinks translate with.

Every worker reads the (compacted) configuration topics from the start, without a consumer
group, and keeps following them. `ready` is set once the topics have been read up to where
they ended when the worker started, so no file is translated with a half-known mapping.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaAdminClient

from streams.core.decode import decode
from streams.core.mapping import Mapping
from streams.core.model import ChangeEvent

log = logging.getLogger("ofisync.feed")


class MappingFeed:
    def __init__(self, bootstrap: str, topics: list[str], tenant: str) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.tenant = tenant
        self.mapping = Mapping()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Follows the configuration topics for as long as the worker runs."""
        while True:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception:  # Kafka away: the mapping stays as it was, and is caught up later
                log.warning("mapping feed interrupted; reconnecting", exc_info=True)
                await asyncio.sleep(2)

    async def _follow(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            client_id="ofisync-mapping-feed",
        )
        await consumer.start()
        try:
            partitions = await asyncio.to_thread(_partitions, self.bootstrap, self.topics)
            consumer.assign(partitions)
            await consumer.seek_to_beginning(*partitions)
            ends = await consumer.end_offsets(partitions)
            # Rebuilt from the start on every (re)connection; the old one serves until then.
            mapping = Mapping()
            caught_up = False
            while True:
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                for records in batches.values():
                    for record in records:
                        event = decode(record.topic, record.key, record.value, self.tenant)
                        if isinstance(event, ChangeEvent):
                            mapping.fold(event)
                if not caught_up and all(
                    [await consumer.position(tp) >= end for tp, end in ends.items()]
                ):
                    caught_up = True
                    self.mapping = mapping
                    self.ready.set()
                    log.info("mapping loaded: %s", mapping.as_json())
        finally:
            await consumer.stop()


def _partitions(bootstrap: str, topics: list[str]) -> list[TopicPartition]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ofisync-mapping-feed")
    try:
        described = admin.describe_topics(topics)
    finally:
        admin.close()
    found = [
        TopicPartition(t["name"], p["partition_index"]) for t in described for p in t["partitions"]
    ]
    missing = set(topics) - {tp.topic for tp in found}
    if missing:
        raise RuntimeError(f"topics {sorted(missing)} are missing; `ofisync up` creates them")
    return sorted(found)
