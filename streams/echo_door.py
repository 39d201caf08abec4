"""Echoes dropped at the door (worker, capture → decode): before a captured message becomes an
event for the capture agent.

Every change the sync writes comes back through Debezium as an echo, which the capture agent
reads only to drop: under load half of what it reads. Each one cost what any message costs in
Faust (an event, the agent's queue, the stream's sensors, an acknowledgement through the stream)
and a JSON parse. `drop_echoes_at_the_door` wraps the conductor's handler of each capture
partition: a message that `decode.looks_like_echo` recognises from its bytes is counted,
acknowledged to the consumer (so the partition's committed offset moves past it) and goes no
further; anything else takes the usual way and is decoded in full. A replay reads the topics
itself (streams/replay.py) and still sees the sync's own writes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import faust

from streams.decode import looks_like_echo

Handler = Callable[[Any], Awaitable[None]]


def drop_echoes_at_the_door(
    app: faust.App, capture_topics: Collection[str], on_echo: Callable[[str], None]
) -> None:
    """From now on, the handlers the conductor builds for `capture_topics` drop echoes, calling
    `on_echo(topic)` for each. Call before the consumer starts: handlers are built when
    partitions are assigned."""
    conductor: Any = app.topics
    build = conductor._build_handler
    topics = frozenset(capture_topics)

    def build_handler(tp: Any, channels: Any) -> Handler:
        handler: Handler = build(tp, channels)
        if tp.topic not in topics:
            return handler
        consumer = app.consumer
        monitor = app.monitor
        flowing = app.flow_control.is_active
        topic = tp.topic

        async def on_message(message: Any) -> None:
            # During a rebalance (flow stopped), or for a message fetched before one, the usual
            # way decides, as for any message: such messages are not acknowledged.
            if (
                looks_like_echo(message.value)
                and flowing()
                and message.generation_id == app.consumer_generation_id
            ):
                on_echo(topic)
                consumer.ack(message)
                # Faust's livelock check reads when a partition's stream last took an event:
                # a partition that carries only echoes for a while is still being read.
                monitor.stream_inbound_time[tp] = time.monotonic()
                return
            await handler(message)

        return on_message

    conductor._build_handler = build_handler
