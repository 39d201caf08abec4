"""Captured changes taken at the door (worker, capture → decode): straight from Faust's consumer
to the capture batcher.

Faust hands every fetched message to the conductor's handler of its partition, which decodes it
into an event (through the topic's schema, reading the app's settings), puts that on the agent's
queue, and the agent's stream takes it from there with a sensor call on the way in and out and
an acknowledgement through the event. The capture topics carry one message per change, and under
load half of them are echoes of the sync's own writes: that machinery was a fifth of the worker's
event loop while it caught up, for messages that are raw bytes and go to one batcher anyway.

`take_captures_at_the_door` replaces the handler of each capture partition:

- During a rebalance it waits for the flow to resume, as Faust's handler does. A message fetched
  before the rebalance is then left alone, neither handled nor acknowledged, as Faust's streams
  leave it: whoever owns the partition now reads it again from the committed offset.
- An echo, recognised from its bytes (`decode.looks_like_echo`), is counted and acknowledged to
  the consumer, so the partition's committed offset moves past it; it goes no further.
- Anything else goes to `take` (the capture batcher), which acknowledges it once its batch is
  done, and is decoded in full there.

Faust's livelock check reads when a partition's stream last took a message: the door records
that too. The capture agent still subscribes to the topics (that is what makes Faust fetch them
and build these handlers) and runs the batcher; its stream receives nothing. A replay reads the
topics itself (streams/replay.py) and still sees the sync's own writes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import faust

from streams.decode import looks_like_echo

Handler = Callable[[Any], Awaitable[None]]


def take_captures_at_the_door(
    app: faust.App,
    capture_topics: Collection[str],
    on_echo: Callable[[str], None],
    take: Handler,
) -> None:
    """From now on, the conductor's handlers for `capture_topics` give each message to `take`,
    or drop it as an echo after calling `on_echo(topic)`. Call before the consumer starts:
    handlers are built when partitions are assigned."""
    conductor: Any = app.topics
    build = conductor._build_handler
    topics = frozenset(capture_topics)

    def build_handler(tp: Any, channels: Any) -> Handler:
        if tp.topic not in topics:
            handler: Handler = build(tp, channels)
            return handler
        consumer = app.consumer
        inbound = app.monitor.stream_inbound_time
        flow = app.flow_control
        topic = tp.topic

        async def on_message(message: Any) -> None:
            if not flow.is_active():
                await flow.acquire()
            if message.generation_id != app.consumer_generation_id:
                return
            inbound[tp] = time.monotonic()
            if looks_like_echo(message.value):
                on_echo(topic)
                consumer.ack(message)
                return
            await take(message)

        return on_message

    conductor._build_handler = build_handler
