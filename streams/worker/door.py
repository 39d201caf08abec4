"""Messages taken at the door (worker: from Faust's consumer to the batchers, before decode).

Faust hands every fetched message to the conductor's handler of its partition, which decodes it
into an event (through the topic's schema, reading the app's settings) and puts that on the
agent's queue; the agent's task takes it from there, with a sensor call on the way in and out and
an acknowledgement through the event, on an event loop that the other agents keep busy. The
worker's messages are raw bytes that each agent only hands to its batcher (streams/batching.py):
that machinery was a fifth of the event loop while the worker caught up, and the hop through the
agent's task cost each change tens of milliseconds under load.

`take_at_the_door` replaces the handler of each partition of the topics it is given:

- During a rebalance it waits for the flow to resume, as Faust's handler does. A message fetched
  before the rebalance is then left alone, neither handled nor acknowledged, as Faust's streams
  leave it: whoever owns the partition now reads it again from the committed offset.
- On a capture topic, an echo of the sync's own write, recognised from its bytes
  (`decode.looks_like_echo`), is counted and acknowledged to the consumer, so the partition's
  committed offset moves past it; it goes no further. A replay reads the topics itself
  (streams/replay.py) and still sees the sync's own writes.
- Anything else goes to its topic's taker (a batcher's `put`), whose batcher acknowledges it to
  the consumer once its work is done.

Faust's livelock check reads when a partition's stream last took a message: the door records
that too. The agents still subscribe to the topics (that is what makes Faust fetch them and
build these handlers) and run the batchers; their streams receive nothing.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

import faust

from streams.core.decode import looks_like_echo

Handler = Callable[[Any], Awaitable[None]]


def take_at_the_door(
    app: faust.App,
    takers: Mapping[str, Handler],
    capture_topics: Collection[str],
    on_echo: Callable[[str], None],
) -> None:
    """From now on, the conductor's handler of each topic in `takers` gives its messages to that
    taker, except echoes on `capture_topics`, which are dropped after `on_echo(topic)`. Call
    before the consumer starts: handlers are built when partitions are assigned."""
    conductor: Any = app.topics
    build = conductor._build_handler

    def build_handler(tp: Any, channels: Any) -> Handler:
        take = takers.get(tp.topic)
        if take is None:
            handler: Handler = build(tp, channels)
            return handler
        consumer = app.consumer
        inbound = app.monitor.stream_inbound_time
        flow = app.flow_control
        topic = tp.topic
        echoes = topic in capture_topics

        async def on_message(message: Any) -> None:
            if not flow.is_active():
                await flow.acquire()
            if message.generation_id != app.consumer_generation_id:
                return
            inbound[tp] = time.monotonic()
            if echoes and looks_like_echo(message.value):
                on_echo(topic)
                consumer.ack(message)
                return
            await take(message)

        return on_message

    conductor._build_handler = build_handler
