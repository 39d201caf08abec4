"""Replay (operations): re-read captured changes from a point in time and send them again, as
history, while the worker keeps running.

Use: a database was restored from a backup taken at T and lost what happened since. Replaying
both sides since T brings every change back: the other side's changes apply to it again, and its
own (the sync's writes are never captured, so its people's changes can only come back from its own
history) are re-applied to it (REAPPLY, streams/apply/reapply.py). Each replayed value carries the
commit time of the change it came from, and is decided by the clock rule as history
(streams/core/conflicts.py): over data already in sync a replay changes nothing, not a value, not
a record, and records no conflict. Of a record whose last change in the window is its delete only
the delete goes: it flags what a restore brought back, and writes nothing back.

The replayer is a plain consumer (no group: the worker's offsets are not touched) reading from the
offsets Kafka finds for the time (`offsets_for_times`) up to where each partition ended when it
started, twice: once to find the records deleted in the window, once to send. It produces
commands onto the command topics, where the worker applies them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.core import codec
from streams.core.contract import ENTITIES, PNR_TABLE
from streams.core.decode import decode
from streams.core.model import ChangeEvent, Command, Side
from streams.core.routing import deletes, replayed
from streams.core.topics import Topics
from streams.settings import Settings

Record = tuple[str, str, str]  # source, table, key


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


def topics_for(tenant: str, sources: Sequence[Side], entity: str | None) -> list[str]:
    topics = Topics(tenant)
    if entity is not None and entity not in ENTITIES:
        raise ReplayError(f"unknown entity {entity!r}; one of: {', '.join(ENTITIES)}")
    chosen = [e for e in ENTITIES.values() if entity in (None, e.name)]
    names = set()
    for source in sources:
        tables = [e.table(source) for e in chosen if source in e.sources]
        if source is Side.ERP and entity in (None, "segment"):
            tables.append(PNR_TABLE)  # PNR captures zero placeholders
        names |= {topics.capture(source, t) for t in tables}
    if not names:
        raise ReplayError(
            f"{entity} changes are not captured from {' or '.join(s.value for s in sources)}"
        )
    return sorted(names)


def plan(consumer: KafkaConsumer, topics: list[str], since_ms: int) -> Plan:
    partitions = [
        TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())
    ]
    end = consumer.end_offsets(partitions)
    found = consumer.offsets_for_times(dict.fromkeys(partitions, since_ms))
    start = {tp: (found[tp].offset if found.get(tp) is not None else end[tp]) for tp in partitions}
    return Plan(topics, start, end)


def _read(consumer: KafkaConsumer, work: Plan) -> Iterator[Any]:
    """The records of the plan's window, partition by partition in offset order."""
    todo = {tp: end for tp, end in work.end.items() if work.start[tp] < end}
    consumer.assign(list(todo))
    consumer.resume(*todo)  # paused at the end of an earlier pass
    for tp in todo:
        consumer.seek(tp, work.start[tp])
    while todo:
        for tp, records in consumer.poll(timeout_ms=500).items():
            for record in records:
                if record.offset < work.end[tp]:
                    yield record
            if consumer.position(tp) >= work.end[tp]:
                todo.pop(tp, None)
                consumer.pause(tp)


def _record(event: ChangeEvent) -> Record:
    return (event.source.value, event.table, event.key)


def replay(
    settings: Settings,
    sources: Sequence[Side],
    since_ms: int,
    entity: str | None,
    progress: Callable[[int, int], None],
) -> Counter[str]:
    """Replays and returns what became of the changes read (commands sent, skipped, ...)."""
    topics = Topics(settings.tenant)
    names = topics_for(settings.tenant, sources, entity)
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
        total, done = 2 * work.total, 0
        progress(done, total)
        deleted: dict[Record, int] = {}  # record → offset of its last delete in the window
        last: dict[Record, int] = {}
        for message in _read(consumer, work):
            event = decode(message.topic, message.key, message.value, settings.tenant)
            if isinstance(event, ChangeEvent):
                last[_record(event)] = message.offset
                if deletes(event):
                    deleted[_record(event)] = message.offset
            done += 1
            if done % 2000 == 0:
                progress(done, total)
        gone = {r for r, at in deleted.items() if last[r] == at}
        for message in _read(consumer, work):
            done += 1
            if done % 2000 == 0:
                progress(done, total)
            event = decode(message.topic, message.key, message.value, settings.tenant)
            if not isinstance(event, ChangeEvent):
                outcomes[type(event).__name__.lower()] += 1
                continue
            found = replayed(event)
            if not isinstance(found, list):
                outcomes[type(found).__name__.lower()] += 1
                continue
            for cmd in found:
                if _kept(cmd, event, _record(event) in gone, entity):
                    _send(producer, topics, cmd)
                    outcomes["commands sent"] += 1
        producer.flush()
        progress(total, total)
    finally:
        producer.close()
        consumer.close()
    return outcomes


def _kept(cmd: Command, event: ChangeEvent, deleted_later: bool, entity: str | None) -> bool:
    if entity is not None and cmd.entity != entity:
        return False
    # A record deleted in the window is written back to neither side: only its delete goes (its
    # copy on the other side, flagged, may have been linked again to another by a person since).
    return not deleted_later or deletes(event)


def _send(producer: KafkaProducer, topics: Topics, cmd: Command) -> None:
    producer.send(topics.commands(cmd.target), key=cmd.kafka_key, value=codec.encode(cmd))
