"""The overrides of Faust, mode and aiokafka internals (streams/worker/overrides.py), each run
against the real library: pinned to the versions they were written for, and the drain that hands
whole fetches over run on a real Faust app's real consumer (never connected: each test scripts
what aiokafka fetched, as aiokafka's own `ConsumerRecord`s), with Faust's own commit arithmetic
reading what it acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP
from faust.types.tuples import Message

from streams.worker.overrides import (
    PINNED,
    acknowledge,
    hand_over_whole_fetches,
    installed_versions,
)
from tests.unit.test_batching import run


def test_the_overrides_were_written_for_the_installed_versions() -> None:
    """A version bump of Faust, mode or aiokafka must read streams/worker/overrides.py again
    (and then move PINNED): each override reaches into internals that may have changed."""
    assert installed_versions() == PINNED


CAPTURED = "t.erp.public.clientes"
COMMANDS = "t.to-crm"
OTHER = "t.configuration"
ECHO = b'{"before":null,"after":{"id":1,"ofisync_origin":"ofisync"},"source":{"lsn":1}}'
CHANGE = b'{"before":null,"after":{"id":1,"ofisync_origin":null},"source":{"lsn":2}}'

Fetch = Mapping[TP, Sequence[Any]]


def record(tp: TP, offset: int, value: bytes = CHANGE) -> Any:
    return ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"{}", value, None, 1, 1, [])


def records(tp: TP, offsets: Sequence[int], value: bytes = CHANGE) -> list[Any]:
    return [record(tp, offset, value) for offset in offsets]


def subscribed(app: faust.App) -> Any:
    """`app`'s consumer, with the capture and command topics subscribed as an agent's topics
    are: acknowledged."""
    app.topics._acking_topics.update({CAPTURED, COMMANDS})  # type: ignore[attr-defined]
    return app.consumer


class Drained:
    """Made in the test's event loop, as mode's events belong to the loop they are made in.
    A real Faust app whose consumer drains fetches (one after the other, each as aiokafka
    fetched it) to takers as the worker's: each hand-over of a capture or command topic's
    records is noted."""

    def __init__(self, active: set[TP] | None = None) -> None:
        self.app = faust.App("ofisync-test-drain", broker="kafka://127.0.0.1:1")
        self.consumer: Any = subscribed(self.app)
        self.handed: list[tuple[str, list[int]]] = []  # (topic, offsets) per hand-over
        self.on_hand_over: Callable[[], None] = lambda: None
        self.active = active
        takers = {topic: self._taker(topic) for topic in (CAPTURED, COMMANDS)}
        hand_over_whole_fetches(self.app, takers)
        self.consumer.highwater = lambda tp: 100  # no broker to ask

    def _taker(self, topic: str) -> Callable[[Sequence[Any]], None]:
        def take(taken: Sequence[Any]) -> None:
            assert all(r.topic == topic for r in taken)
            self.handed.append((topic, [r.offset for r in taken]))
            self.on_hand_over()

        return take

    async def drain(self, *fetches: Fetch) -> None:
        self.app.flow_control.resume()  # as a started consumer has it
        fetcher = _Fetcher()
        waiting = list(fetches)

        async def fetched(timeout: float) -> tuple[Fetch | None, set[TP] | None]:
            if not waiting:
                fetcher._stopped.set()
                return None, None
            fetch = waiting.pop(0)
            active = self.active if self.active is not None else set(fetch)
            return fetch, active

        self.consumer._wait_next_records = fetched
        await asyncio.wait_for(self.consumer._drain_messages(fetcher), 5.0)

    def committable(self, tp: TP) -> int | None:
        """The offset Faust's own arithmetic would commit for `tp` now."""
        result: int | None = self.consumer._new_offset(tp)
        return result


class _Fetcher:
    def __init__(self) -> None:
        self._stopped = asyncio.Event()


C0, C1, K0 = TP(CAPTURED, 0), TP(CAPTURED, 1), TP(COMMANDS, 0)


@run
async def test_each_partition_s_fetch_goes_to_its_taker_in_one_call() -> None:
    drained = Drained()
    await drained.drain(
        {C0: records(C0, [0, 1, 2]), C1: records(C1, [7, 8]), K0: records(K0, [3])},
        {C0: records(C0, [3])},
    )
    assert drained.handed == [
        (CAPTURED, [0, 1, 2]),
        (CAPTURED, [7, 8]),
        (COMMANDS, [3]),
        (CAPTURED, [3]),
    ]
    assert {tp: drained.consumer._read_offset[tp] for tp in (C0, C1, K0)} == {C0: 3, C1: 8, K0: 3}
    inbound = drained.app.monitor.stream_inbound_time  # Faust's livelock check reads it
    assert {C0, C1, K0} <= set(inbound)
    assert drained.consumer._n_acked == 0  # the batcher acknowledges them once applied


@run
async def test_nothing_is_acknowledged_at_hand_over_not_even_an_echo() -> None:
    drained = Drained()
    await drained.drain({C0: [record(C0, 0), record(C0, 1, ECHO)]})
    assert drained.handed == [(CAPTURED, [0, 1])]
    assert drained.consumer._n_acked == 0 and drained.consumer._acked[C0] == []


def test_faust_commits_past_an_offset_in_flight_once_a_later_one_is_acknowledged() -> None:
    """Why nothing is acknowledged ahead of the batch (Faust 0.15.3): with the partition's
    committed offset unknown, zero, or the one in flight, acknowledging the next offset alone
    makes Faust commit past the one still in flight, which a crash would then lose. If this
    starts answering None, acknowledging echoes at once may be safe again."""
    for committed in (None, 0, 10):
        consumer = subscribed(faust.App("ofisync-test-ahead", broker="kafka://127.0.0.1:1"))
        consumer._committed_offset[C0] = committed
        in_flight = 10 if committed == 10 else 0
        acknowledge(consumer, records(C0, [in_flight + 1]))
        assert consumer._new_offset(C0) == in_flight + 2


