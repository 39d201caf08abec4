"""Dead letters (operations): what the worker could not process, why, and sending it back.

The worker writes each dead letter to `<tenant>.dlq` with the original key and bytes and
headers naming the stage, the reason and where it came from (streams/worker/dead_letters.py). A
dead letter's id is `<partition>:<offset>` in that topic. Retrying one produces the original
message again onto the topic it came from, where the worker processes it as new; a command the
target refused goes to its target's command topic, as history: its values carry the time of the
change they came from, so a field changed since at the source keeps its newer value, and the
others land. Then a marker record (`ofisync-retry-of`) in the dead-letter topic remembers it
was retried. If the cause is still there it comes back as a new dead letter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streams.core import codec
from streams.core.topics import Topics
from streams.settings import Settings

RETRY_OF = "ofisync-retry-of"


@dataclass(frozen=True)
class DeadLetter:
    id: str
    stage: str
    reason: str
    topic: str  # where the original came from
    partition: int
    offset: int
    failed_at_ms: int
    key: bytes | None
    value: bytes | None
    retried: bool = False

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "stage": self.stage,
            "reason": self.reason,
            "from": f"{self.topic}[{self.partition}]@{self.offset}",
            "failed_at_ms": self.failed_at_ms,
            "retried": self.retried,
        }

    def original(self) -> Any:
        """The original message, readable: a Debezium change as JSON, a command as fields."""
        if self.value is None:
            return None
        if self.stage in ("apply", "command"):
            try:
                return codec.decode_record(self.value)
            except (codec.CodecError, ValueError, EOFError):
                pass
        try:
            return json.loads(self.value)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self.value.decode("utf-8", "replace")

    def destination(self, topics: Topics) -> str:
        """Where a retry sends it: back to its topic, or a command to its command topic."""
        if self.stage == "apply" and self.value is not None:
            try:
                return topics.commands(codec.decode(self.value).target)
            except (codec.CodecError, ValueError, KeyError, EOFError):
                return self.topic
        return self.topic


def _headers(record: Any) -> dict[str, str]:
    return {k: v.decode("utf-8", "replace") for k, v in (record.headers or [])}


def _consumer(settings: Settings) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A consumer assigned to every partition of the dead-letter topic, from its beginning."""
    topic = Topics(settings.tenant).dead_letters
    consumer = KafkaConsumer(
        bootstrap_servers=str(settings.kafka),
        enable_auto_commit=False,
        client_id="ofisync-dlq",
        consumer_timeout_ms=1000,
    )
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    if partitions:
        consumer.assign(partitions)
        consumer.seek_to_beginning()
    return consumer, partitions


def _up_to_the_end(consumer: KafkaConsumer, partitions: list[TopicPartition]) -> Iterator[Any]:
    """The records from where `consumer` is to where the topic ends now."""
    ends = consumer.end_offsets(partitions)
    while any(consumer.position(tp) < end for tp, end in ends.items()):
        for records in consumer.poll(timeout_ms=500).values():
            yield from records


def read_all(settings: Settings) -> list[DeadLetter]:
    """Every dead letter in the topic, oldest first, with whether it was retried."""
    consumer, partitions = _consumer(settings)
    letters: list[DeadLetter] = []
    retried: set[str] = set()
    try:
        for r in _up_to_the_end(consumer, partitions) if partitions else ():
            h = _headers(r)
            if RETRY_OF in h:
                retried.add(h[RETRY_OF])
                continue
            letters.append(
                DeadLetter(
                    id=f"{r.partition}:{r.offset}",
                    stage=h.get("ofisync-stage", "?"),
                    reason=h.get("ofisync-reason", "?"),
                    topic=h.get("ofisync-topic", "?"),
                    partition=int(h.get("ofisync-partition", "-1")),
                    offset=int(h.get("ofisync-offset", "-1")),
                    failed_at_ms=int(h.get("ofisync-failed-at", "0")),
                    key=r.key,
                    value=r.value,
                )
            )
    finally:
        consumer.close()
    return [replace(letter, retried=letter.id in retried) for letter in letters]


class WaitingCount:
    """How many dead letters wait (were never retried), for the dashboard: each call reads only
    what the topic got since the one before. Reading the whole topic every time held the worker's
    interpreter for a while on every sample, longer the more dead letters there were."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._reader: tuple[KafkaConsumer, list[TopicPartition]] | None = None
        self._waiting: set[str] = set()
        self._retried: set[str] = set()

    def count(self) -> int:
        if self._reader is None or not self._reader[1]:
            self.close()
            self._reader = _consumer(self.settings)
        consumer, partitions = self._reader
        try:
            for r in _up_to_the_end(consumer, partitions) if partitions else ():
                retry_of = _headers(r).get(RETRY_OF)
                if retry_of is not None:
                    self._retried.add(retry_of)
                    self._waiting.discard(retry_of)
                elif (letter := f"{r.partition}:{r.offset}") not in self._retried:
                    self._waiting.add(letter)
        except Exception:
            self.close()  # read again from the beginning next time
            raise
        return len(self._waiting)

    def close(self) -> None:
        if self._reader is not None:
            self._reader[0].close()
        self._reader = None
        self._waiting.clear()
        self._retried.clear()


def resent(letter: DeadLetter) -> bytes | None:
    """What a retry sends: the original message, or a refused command marked as history."""
    if letter.stage == "apply" and letter.value is not None:
        try:
            return codec.encode(codec.decode(letter.value)._replace(replay=True))
        except (codec.CodecError, ValueError, KeyError, EOFError):
            return letter.value
    return letter.value


def retry(
    settings: Settings, letters: list[DeadLetter], progress: Callable[[DeadLetter], None]
) -> int:
    """Sends each dead letter back where it came from; returns how many were sent."""
    topics = Topics(settings.tenant)
    producer = KafkaProducer(
        bootstrap_servers=str(settings.kafka), client_id="ofisync-dlq", acks="all"
    )
    try:
        for letter in letters:
            producer.send(letter.destination(topics), key=letter.key, value=resent(letter)).get(30)
            producer.send(
                topics.dead_letters,
                key=f"retried:{letter.id}".encode(),
                value=b"",
                headers=[(RETRY_OF, letter.id.encode())],
            ).get(30)
            progress(letter)
        producer.flush()
    finally:
        producer.close()
    return len(letters)
