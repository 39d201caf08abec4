"""Sending (worker, command → Kafka): the capture agent's frames and every dead letter, handed
straight to the producer.

Faust's `Topic.send` looks the producer up through `App.maybe_start_producer`, which mode's
`stampede` wraps in up to three `asyncio.sleep(0)`: every send gave the event loop up to three
rounds, each as long as the other tasks' ready work. At 500 changes/s each way three quarters
of the capture agent's sends waited so, 3–4 ms each, seven times a batch, while the changes of
the batch waited to go out. The producer is looked up once here; a send appends to the
producer's batch for its partition and returns at once (it waits only when that batch is full).
Faust flushes this same producer before it commits offsets, so a command is still durable before
the change it came from is acknowledged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust


class Sender:
    def __init__(self, app: faust.App) -> None:
        self._app = app
        self._producer: Any = None

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: Mapping[str, bytes] | None = None,
    ) -> None:
        """Queues the message for sending; delivery is awaited by the producer's flush."""
        producer = self._producer
        if producer is None:
            producer = self._producer = await self._app.maybe_start_producer()
        await producer.send(topic, key, value, partition, None, headers)
