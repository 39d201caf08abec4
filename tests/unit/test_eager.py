"""Eager hand-over: a coroutine that does not wait skips the race; one that waits gets mode's
own `wait_first`, and behaves there as if it had been handed over whole."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from mode import Service

from streams.worker.eager import Started, eager_wait_first, hand_over_eagerly
from tests.unit.test_batching import run

DEADLINE_S = 5.0


class Raced:
    """mode's real `wait_first` on a real Service, counting how often the race was run."""

    def __init__(self) -> None:
        self.service = Service()
        self.races = 0

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        self.races += 1
        return await self.service.wait_first(*coros, timeout=timeout)


async def hand_over(steps: list[str], gate: asyncio.Future[None] | None = None) -> str:
    steps.append("start")
    if gate is not None:
        await gate
    steps.append("end")
    return "delivered"


async def never(steps: list[str]) -> None:
    steps.append("never should run")


@run
async def test_a_hand_over_that_does_not_wait_runs_in_place_without_the_race() -> None:
    raced, steps = Raced(), list[str]()
    other = never(steps)
    result = await eager_wait_first(raced.wait_first)(hand_over(steps), other)
    assert result.done and result.results == ["delivered"] and not result.stopped
    assert steps == ["start", "end"] and raced.races == 0
    assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED


@run
async def test_a_hand_over_that_waits_finishes_in_the_race_each_step_once() -> None:
    raced, steps = Raced(), list[str]()
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    racing = asyncio.ensure_future(
        eager_wait_first(raced.wait_first)(hand_over(steps, gate), asyncio.Event().wait())
    )
    await asyncio.sleep(0)
    assert steps == ["start"] and raced.races == 1
    gate.set_result(None)
    result = await asyncio.wait_for(racing, DEADLINE_S)
    assert result.results == ["delivered"] and steps == ["start", "end"]


@run
async def test_a_waiting_hand_over_loses_the_race_to_a_rebalance_and_is_cancelled() -> None:
    raced, steps = Raced(), list[str]()
    suspended = asyncio.Event()
    cancelled = asyncio.Event()

    async def held() -> None:
        steps.append("start")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    racing = asyncio.ensure_future(eager_wait_first(raced.wait_first)(held(), suspended.wait()))
    await asyncio.sleep(0)
    suspended.set()
    result = await asyncio.wait_for(racing, DEADLINE_S)
    assert result.results == [True] and steps == ["start"]  # the suspension won
    await asyncio.wait_for(cancelled.wait(), DEADLINE_S)


@run
async def test_errors_before_and_after_the_first_wait_reach_the_caller() -> None:
    raced = Raced()

    async def broken_at_once() -> None:
        raise ValueError("at once")

    async def broken_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    wait_first = eager_wait_first(raced.wait_first)
    other = never([])
    with pytest.raises(ValueError, match="at once"):
        await wait_first(broken_at_once(), other)
    assert inspect.getcoroutinestate(other) == inspect.CORO_CLOSED
    with pytest.raises(ValueError, match="later"):
        await wait_first(broken_later())


@run
async def test_events_and_timeouts_go_straight_to_the_original() -> None:
    raced = Raced()
    ready = asyncio.Event()
    ready.set()
    wait_first = eager_wait_first(raced.wait_first)
    await wait_first(ready)
    await wait_first(hand_over([]), timeout=DEADLINE_S)
    assert raced.races == 2


@run
async def test_started_carries_a_coroutine_on_from_its_first_wait() -> None:
    steps: list[str] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    coro = hand_over(steps, gate)
    waiting_on = coro.send(None)
    gate.set_result(None)
    assert await Started(coro, waiting_on) == "delivered"
    assert steps == ["start", "end"]


def test_a_consumer_without_wait_first_is_left_alone() -> None:
    class Consumer:
        pass

    assert not hand_over_eagerly(Consumer())
