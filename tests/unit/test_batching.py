"""Natural batching: order, acknowledgement after work, growth under load, back-pressure."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from streams.worker import batching
from streams.worker.batching import Batcher

DEADLINE_S = 5.0


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """A coroutine test run to completion on its own event loop."""

    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return sync


class Recorder:
    """The work and the acknowledgement of a Batcher, recorded; the work can be held."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.done: list[int] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.failures = 0

    async def work(self, batch: list[int]) -> None:
        self.started.set()
        await self.release.wait()
        if self.failures:
            self.failures -= 1
            raise RuntimeError("a bug")
        self.batches.append(batch)

    async def ack(self, batch: list[int]) -> None:
        assert batch == self.batches[-1], "acknowledged before its work was done"
        self.done += batch


async def until(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)

    await asyncio.wait_for(poll(), DEADLINE_S)


def batcher(
    r: Recorder, max_batch: int = 100, max_waiting: int = 1000, every: float = 0.0
) -> Batcher[int]:
    return Batcher("test", r.work, r.ack, max_batch, max_waiting, every)


@run
async def test_every_item_is_acknowledged_once_in_order_after_its_work() -> None:
    r = Recorder()
    async with batcher(r, max_batch=7).running() as b:
        for i in range(50):
            b.put_many([i])
        await until(lambda: len(r.done) == 50)
    assert r.done == list(range(50))
    assert all(len(batch) <= 7 for batch in r.batches)


@run
async def test_a_lone_item_goes_at_once_and_items_arriving_meanwhile_join_the_next_batch() -> None:
    r = Recorder()
    async with batcher(r).running() as b:
        r.release.clear()
        b.put_many([0])
        await until(r.started.is_set)  # the first batch is being worked on: it holds item 0 alone
        for i in range(1, 20):
            b.put_many([i])
        r.release.set()
        await until(lambda: len(r.done) == 20)
    assert r.batches == [[0], list(range(1, 20))]


@run
async def test_batches_start_at_most_every_min_interval() -> None:
    r = Recorder()
    starts: list[float] = []

    async def timed(batch: list[int]) -> None:
        starts.append(asyncio.get_running_loop().time())
        await r.work(batch)

    b = Batcher("test", timed, r.ack, 100, 1000, 0.05)
    async with b.running():
        for count in (1, 2, 3):
            b.put_many([count])
            await until(functools.partial(lambda n: len(r.done) == n, count))
    assert all(later - earlier >= 0.049 for earlier, later in itertools.pairwise(starts))


@run
async def test_past_its_limit_it_says_it_is_full_and_at_half_that_it_has_room() -> None:
    """`put` never waits (the consumer's loop feeds every agent): the batcher says when too many
    items wait, so its topics stop being fetched, and when there is room again."""
    r = Recorder()
    said: list[str] = []
    b = Batcher(
        "test", r.work, r.ack, 2, 4, on_full=lambda: said.append("full"),
        on_room=lambda: said.append("room"),
    )  # fmt: skip
    async with b.running():
        r.release.clear()
        b.put_many([0])
        await until(r.started.is_set)
        for i in range(1, 4):
            b.put_many([i])
        assert said == [] and not b.full  # three wait: under the limit
        b.put_many([4])
        b.put_many([5])  # past it, each item says so again (a rebalance may have resumed the fetch)
        assert said == ["full", "full"] and b.full
        r.release.set()
        await until(lambda: len(r.done) == 6)
    assert r.done == list(range(6))  # nothing was refused
    assert said == ["full", "full", "room"] and not b.full


@run
async def test_a_batch_whose_work_fails_is_tried_again_not_acknowledged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "RETRY_S", 0.0)
    r = Recorder()
    r.failures = 2
    async with batcher(r).running() as b:
        b.put_many([1])
        await until(lambda: r.done == [1])
    assert r.batches == [[1]]


@run
async def test_a_batcher_that_stops_on_an_error_says_so() -> None:
    r = Recorder()
    failures: list[BaseException] = []

    async def broken_ack(batch: list[int]) -> None:
        raise RuntimeError("the acknowledgement broke")

    b = Batcher("test", r.work, broken_ack, 100, 1000, on_failure=failures.append)
    async with b.running():
        b.put_many([1])
        await until(lambda: bool(failures))
    assert str(failures[0]) == "the acknowledgement broke"


@run
async def test_the_next_batch_is_prepared_while_the_one_before_is_worked_on_in_order() -> None:
    """Preparing (decoding) overlaps the work (the database), and the work still goes one batch
    at a time, in the order the items came."""
    r = Recorder()
    prepared: list[list[int]] = []
    working: list[str] = []

    async def prepare(batch: list[int]) -> list[int]:
        prepared.append(list(batch))
        return prepared[-1]

    async def work(batch: list[int]) -> None:
        working.append("start")
        await r.work(batch)
        working.append("end")

    b = Batcher("test", work, r.ack, 100, 1000, prepare=prepare)
    async with b.running():
        r.release.clear()
        b.put_many([1])
        await until(r.started.is_set)
        b.put_many([2])
        await until(lambda: prepared == [[1], [2]])  # the first batch's work is still held
        assert working == ["start"] and r.done == []
        r.release.set()
        await until(lambda: len(r.done) == 2)
    assert r.batches == [[1], [2]]
    assert all(w is p for w, p in zip(r.batches, prepared, strict=True))  # what was prepared
    assert working == ["start", "end", "start", "end"]


@run
async def test_a_batch_whose_preparation_fails_is_prepared_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "RETRY_S", 0.0)
    r = Recorder()
    failures = [RuntimeError("a bug")]

    async def prepare(batch: list[int]) -> list[int]:
        if failures:
            raise failures.pop()
        return batch

    async with Batcher("test", r.work, r.ack, 100, 1000, prepare=prepare).running() as b:
        b.put_many([7])
        await until(lambda: r.done == [7])
    assert r.batches == [[7]] and failures == []


@run
async def test_in_turns_gives_every_item_in_order_and_lets_others_run_after_each_few() -> None:
    seen: list[object] = []

    async def other() -> None:
        while True:
            seen.append("turn")
            await asyncio.sleep(0)

    task = asyncio.ensure_future(other())
    async for item in batching.in_turns(range(1, 8), every=3):
        seen.append(item)
    task.cancel()
    assert seen == [1, 2, 3, "turn", 4, 5, 6, "turn", 7]