@run
async def test_records_below_the_read_offset_are_not_handed_over_again() -> None:
    drained = Drained()
    await drained.drain({C0: records(C0, [0, 1, 2])}, {C0: records(C0, [1, 2, 3, 4])})
    assert drained.handed == [(CAPTURED, [0, 1, 2]), (CAPTURED, [2, 3, 4])]  # >=, as Faust does


@run
async def test_offsets_the_log_skips_are_gaps_the_commit_passes() -> None:
    drained = Drained()
    first, second = records(C0, [0, 1, 4, 5]), records(C0, [8])
    await drained.drain({C0: first}, {C0: second})
    assert drained.handed == [(CAPTURED, [0, 1, 4, 5]), (CAPTURED, [8])]
    acknowledge(drained.consumer, first[:2])
    assert drained.committable(C0) == 2  # 4 follows the gap but is not done yet
    acknowledge(drained.consumer, first[2:])
    assert drained.committable(C0) == 6
    acknowledge(drained.consumer, second)
    assert drained.committable(C0) == 9


@run
async def test_a_single_skipped_offset_is_a_gap() -> None:
    drained = Drained()
    fetched = records(C0, [0, 2, 3])
    await drained.drain({C0: fetched})
    acknowledge(drained.consumer, fetched)
    assert drained.committable(C0) == 4


@run
async def test_a_gap_before_the_first_record_of_a_fetch_is_noted() -> None:
    drained = Drained()
    first, second = records(C0, [0, 1]), records(C0, [3, 4])  # 2 skipped between fetches
    await drained.drain({C0: first}, {C0: second})
    acknowledge(drained.consumer, [*first, *second])
    assert drained.committable(C0) == 5


@run
async def test_nothing_more_is_handed_over_once_a_rebalance_stops_the_flow() -> None:
    drained = Drained()

    def rebalance() -> None:
        drained.consumer.flow_active = False

    drained.on_hand_over = rebalance
    await drained.drain({C0: records(C0, [0, 1]), C1: records(C1, [0, 1])})
    assert drained.handed == [(CAPTURED, [0, 1])]
    assert drained.consumer._read_offset[C1] is None  # read again by whoever owns it next


@run
async def test_nothing_more_is_handed_over_while_the_app_s_flow_is_suspended() -> None:
    drained = Drained()
    drained.on_hand_over = drained.app.flow_control.suspend
    await drained.drain({C0: records(C0, [0]), C1: records(C1, [0])})
    assert drained.handed == [(CAPTURED, [0])]


@run
async def test_nothing_more_is_handed_over_from_a_fetch_of_an_older_generation() -> None:
    drained = Drained()

    def new_generation() -> None:
        drained.app.consumer_generation_id += 1

    drained.on_hand_over = new_generation
    await drained.drain({C0: records(C0, [0]), C1: records(C1, [0])})
    assert drained.handed == [(CAPTURED, [0])]


@run
async def test_partitions_neither_active_nor_held_are_skipped() -> None:
    drained = Drained(active={C0})
    drained.consumer._buffered_partitions.add(K0)  # held because its batcher is full
    await drained.drain({C0: records(C0, [0]), C1: records(C1, [0]), K0: records(K0, [0])})
    assert drained.handed == [(CAPTURED, [0]), (COMMANDS, [0])]


@run
async def test_other_topics_keep_faust_s_own_path() -> None:
    drained = Drained()
    seen: list[Any] = []

    async def callback(message: Any) -> None:
        seen.append(message)

    drained.consumer.callback = callback
    other = TP(OTHER, 0)
    await drained.drain({other: records(other, [0, 1])})
    assert drained.handed == []
    assert all(isinstance(m, Message) for m in seen)  # Faust's, one at a time
    assert [m.offset for m in seen] == [0, 1]


@run
async def test_a_commit_is_made_every_so_many_acknowledgements() -> None:
    drained = Drained()
    commits: list[int] = []

    async def commit() -> None:
        commits.append(drained.consumer._n_acked)

    drained.consumer.commit = commit
    drained.consumer._commit_every = 4  # as many as the first fetch acknowledges
    first = records(C0, [0, 1, 2, 3])

    def applied() -> None:  # the batcher acknowledges the first fetch before the second comes
        if len(drained.handed) == 1:
            acknowledge(drained.consumer, first)

    drained.on_hand_over = applied
    await drained.drain({C0: first}, {C0: records(C0, [4])})
    assert commits == [0]  # once, with the count reset


def test_acknowledging_marks_each_offset_once_per_partition() -> None:
    consumer = subscribed(faust.App("ofisync-test-ack", broker="kafka://127.0.0.1:1"))
    batch = [*records(C0, [0, 1]), *records(C1, [4]), *records(C0, [2])]
    acknowledge(consumer, batch)
    acknowledge(consumer, batch[:1])  # again: not counted twice
    assert consumer._acked[C0] == [0, 1, 2] and consumer._acked[C1] == [4]
    assert consumer._n_acked == 4
    assert consumer._new_offset(C0) == 3


def test_offsets_below_the_committed_one_are_not_acknowledged() -> None:
    consumer = subscribed(faust.App("ofisync-test-ack-committed", broker="kafka://127.0.0.1:1"))
    consumer._committed_offset[C0] = 5
    acknowledge(consumer, records(C0, [3, 4, 5, 6]))
    assert consumer._acked[C0] == [5, 6] and consumer._n_acked == 2
