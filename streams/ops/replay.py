"""Replay (operations): re-read one source's captured changes from a point in time and send
their commands again, while the worker keeps running.

Use: a database was restored from a backup and lost recent changes. The restored database's
`ofisync.applied` positions went back with it, so the changes the other side captured since
the backup apply again; the sync's own writes on the other side (values that came from the
restored side) are re-sent too, so the restored side gets back its own lost edits. Over data
already in sync a replay changes nothing: positions skip what was applied, equal values are
no-ops, and replayed values older than the target's are history, not conflicts.

The replayer is a plain consumer (no group: the worker's offsets are not touched) reading from
the offsets Kafka finds for the time (`offsets_for_times`) up to where each partition ended when
it started; it produces commands onto the command topics, where the worker applies them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.core import codec
from streams.core.contract import ENTITIES, PNR_TABLE
from streams.core.model import Command, Side
from streams.core.routing import route
from streams.core.topics import Topics
from streams.settings import Settings


class ReplayError(ValueError):
    pass


@dataclass(frozen=True)
class Plan:
    topics: list[str]
    start: dict[TopicPartition, int]
    end: dict[TopicPartition, int]

    @property
    def total(self) -> int:
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.start)


def topics_for(tenant: str, source: Side, entity: str | None) -> list[str]:
    topics = Topics(tenant)
    if entity is not None and entity not in ENTITIES:
        raise ReplayError(f"unknown entity {entity!r}; one of: {', '.join(ENTITIES)}")
    chosen = [e for e in ENTITIES.values() if entity in (None, e.name)]
    tables = [e.table(source) for e in chosen if source in e.sources]
    if source is Side.ERP and entity in (None, "segment"):
        tables.append(PNR_TABLE)  # PNR captures zero placeholders
    if not tables:
        raise ReplayError(f"{entity} changes are not captured from {source.value}")
    return sorted({topics.capture(source, t) for t in tables})


def plan(consumer: KafkaConsumer, topics: list[str], since_ms: int) -> Plan:
    partitions = [
        TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())
    ]
    end = consumer.end_offsets(partitions)
    found = consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    start = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in partitions}
    return Plan(topics, start, end)


def replay(
    settings: Settings,
    source: Side,
    since_ms: int,
    entity: str | None,
    progress: Callable[[int, int], None],
) -> Counter[str]:
    """Replays and returns what became of the changes read (commands sent, skipped, ...)."""
    topics = Topics(settings.tenant)
    names = topics_for(settings.tenant, source, entity)
    consumer = KafkaConsumer(
        bootstrap_servers=str(settings.kafka),
        enable_auto_commit=False,
        client_id="ofisync-replay",
        max_poll_records=2000,
    )
    producer = KafkaProducer(
        bootstrap_servers=str(settings.kafka), client_id="ofisync-replay", acks="all", linger_ms=5
    )
    outcomes: Counter[str] = Counter()
    try:
        work = plan(consumer, names, since_ms)
        todo = {tp: end for tp, end in work.end.items() if work.start[tp] < end}
        consumer.assign(list(todo))
        for tp in todo:
            consumer.seek(tp, work.start[tp])
        done = 0
        progress(done, work.total)
        while todo:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    if record.offset >= work.end[tp]:
                        continue
                    done += 1
                    outcome = route(
                        record.topic, record.key, record.value, settings.tenant, replay=True
                    )
                    if isinstance(outcome, Command):
                        if entity is None or outcome.entity == entity:
                            producer.send(
                                topics.commands(outcome.target),
                                key=outcome.kafka_key,
                                value=codec.encode(outcome),
                            )
                            outcomes["commands sent"] += 1
                    else:
                        outcomes[type(outcome).__name__.lower()] += 1
                if consumer.position(tp) >= work.end[tp]:
                    todo.pop(tp, None)
                    consumer.pause(tp)
            progress(done, work.total)
        producer.flush()
    finally:
        producer.close()
        consumer.close()
    return outcomes
