"""Overrides of Faust, mode and aiokafka internals, fenced here and nowhere else.

Each is explained where it is made, and `PINNED` names the versions they were written against:
tests/unit/test_overrides.py fails when an installed version differs, so an upgrade reads them
again before it lands.

1. `hand_over_whole_fetches`: the consumer's drain, the loop that takes what aiokafka fetched.
   Faust's makes each record a `Message`, tracks it, runs the sensors, and hands it to the
   conductor's handler in a race against a rebalance (mode's `wait_first`: an asyncio lock, two
   coroutines and a task per message), one record at a time, and each is acknowledged alone. The
   worker's agents only give their records to a batcher (streams/worker/batching.py), so here
   each partition's fetched records go to their batcher in one call, as aiokafka made them, and
   `acknowledge` marks a batch's offsets done in one step per partition. What Faust's drain
   keeps is kept: nothing is handed over while a rebalance stops the flow or once the
   generation has changed (the new owner reads it again), records below the partition's read
   offset are not handed over twice, offsets the log skips are recorded as gaps (so commits pass
   them), the commit every so many acknowledgements, the time a partition last took records
   (Faust's livelock check), its end offset for the monitor, and Faust's flow control for full
   buffers (`hold_fetching`, streams/worker/app.py). Nothing is acknowledged here, not even an
   echo: Faust's commit counts the acknowledged offsets from the first acknowledged one when the
   partition's committed offset is unknown or zero, or one past it, so an offset acknowledged
   ahead of one still in flight would commit past that one. A topic without a batcher keeps
   Faust's path.
2. `shorten_fetch_wait`: Faust builds its Kafka consumer with a 1.5 s fetch wait and no setting
   for it; a fetch for quiet partitions holds back the records of busy ones that arrive meanwhile
   for that long. The running fetcher's wait is shortened.
3. `Producer`: Faust's `Topic.send` looks the producer up through `App.maybe_start_producer`,
   which mode's `stampede` wraps in up to three `asyncio.sleep(0)`; the producer is looked up
   once. Faust flushes this producer before it commits offsets, so what is sent (a dead letter)
   is durable before the message it came from is acknowledged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from importlib import metadata
from typing import Any

import faust
from faust.transport.consumer import CONSUMER_FETCHING
from faust.types import TP
from faust.types.tuples import ack_lock
from mode.utils.futures import notify

log = logging.getLogger("ofisync.overrides")

PINNED = {"faust-streaming": "0.15.3", "mode-streaming": "0.7.1", "aiokafka": "0.14.0"}
FETCH_WAIT_MS = 25
FETCH_TIMEOUT_S = 1.0  # Faust's drain waits this long for a fetch

Take = Callable[[Sequence[Any]], None]


def installed_versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in PINNED}


# --- 1. whole fetches handed over ----------------------------------------------------------


def hand_over_whole_fetches(app: faust.App, takers: Mapping[str, Take]) -> None:
    """From now on the app's consumer gives each partition's fetched records of a topic in
    `takers` to that taker in one call (aiokafka's `ConsumerRecord`s, in offset order). Call
    before the worker starts: Faust's fetcher calls the drain when it starts, and again after
    each rebalance."""
    consumer: Any = app.consumer

    async def drain(fetcher: Any) -> None:
        set_flag, unset_flag = consumer.diag.set_flag, consumer.diag.unset_flag
        try:
            while not (consumer._stopped.is_set() or fetcher._stopped.is_set()):
                set_flag(CONSUMER_FETCHING)
                records, active = await consumer._wait_next_records(FETCH_TIMEOUT_S)
                await asyncio.sleep(0)  # a fetch that is ready at once must not starve the loop
                if records and not consumer.should_stop:
                    await _hand_over(app, consumer, records, active, takers)
                unset_flag(CONSUMER_FETCHING)
        except consumer.consumer_stopped_errors:
            if not app.should_stop:
                raise
        except Exception:
            log.exception("the consumer's drain stopped on an error")  # as Faust's says it
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)

    consumer._drain_messages = drain


async def _hand_over(
    app: faust.App,
    consumer: Any,
    records: Mapping[TP, Sequence[Any]],
    active: Collection[TP] | None,
    takers: Mapping[str, Take],
) -> None:
    generation = app.consumer_generation_id
    read_offset, buffered = consumer._read_offset, consumer._buffered_partitions
    inbound, monitor = app.monitor.stream_inbound_time, app.monitor
    for tp, fetched in records.items():
        if not (consumer.flow_active and app.flow_control.is_active()):
            return  # a rebalance: what is left is read again from the committed offsets
        if app.consumer_generation_id != generation:
            return
        if active is not None and tp not in active and tp not in buffered:
            continue
        monitor.track_tp_end_offset(tp, consumer.highwater(tp))
        last_read = read_offset[tp]
        if last_read is not None and fetched and fetched[0].offset < last_read:
            fetched = [record for record in fetched if record.offset >= last_read]
        if not fetched:
            continue
        await _note_gaps(consumer, tp, last_read, fetched)
        take = takers.get(tp.topic)
        if take is None:
            await _faust_s_way(consumer, tp, fetched)
        else:
            inbound[tp] = time.monotonic()
            take(fetched)
        read_offset[tp] = fetched[-1].offset
        every = consumer._commit_every
        if every is not None and consumer._n_acked >= every:
            consumer._n_acked = 0
            await consumer.commit()


async def _note_gaps(consumer: Any, tp: TP, last_read: int | None, fetched: Sequence[Any]) -> None:
    """Offsets the log skips (compaction, transaction markers) will never be acknowledged: they
    are recorded as gaps, which Faust's commit counts as done."""
    first, last = fetched[0].offset, fetched[-1].offset
    if last - first + 1 == len(fetched) and (last_read is None or first - last_read <= 1):
        return
    previous = last_read
    for record in fetched:
        if previous is not None and record.offset - previous > 1:
            await consumer._add_gap(tp, previous + 1, record.offset - 1)
        previous = record.offset


async def _faust_s_way(consumer: Any, tp: TP, fetched: Sequence[Any]) -> None:
    for record in fetched:
        message = consumer._to_message(tp, record)
        await consumer.wait_first(consumer.callback(message), consumer.suspend_flow.wait())


def acknowledge(consumer: Any, records: Sequence[Any]) -> None:
    """`records` (handed over by `hand_over_whole_fetches`) are done: their offsets may be
    committed. As Faust's `Consumer.ack` does for one message, for a batch."""
    by_partition: dict[tuple[str, int], list[int]] = {}
    for record in records:
        key = (record.topic, record.partition)
        offsets = by_partition.get(key)
        if offsets is None:
            offsets = by_partition[key] = []
        offsets.append(record.offset)
    for (topic, partition), offsets in by_partition.items():
        _acknowledge_offsets(consumer, TP(topic, partition), offsets)


def _acknowledge_offsets(consumer: Any, tp: TP, offsets: Sequence[int]) -> None:
    if not consumer.app.topics.acks_enabled_for(tp.topic):
        return
    with ack_lock:
        committed = consumer._committed_offset[tp]
        done = consumer._acked_index[tp]
        fresh = [
            offset
            for offset in offsets
            if (committed is None or offset >= committed) and offset not in done
        ]
        if fresh:
            done.update(fresh)
            consumer._acked[tp].extend(fresh)
            consumer._n_acked += len(fresh)
        notify(consumer._waiting_for_ack)


# --- 2. the fetch wait ---------------------------------------------------------------------


async def shorten_fetch_wait(app: faust.App) -> None:
    for _ in range(120):  # the consumer starts beside the task that calls this
        consumer = getattr(getattr(app.consumer, "_thread", None), "_consumer", None)
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and hasattr(fetcher, "_fetch_max_wait_ms"):
            fetcher._fetch_max_wait_ms = FETCH_WAIT_MS
            return
        await asyncio.sleep(0.5)
    log.warning("could not shorten the Kafka fetch wait (has Faust or aiokafka changed?)")


# --- 3. the producer -----------------------------------------------------------------------


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
