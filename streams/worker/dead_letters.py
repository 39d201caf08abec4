"""Dead letters (worker): what cannot be processed goes to `<tenant>.dlq` with the reason and
the original bytes, and processing goes on (`ofisync dlq` lists and retries them).

A message that does not decode, or a change the rules refuse, goes as it came (a retry sends it
back to its topic). A command the target refused goes as the command (a retry sends it to the
command topic of its target, as history: streams/ops/dlq.py), with where its change came from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from streams.core import codec
from streams.core.model import Command
from streams.worker import metrics
from streams.worker.overrides import Producer

log = logging.getLogger("ofisync.worker")


@dataclass(frozen=True)
class CommandOrigin:
    """One command as a message of its own, for its dead letter: a command of a batch (with
    where its change came from), or a released parked change (whose message is long gone)."""

    key: bytes
    value: bytes
    topic: str = "ofisync.parked"
    partition: int = -1
    offset: int = -1

    @classmethod
    def of(cls, cmd: Command, message: Any | None) -> CommandOrigin:
        if message is None:
            return cls(cmd.kafka_key, codec.encode(cmd))
        return cls(
            cmd.kafka_key, codec.encode(cmd), message.topic, message.partition, message.offset
        )


class DeadLetters:
    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def send(self, stage: str, reason: str, message: Any) -> None:
        metrics.DEAD_LETTERS.labels(stage).inc()
        log.warning(
            "dead letter (%s) from %s[%s]@%s: %s",
            stage,
            message.topic,
            message.partition,
            message.offset,
            reason,
        )
        headers = {
            "ofisync-stage": stage.encode(),
            "ofisync-reason": reason.encode()[:4000],
            "ofisync-topic": message.topic.encode(),
            "ofisync-partition": str(message.partition).encode(),
            "ofisync-offset": str(message.offset).encode(),
            "ofisync-failed-at": str(int(time.time() * 1000)).encode(),
        }
        await self.producer.send(self.topic, message.value, key=message.key, headers=headers)
