"""How the worker stops fetching a direction whose batcher is full, held to Faust's own consumer
and the worker's drain: the records of a fetch are all handed over, none skipped (a skipped one
would be committed past by the acknowledgements of later ones, and lost)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import faust
from aiokafka.structs import ConsumerRecord
from faust.types import TP

from streams.worker.app import FetchHold, hold_fetching, resume_fetching
from streams.worker.overrides import hand_over_whole_fetches

TOPIC = "t.erp.public.clientes"


def _records(tp: TP, count: int) -> list[Any]:
    return [
        ConsumerRecord(tp.topic, tp.partition, offset, 0, 0, b"k", b"v", None, 1, 1, [])
        for offset in range(count)
    ]


def _handed_over(hold: Callable[[Any, set[TP]], None]) -> list[tuple[int, int]]:
    """The (partition, offset)s the worker's drain (streams/worker/overrides.py) hands over from
    one fetch of five records on each of two partitions, when `hold` is called for both on the
    first hand-over (the batcher became full)."""

    async def scenario() -> list[tuple[int, int]]:
        app = faust.App("ofisync-test-flow", broker="kafka://127.0.0.1:1")
        app.flow_control.resume()  # as a started consumer has it
        consumer: Any = app.consumer
        tps = {TP(TOPIC, 0), TP(TOPIC, 1)}
        consumer._active_partitions = set(tps)
        consumer.highwater = lambda tp: 5  # no broker to ask
        handed: list[tuple[int, int]] = []

        def take(records: Sequence[Any]) -> None:
            if not handed:
                hold(consumer, tps)
            handed.extend((r.partition, r.offset) for r in records)

        hand_over_whole_fetches(app, {TOPIC: take})
        fetcher = SimpleNamespace(_stopped=asyncio.Event())
        fetches = [{tp: _records(tp, 5) for tp in sorted(tps)}]

        async def fetched(timeout: float) -> tuple[dict[TP, list[Any]] | None, set[TP]]:
            active = consumer._get_active_partitions()  # the live set, as Faust's fetch gives it
            if not fetches:
                fetcher._stopped.set()
                return None, active
            return fetches.pop(), active

        consumer._wait_next_records = fetched
        await asyncio.wait_for(consumer._drain_messages(fetcher), 5.0)
        assert not tps & consumer._get_active_partitions()  # the next fetch leaves them out
        return handed

    return asyncio.run(scenario())


def test_holding_a_full_direction_still_hands_over_what_was_fetched() -> None:
    assert _handed_over(hold_fetching) == [(p, o) for p in (0, 1) for o in range(5)]


def test_pausing_the_partitions_instead_would_skip_the_rest_of_the_fetch() -> None:
    """Why the worker does not use `pause_partitions` (Faust 0.15.3): it takes the partitions
    out of the very set a fetch is handed over by. If this starts handing the whole fetch over,
    the hold may go back to it."""
    assert _handed_over(lambda c, tps: c.pause_partitions(tps)) == [(0, o) for o in range(5)]


def test_resuming_fetches_the_held_partitions_again() -> None:
    app = faust.App("ofisync-test-flow-resume", broker="kafka://127.0.0.1:1")
    consumer: Any = app.consumer
    tp = TP(TOPIC, 1)
    consumer._active_partitions = {tp}
    hold_fetching(consumer, {tp})
    assert tp not in consumer._get_active_partitions()
    resume_fetching(consumer, {tp})
    assert tp in consumer._get_active_partitions()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_direction_is_held_at_once_and_again_only_after_a_while() -> None:
    said: list[str] = []
    clock = _Clock()
    hold = FetchHold(lambda: said.append("hold"), lambda: said.append("resume"), 0.2, clock)
    hold.full()
    assert said == ["hold"]
    clock.now += 0.19
    hold.full()
    assert said == ["hold"]  # each message past the limit says full: no hold for each
    clock.now += 0.01
    hold.full()
    assert said == ["hold", "hold"]  # made again: a rebalance in between would have undone it
    hold.room()
    hold.full()
    assert said == ["hold", "hold", "resume", "hold"]  # full again after room: held at once
