"""Overrides of Faust, mode and aiokafka internals, fenced here and nowhere else.

Each is explained where it is made, and `PINNED` names the versions they were written against:
tests/unit/test_overrides.py fails when an installed version differs, so an upgrade reads them
again before it lands.

1. `take_at_the_door`: the conductor's handler of each partition of the worker's topics. Faust
   decodes every fetched message into an event, through the topic's schema, and puts it on its
   agent's queue, where the agent's task takes it with a sensor call on the way in and out, on an
   event loop other agents keep busy. The worker's messages are raw bytes each agent only hands
   to its batcher (streams/worker/batching.py): here they go straight there. During a rebalance
   the handler waits for the flow to resume, as Faust's does, and a message fetched before the
   rebalance is left alone (whoever owns the partition now reads it again). On a capture topic an
   echo of the sync's own write (PostgreSQL 15 and older, where the server sends them), known
   from its bytes, is acknowledged and goes no further. Faust's livelock check reads when a
   partition's stream last took a message: the handler records that too.
2. `hand_over_eagerly`: the consumer hands each message over through mode's `wait_first`, a race
   of the hand-over against a rebalance that costs four asyncio tasks per message; the hand-over
   is run up to its first wait in place, and only when it waits does it go to the race (what
   Python 3.12's eager tasks do).
3. `shorten_fetch_wait`: Faust builds its Kafka consumer with a 1.5 s fetch wait and no setting
   for it; a fetch for quiet partitions holds back the records of busy ones that arrive meanwhile
   for that long. The running fetcher's wait is shortened.
4. `Producer`: Faust's `Topic.send` looks the producer up through `App.maybe_start_producer`,
   which mode's `stampede` wraps in up to three `asyncio.sleep(0)`; the producer is looked up
   once. Faust flushes this producer before it commits offsets, so what is sent (a dead letter)
   is durable before the message it came from is acknowledged.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator, Mapping
from importlib import metadata
from typing import Any

import faust
from mode.services import WaitResults

from streams.core.decode import looks_like_echo

log = logging.getLogger("ofisync.overrides")

PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
FETCH_WAIT_MS = 25

Handler = Callable[[Any], Awaitable[None]]


def installed_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in PINNED}


# --- 1. messages taken at the door ---------------------------------------------------------


def take_at_the_door(
    app: faust.App,
    takers: Mapping[str, Callable[[Any], None]],
    capture_topics: Collection[str],
    on_echo: Callable[[str], None],
) -> None:
    """From now on, the conductor's handler of each topic in `takers` gives its messages to that
    taker, except echoes on `capture_topics`, which are acknowledged after `on_echo(topic)`. Call
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
            take(message)

        return on_message

    conductor._build_handler = build_handler


# --- 2. the eager hand-over ----------------------------------------------------------------

WaitFirst = Callable[..., Awaitable[WaitResults]]


class Started:
    """A coroutine that has already run up to its first wait, as an awaitable that carries on
    from there (the `yield from` of a coroutine whose first step was taken by hand)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, waiting_on = self._coro, self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except BaseException as exc:  # cancellation included: it goes to the coroutine
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


def eager_wait_first(original: WaitFirst) -> WaitFirst:
    """`original` (a Service's `wait_first`), with a coroutine given first run in place."""

    async def wait_first(*coros: Any, timeout: Any = None) -> WaitResults:
        if timeout is not None or not coros or not inspect.iscoroutine(coros[0]):
            return await original(*coros, timeout=timeout)
        first, others = coros[0], coros[1:]
        try:
            waiting_on = first.send(None)
        except StopIteration as stop:
            _close(others)
            return WaitResults([first], [stop.value], False)
        except BaseException:
            _close(others)
            raise
        return await original(Started(first, waiting_on), *others)

    return wait_first


def _close(coros: tuple[Any, ...]) -> None:
    for coro in coros:
        if inspect.iscoroutine(coro):
            coro.close()  # never started: closing it only silences "never awaited"


def hand_over_eagerly(consumer: Any) -> bool:
    """Wraps `consumer.wait_first`; False (and a warning) when Faust no longer has one."""
    original = getattr(consumer, "wait_first", None)
    if original is None or not inspect.iscoroutinefunction(original):
        log.warning("Faust's consumer has no wait_first to wrap; messages go the slow way")
        return False
    consumer.wait_first = eager_wait_first(original)
    return True


# --- 3. the fetch wait ---------------------------------------------------------------------


async def shorten_fetch_wait(app: faust.App) -> None:
    for _ in range(120):  # the consumer starts beside the task that calls this
        consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = FETCH_WAIT_MS
            return
        await asyncio.sleep(0.5)
    log.warning("could not shorten the Kafka fetch wait (has Faust or aiokafka changed?)")


# --- 4. the producer -----------------------------------------------------------------------


class Producer:
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
